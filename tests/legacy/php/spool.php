<?php
// Writes one message into a PHP dropr client spool as the original storage
// does (classes/Client/Storage/Filesystem.php saveMessage()): a name of
// priority, microtime stamp, base64 of the peer key and of the channel,
// written into in/ and renamed into proc/; then the wake-up of
// classes/Client.php putMessage(): a message of type 1 on the SysV queue
// keyed by ftok() of /tmp/droprIpc/sha1(realpath(dsn)), sent while it holds
// fewer than 5. Prints the message id (the file name).
//
// usage: php spool.php DSN PEERURL CHANNEL PRIORITY BODY
list(, $dsn, $url, $channel, $priority, $body) = $argv;
foreach (array('', '/in', '/proc', '/sent') as $sub) {
    if (!is_dir($dsn . $sub)) {
        mkdir($dsn . $sub, 0775);
    }
}
$path = realpath($dsn);
$peerKey = 'HttpUpload;' . $url;
do {
    $t = (string)microtime();
    $sp = strpos($t, ' ');
    $stamp = substr($t, $sp + 1) . '-' . substr($t, 2, $sp - 2);
    $fName = join('_', array($priority, $stamp, base64_encode($peerKey), base64_encode($channel)));
    $fh = @fopen("$path/in/$fName", 'x');
} while ($fh === false);
fwrite($fh, $body);
fclose($fh);
if (!rename("$path/in/$fName", "$path/proc/$fName")) {
    exit(1);
}
$ipcPath = '/tmp/droprIpc/';
$channelName = $ipcPath . hash('sha1', $path);
if (!is_dir($ipcPath)) {
    mkdir($ipcPath, 0777, true);
}
if (!is_file($channelName)) {
    touch($channelName);
}
if (function_exists('msg_get_queue')) {
    $q = msg_get_queue(ftok($channelName, '*'));
    $stat = msg_stat_queue($q);
    if (is_array($stat) && $stat['msg_qnum'] < 5) {
        msg_send($q, 1, '*', false, false, $err);
    }
}
echo $fName, "\n";
