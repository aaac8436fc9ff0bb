"""Limits that protect the receiver from hostile or broken clients: a stalled
body is cut off, a store whose disk runs low refuses uploads before it fills
up, and meta JSON is checked for nesting before it is parsed.

Runs in receiver worker processes; one :class:`DiskFloor` and one
:class:`BodyTimeout` per app, shared by the worker's request threads.
"""

import os
import re
import threading
import time

from dropr.errors import StoreFull, TooLarge, ValidationError
from dropr.store.files.format import MESSAGE_OVERHEAD

#: Environ key that tells the 408 handler how long the body stalled. The
#: receiver's gunicorn worker sets it itself where the kernel already times
#: out every read of the request's socket (see worker.set_io_timeouts).
BODY_TIMEOUT_ENV = "dropr.body_timeout"
#: Seconds a measure of the store's free space is reused (statvfs is cheap,
#: but a batch of 10,000 messages should not make 10,000 calls).
FREE_SPACE_MAX_AGE = 0.5
#: A request that staged at least this many bytes measures the free space
#: again before it publishes: concurrent uploads may all have passed the
#: first check on the same figure.
RECHECK_BYTES = 1024 * 1024


class BodyTimeout:
    """Falcon middleware: reading the request body blocks at most ``seconds``
    without a byte arriving; then the read raises ``TimeoutError``, which the
    error handlers answer with 408 after the resource has removed what it
    staged. gunicorn's threaded worker has no such limit of its own, so a
    stalled client would hold a request thread for good. Runs in receiver
    worker processes.

    It sets a timeout on the connection's socket (``gunicorn.socket``), so a
    client that keeps sending, however slowly, is not cut off (as nginx's
    ``client_body_timeout``), and leaves it there for the answer, which then
    waits at most as long for the client to take some of it (nginx's
    ``send_timeout``); without gunicorn (falcon's TestClient) it does
    nothing. Where the receiver's worker already has the kernel time out the
    socket's reads after as many seconds (plain HTTP: ``BODY_TIMEOUT_ENV`` is
    set when the request comes in), it does nothing either: a stalled read
    then fails with ``BlockingIOError``, answered 408 as well, and the two
    switches of the socket's mode per request are saved."""

    def __init__(self, seconds):
        self.seconds = seconds

    def process_request(self, req, resp):
        env = req.env
        if BODY_TIMEOUT_ENV in env:
            return  # the kernel's read timeout holds for the body too
        sock = env.get("gunicorn.socket")
        if sock is not None:
            env[BODY_TIMEOUT_ENV] = self.seconds
            sock.settimeout(self.seconds)

    # No process_response: the timeout stays while gunicorn writes the answer,
    # so that a client that takes none of it for ``seconds`` is cut off too
    # (over TLS the kernel's send timeout cannot: OpenSSL retries the write).
    # The socket's mode is set afresh for its next request.


class DiskFloor:
    """Refuses uploads (``StoreFull``, answered 507) while the free space on the
    store's filesystem is, or would be, under ``floor`` bytes, or its free
    inodes under ``inodes``, so that senders defer their messages instead of
    the receiver failing mid-write. A message costs what it takes on disk,
    not its length: its bytes, then up to a block and its header line more
    (:data:`~dropr.store.files.format.MESSAGE_OVERHEAD`), and two inodes while it is
    stored (see :meth:`_judge`). ``floor`` and ``inodes`` 0 turn their checks
    off. Runs in receiver worker processes; thread-safe."""

    def __init__(self, path, floor, *, inodes=0, clock=time.monotonic, statvfs=os.statvfs,
                 max_age=FREE_SPACE_MAX_AGE):
        self.path = path
        self.floor = floor
        self.inodes = inodes
        self._clock = clock
        self._statvfs = statvfs
        self._max_age = max_age
        self._lock = threading.Lock()
        self._measured = None  # (when, statvfs)

    def check(self, incoming=0, messages=0):
        """Refuse a request that would bring ``incoming`` more bytes in
        ``messages`` more files, on a figure at most ``max_age`` seconds old."""
        if self.floor or self.inodes:
            self._judge(self._free(fresh=False), incoming, messages)

    def recheck(self):
        """Refuse, on a fresh figure, if what was staged already crossed a floor."""
        if self.floor or self.inodes:
            self._judge(self._free(fresh=True), 0, 0)

    def _judge(self, st, incoming, messages):
        free = st.f_bavail * st.f_frsize
        need = incoming + messages * (st.f_frsize + MESSAGE_OVERHEAD)
        if self.floor and free - need < self.floor:
            more = f" and {need} bytes are coming" if need else ""
            if messages:
                more += f" (on disk, for {messages} messages)"
            raise StoreFull(f"the store has {free} bytes free{more}; it keeps at least "
                            f"{self.floor} ([receiver] min_free_bytes) free: try later")
        # A filesystem that allots inodes as it goes (btrfs) reports none at all.
        # A message takes one; tmpfs also charges one for its link into queue/
        # until the staged name goes, after the whole batch is linked.
        if self.inodes and st.f_files and st.f_favail - 2 * messages < self.inodes:
            more = f" and {messages} messages (two inodes each) are coming" if messages else ""
            raise StoreFull(f"the store has {st.f_favail} inodes free{more}; it keeps at "
                            f"least {self.inodes} ([receiver] min_free_inodes) free: try later")

    def _free(self, *, fresh):
        with self._lock:
            now = self._clock()
            if fresh or self._measured is None or now - self._measured[0] >= self._max_age:
                self._measured = (now, self._statvfs(self.path))
            return self._measured[1]


#: A JSON string once its escapes are gone: no quote inside, so nothing to
#: backtrack over (the possessive ``*+`` gives nothing back either).
_STRING = re.compile(rb'"[^"]*+"')
_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def check_json_depth(data, max_depth, what="JSON", *, max_containers=None, max_strings=None):
    """Refuse ``data`` (JSON bytes) if it nests arrays and objects deeper than
    ``max_depth``, or holds more than ``max_containers`` arrays and objects or
    ``max_strings`` strings (keys included), without parsing it: a parser
    recurses once per level, and a million tiny objects take a parser (and
    the garbage collector after it) seconds. Too many is ``TooLarge``.

    In linear time, whatever the bytes (all of it in C): escapes are removed
    first (every ``\\\\``, then every ``\\"``: what is left of a run of
    backslashes escapes the next character), so that a string is a quote, no
    quotes, a quote; strings are cut out (their brackets do not count); then
    innermost ``[]`` and ``{}`` pairs are removed level by level, at most
    ``max_depth`` times. Unbalanced input is left for the parser to refuse.
    (A pattern that skips escapes inside strings itself, ``"(?:\\.|[^"])*"``,
    starts again at every quote that fails to close: quadratic.)"""
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    if max_strings is not None and unescaped.count(b'"') > 2 * max_strings + 1:
        raise TooLarge(f"{what} has more than the {max_strings} strings it may have")
    brackets = _STRING.sub(b"", unescaped).translate(None, _NOT_BRACKETS)
    if max_containers is not None and (brackets.count(b"[") + brackets.count(b"{")
                                       > max_containers):
        raise TooLarge(f"{what} has more than the {max_containers} arrays and objects "
                       f"it may have")
    for _ in range(max_depth):
        if not brackets:
            return
        brackets, removed = _PAIR.subn(b"", brackets)
        if not removed:
            return  # unbalanced: not JSON, which the parser says better
    if brackets and _PAIR.search(brackets):
        raise ValidationError(f"{what} is nested more than {max_depth} levels deep")
