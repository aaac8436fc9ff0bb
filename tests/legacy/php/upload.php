<?php
// Uploads PHP dropr spool files as the original client does
// (classes/Client/Peer/HttpUpload.php, client/bin/client_queue.php): the same
// fields in the same order, the same serialize(), the same curl options;
// CURLFile where the original wrote '@path', which PHP 5.5 and later need.
// The messages' metadata comes from their file names, as getQueuedMessages()
// reads it (priority stays a string, as explode() leaves it).
//
// usage: php upload.php URL CLIENT SPOOLFILE...
// prints {"status": HTTP status, "result": the answer unserialize()d, or null}
$url = $argv[1];
$uploadFields = array('client' => $argv[2]);
$metaData = array();
foreach (array_slice($argv, 3) as $k => $path) {
    $fName = basename($path);
    list($priority, $timeStamp, $encodedPeerKey, $encodedChannel) = explode('_', $fName, 4);
    $metaData[$k] = array(
        'message'     => 'f_' . $k,
        'messageId'   => $fName,
        'channel'     => base64_decode($encodedChannel),
        'priority'    => $priority,
        'messageType' => 1,
    );
    $uploadFields['f_' . $k] = new CURLFile($path);
}
$uploadFields['metaData'] = serialize($metaData);

$conn = curl_init();
curl_setopt($conn, CURLOPT_TIMEOUT, 60);
curl_setopt($conn, CURLOPT_URL, $url);
curl_setopt($conn, CURLOPT_POST, true);
curl_setopt($conn, CURLOPT_POSTFIELDS, $uploadFields);
curl_setopt($conn, CURLOPT_HTTPHEADER, array('Expect:'));
curl_setopt($conn, CURLOPT_RETURNTRANSFER, 1);
$res = curl_exec($conn);
if ($res === false) {
    fwrite(STDERR, curl_error($conn) . "\n");
    exit(2);
}
$status = curl_getinfo($conn, CURLINFO_RESPONSE_CODE);
$result = @unserialize($res, array('allowed_classes' => false));
echo json_encode(array('status' => $status, 'result' => $result === false ? null : $result)), "\n";
