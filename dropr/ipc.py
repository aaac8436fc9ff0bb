"""SysV message queues: the small notices between dropr's processes.

Two queues per spool, keyed from the spool's real path, so two spools on one
host never share one:

- the wake queue: a producer's "new message" notice to the senders. Sent
  without blocking, and skipped while the queue already holds enough of them.
- the report queue: each worker's heartbeat and counters, JSON, to the
  supervisor. Separate, so that reports never crowd out wake-ups.

``receive()`` of sysv_ipc has no timeout, so :meth:`Notices.wait` arms a
repeating interval timer whose SIGALRM interrupts it.
"""

import contextlib
import hashlib
import json
import os
import signal
import time

import sysv_ipc

_TYPE = 1
_MAX_REPORTS = 10_000
ROLES = ("wake", "report")


def queue_key(spool_root, role):
    """The SysV key of the ``role`` queue that belongs to the spool at ``spool_root``."""
    real = os.path.realpath(spool_root).encode()
    digest = hashlib.sha256(b"dropr-mq:" + role.encode() + b":" + real).digest()
    return (int.from_bytes(digest[:4], "big") & 0x7FFFFFFF) or 1


def _ignore_alarm(signum, frame):
    """Only interrupts a blocking receive(); see Notices.wait."""


def _open_queue(key, create):
    # An existing queue is opened asking for no rights: a producer may send
    # wake-ups but not read reports, and each operation checks its own right.
    try:
        if create:
            return sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREAT, mode=0o660)
        return sysv_ipc.MessageQueue(key, 0, mode=0)
    except sysv_ipc.ExistentialError:
        return None


class Notices:
    """The two message queues of one spool (wake-ups and reports)."""

    def __init__(self, wake_queue, report_queue):
        self._wake = wake_queue
        self._reports = report_queue
        self.keys = (wake_queue.key, report_queue.key)

    @classmethod
    def open(cls, spool_root, *, create=False):
        """The queues of ``spool_root``; None if they do not exist and not ``create``."""
        queues = [_open_queue(queue_key(spool_root, role), create) for role in ROLES]
        if None in queues:
            return None
        return cls(*queues)

    @classmethod
    def replace(cls, spool_root, *, gid=None):
        """Remove the queues left by an earlier run and make fresh ones. With
        ``gid`` (the producers' group, ``[client] group``) that group may send
        wake-ups (and see how many wait), and the report queue is ours alone."""
        for role in ROLES:
            old = _open_queue(queue_key(spool_root, role), False)
            if old is not None:
                with contextlib.suppress(sysv_ipc.ExistentialError):
                    old.remove()
        notices = cls.open(spool_root, create=True)
        if gid is not None:
            notices._wake.gid = gid
            notices._wake.mode = 0o660
            notices._reports.mode = 0o600
        return notices

    def remove(self):
        """Remove both queues from the system (idempotent)."""
        for queue in (self._wake, self._reports):
            with contextlib.suppress(sysv_ipc.ExistentialError):
                queue.remove()

    def wake(self, max_waiting):
        """Tell the senders there is work; never blocks. False only when the queue
        is gone (removed by a daemon's stop or restart); a queue that already
        holds ``max_waiting`` wake-ups, or is full, needs no other and is True."""
        try:
            if self._wake.current_messages < max_waiting:
                self._wake.send(b"", block=False, type=_TYPE)
            return True
        except sysv_ipc.BusyError:
            return True
        except sysv_ipc.PermissionsError:
            return True  # no right to wake: the senders find the message by their timeout
        except sysv_ipc.ExistentialError:
            return False

    def wait(self, timeout):
        """Block until a wake-up arrives or ``timeout`` seconds pass; True if woken.
        Extra wake-ups already queued are drained, so one burst is one wake.

        A queue removed meanwhile (droprd stopped or restarted) is opened again
        by its key; while none exists the wait is a plain sleep. Without this,
        every wait on a removed queue would return at once (a busy loop), and a
        queue made anew by a restarted droprd would never be heard."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                return self._wait_on(self._wake, left)
            except sysv_ipc.ExistentialError:
                if not self._reopen():
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    return False

    def woken(self):
        """True if a wake-up is waiting (taken, with the rest of its burst);
        never blocks."""
        if self._take(self._wake) is None:
            return False
        self._drain(self._wake)
        return True

    def _wait_on(self, queue, timeout):
        """One wait on ``queue``; ExistentialError if it was removed."""
        if self._take(queue) is not None:
            self._drain(queue)
            return True
        old = signal.signal(signal.SIGALRM, _ignore_alarm)
        # Repeating: if it fires before receive() starts blocking, the next one still ends it.
        signal.setitimer(signal.ITIMER_REAL, timeout, timeout)
        try:
            queue.receive(type=_TYPE)
            woken = True
        except sysv_ipc.ExistentialError:
            raise
        except sysv_ipc.Error:
            woken = False  # interrupted by the timer
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        if woken:
            self._drain(queue)
        return woken

    def _reopen(self):
        """Open the queues of the same keys again; False if they do not exist."""
        queues = [_open_queue(key, False) for key in self.keys]
        if None in queues:
            return False
        self._wake, self._reports = queues
        return True

    def report(self, payload):
        """Send one JSON report to the supervisor; never blocks. True if sent."""
        try:
            self._reports.send(json.dumps(payload).encode(), block=False, type=_TYPE)
            return True
        except (sysv_ipc.BusyError, sysv_ipc.ExistentialError):
            return False

    def reports(self):
        """All reports waiting now, decoded, oldest first."""
        out = []
        while len(out) < _MAX_REPORTS and (raw := self._take(self._reports)) is not None:
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out

    @staticmethod
    def _take(queue):
        try:
            message, _ = queue.receive(block=False)
            return message
        except (sysv_ipc.BusyError, sysv_ipc.ExistentialError):
            return None

    def _drain(self, queue):
        while self._take(queue) is not None:
            pass
