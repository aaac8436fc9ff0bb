"""Taking over a PHP dropr client spool: its queued messages move into our
spool's ``queue/``, and our senders deliver them.

The PHP client (``dropr_Client_Storage_Filesystem``) writes a message into
``<spool>/in/`` and renames it into ``<spool>/proc/`` under the name
``PRIORITY_SECONDS-MICROS_base64(PEERKEY)_base64(CHANNEL)``, where the peer
key is ``HttpUpload;URL``; then it posts a wake-up (type 1) on a SysV queue
whose key is ``ftok("/tmp/droprIpc/" + sha1(realpath(spool)), "*")``
(:func:`php_queue_key`). :class:`Takeover` reads that layout, maps each PHP
peer URL to one of our peers (``[legacy] peers``), and moves each message:

1. its body is copied into our ``tmp/`` under our file name (synced with
   ``[client] fsync``);
2. renamed into our ``queue/`` (and ``queue/`` synced);
3. the PHP file is removed from ``proc/``.

A crash after 2 and before 3 copies the message again at the next pass,
under the same name (the id is :func:`dropr.receiver.legacy.dropr_id` of our
client name, this host's name and the PHP id, so the same file always gets
the same id): it replaces the first copy if that still waits, and the
receiver answers duplicate if the first was delivered. A message whose peer
URL is not in ``[legacy] peers``, or whose channel dropr cannot take, is left
where it is, and logged. Runs in the ``dropr: legacy-spool`` worker.
"""

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import signal
import socket

import sysv_ipc

from dropr import names
from dropr.errors import ValidationError
from dropr.faults import crash_point
from dropr.fs import fsync_dir
from dropr.fs import write_all
from dropr.receiver.legacy import dropr_id
from dropr.spool import Spool, SpoolName

log = logging.getLogger("dropr.legacy")

#: Where the PHP client keeps the files its queue keys are made from.
PHP_IPC_FOLDER = "/tmp/droprIpc"
#: The project id the PHP client gives ftok().
PHP_PROJECT = ord("*")
_CHUNK = 1 << 20


def ftok(path, project):
    """glibc's ftok(3): the SysV key of ``path`` (which must exist) and ``project``."""
    st = os.stat(path)
    return ((project & 0xFF) << 24 | (st.st_dev & 0xFF) << 16 | (st.st_ino & 0xFFFF)) or 1


def php_queue_key(spool, *, make=True):
    """The key of the PHP client's wake-up queue for ``spool``; the file it is
    made from is created (as the PHP client does) if ``make``."""
    folder = PHP_IPC_FOLDER
    path = os.path.join(folder, hashlib.sha1(os.path.realpath(spool).encode()).hexdigest())
    if make and not os.path.exists(path):
        os.makedirs(folder, mode=0o777, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return ftok(path, PHP_PROJECT)


def parse_php_name(filename):
    """(priority, peer URL, channel) of a PHP spool file name; ValidationError
    if it is not one."""
    parts = filename.split("_", 3)
    if len(parts) != 4 or len(parts[0]) != 1 or not parts[0].isdigit():
        raise ValidationError(f"not a PHP dropr spool file name: {filename!r}")
    try:
        peer_key = base64.b64decode(parts[2], validate=True).decode("utf-8")
        channel = base64.b64decode(parts[3], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValidationError(f"not a PHP dropr spool file name: {filename!r}") from None
    method, _, url = peer_key.partition(";")
    if not url:
        raise ValidationError(f"no peer URL in PHP spool file name {filename!r}")
    return int(parts[0]), url, channel


class Takeover:
    """Moves the messages of the PHP spool at ``[legacy] spool`` into ours."""

    def __init__(self, config, *, hostname=None):
        self.config = config
        self.php_proc = os.path.join(str(config.legacy.spool), "proc")
        self.spool = Spool(config.client.spool, fsync=config.client.fsync)
        self.hostname = hostname or socket.gethostname()
        self._warned = set()  # file names already logged as left behind
        self.left = {}  # why messages stay in the PHP spool: reason -> count (last pass)

    def open(self):
        """Make our spool's folders; returns self."""
        self.spool.create()
        return self

    def pass_once(self):
        """Move every message now in the PHP spool's ``proc/``; returns how many."""
        try:
            filenames = sorted(os.listdir(self.php_proc))
        except FileNotFoundError:
            return 0
        moved, self.left = 0, {}
        for filename in filenames:
            if filename.startswith("."):
                continue
            moved += self._take(filename)
        return moved

    def _take(self, filename):
        name = self._our_name(filename)
        if name is None:
            return 0
        source = os.path.join(self.php_proc, filename)
        try:
            self._copy_into_queue(source, name)
        except FileNotFoundError:
            return 0  # gone meanwhile (an old PHP daemon still running?)
        crash_point("legacy.after_queue")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(source)
        crash_point("legacy.after_remove")
        return 1

    def _our_name(self, filename):
        """Our SpoolName for the PHP message ``filename``; None (logged once) if
        it has to stay where it is."""
        try:
            priority, url, channel = parse_php_name(filename)
            peer = self.config.legacy.peer_for(url)
            if peer is None:
                return self._leave(filename, f"its peer URL {url} is not in [legacy] peers")
            names.check_name(channel, "channel")
        except ValidationError as e:
            return self._leave(filename, str(e))
        message_id = dropr_id(self.config.client.name, self.hostname, filename)
        return SpoolName(priority, message_id, peer, channel)

    def _leave(self, filename, reason):
        key = reason.split(":")[0] if "peer URL" not in reason else reason
        self.left[key] = self.left.get(key, 0) + 1
        if filename not in self._warned:
            self._warned.add(filename)
            log.warning("PHP spool %s: %s stays there: %s", self.php_proc, filename, reason)
        return None

    def _copy_into_queue(self, source, name):
        """Steps 1 and 2: the body into our tmp/, then into our queue/."""
        tmp = self.spool.dirs["tmp"] / f".legacy-{os.getpid()}-{name}"
        queued = self.spool.dirs["queue"] / str(name)
        with open(source, "rb", opener=_no_follow) as src:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                while chunk := src.read(_CHUNK):
                    write_all(fd, chunk)
                if self.spool.fsync:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            os.close(fd)
        crash_point("legacy.after_copy")
        os.rename(tmp, queued)
        if self.spool.fsync:
            fsync_dir(self.spool.dirs["queue"])


def _no_follow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


class PhpWakeups:
    """The PHP client's wake-up queue of one spool, read by the takeover
    worker (made if the PHP client has not made it yet, mode 0666 as PHP's
    ``msg_get_queue`` makes it)."""

    def __init__(self, spool):
        self.queue = sysv_ipc.MessageQueue(php_queue_key(spool), sysv_ipc.IPC_CREAT, mode=0o666)

    def drain(self):
        """Take every wake-up waiting now; True if there was one."""
        woken = False
        while True:
            try:
                self.queue.receive(block=False)
                woken = True
            except sysv_ipc.BusyError:
                return woken
            except sysv_ipc.ExistentialError:
                return woken

    def wait(self, timeout):
        """Block until a wake-up comes or ``timeout`` s pass (an interval timer
        interrupts the receive); True if woken."""
        if self.drain():
            return True
        old = signal.signal(signal.SIGALRM, lambda *_: None)
        signal.setitimer(signal.ITIMER_REAL, timeout, timeout)
        try:
            self.queue.receive(type=1)
            woken = True
        except sysv_ipc.Error:
            woken = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        if woken:
            self.drain()
        return woken

