"""The client spool: one directory tree per host, one directory per state.

    tmp/               being written by a producer (O_EXCL create)
    queue/             ready to send, sorted by name = send order
    active/<name>.<pid>/  claimed by one sender (``sender-2.4242``); ``.lock`` is
                       flock-ed while it lives
    deferred/          waiting for its next attempt (due time in the name)
    hold/              held by an operator: no sender, retry scanner or expiry touches it
    sent/              acknowledged by the receiver, kept for the retention time
    dead/              given up; ``<name>.reason`` beside each says why
    peers/             peer health (one small file per peer that is marked down):
                       made here, kept by :mod:`dropr.peers`

This module alone knows the layout (what is inside ``peers/`` is
:mod:`dropr.peers`'s). Every state change of a message is one
``rename()`` inside one filesystem, so at every instant each message is in
exactly one directory. A sender holds an exclusive ``flock`` on the ``.lock``
file of its active directory for its whole life; the lock dies with the
process, which is how the reaper and other senders tell an orphaned directory
from a live one, without trusting pids.
"""

import contextlib
import os
import time
from pathlib import Path

from dropr.errors import SpoolFull, ValidationError
from dropr.fs import FULL as _FULL
from dropr.fs import make_dirs
from dropr.fs import write_all as _write_all
from dropr.spool import perms
from dropr.spool.claims import Claims
from dropr.spool.filenames import parse
from dropr.spool.files import REASON_SUFFIX
from dropr.spool.intake import Intake, _create_afresh
from dropr.spool.upkeep import Upkeep

STATES = ("tmp", "queue", "active", "deferred", "hold", "sent", "dead")


class Spool(Intake, Claims, Upkeep):
    """The client spool at ``root``; used by producers, senders, the retry scanner,
    the reaper and the admin commands, each in its own process."""

    def __init__(self, root, *, fsync=True, group="", clock=time.time, monotonic=time.monotonic):
        self.root = Path(root)
        self.fsync = fsync
        self.group = group  # [client] group: producers of other users ("" = none)
        self._clock = clock
        self._monotonic = monotonic
        self._listing = None  # a sender's claim listing, kept between claims
        self.dirs = {state: self.root / state for state in STATES}
        self._tmp, self._queue = str(self.dirs["tmp"]), str(self.dirs["queue"])
        self.peers_dir = self.root / "peers"

    def create(self, *, producer=False, strict=False):
        """Make the directory tree (idempotent); returns self.

        With a ``group`` the folders get the modes of :mod:`dropr.spool.perms`
        (where this user owns them; ``strict``: DroprError for any it cannot
        fix), and a ``producer`` makes nothing, it only checks that it can put.
        AccessDenied, naming the folder and the permission, if this user lacks one."""
        try:
            if self.group and producer:
                perms.reach(self, self.group)
            elif self.group:
                perms.prepare(self, self.group, strict=strict)
            else:
                make_dirs(self.root, (*self.dirs.values(), self.peers_dir), fsync=self.fsync)
        except PermissionError as e:
            raise perms.denied(e.filename or self.root, "write and search (wx)",
                               self.group) from None
        return self

    # -- producer ---------------------------------------------------------


    # -- listing ----------------------------------------------------------

    def names(self, state, *, directory=None):
        """The parsed names in ``state`` (or in ``directory``), in send order.
        Files whose names dropr does not make are skipped."""
        path = directory or self.dirs[state]
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(path) as it:
            for entry in it:
                with contextlib.suppress(ValidationError):
                    found.append(parse(entry.name))
        found.sort()
        return found

    def backlog(self, *, with_bytes=False):
        """``(messages, bytes)`` waiting to be sent: in ``queue/`` and ``deferred/``.

        One directory listing each, no name parsing; ``bytes`` is 0 unless
        ``with_bytes``, which costs a ``stat()`` per file."""
        messages = size = 0
        for state in ("queue", "deferred"):
            try:
                with contextlib.suppress(FileNotFoundError), os.scandir(self.dirs[state]) as it:
                    for entry in it:
                        if entry.name.startswith("."):
                            continue
                        messages += 1
                        if with_bytes:
                            with contextlib.suppress(FileNotFoundError):
                                size += entry.stat(follow_symlinks=False).st_size
            except PermissionError:
                # A producer of a shared spool may not list it ([client] group).
                raise perms.denied(self.dirs[state], "read (r), to count the backlog for "
                                   "[client] max_messages and max_bytes,", self.group) from None
        return messages, size

    def count(self, state):
        """How many messages are in ``state`` (in all of ``active/`` for that state)."""
        if state == "active":
            return sum(len(self.names(None, directory=d)) for d in self.active_dirs())
        return len(self.names(state))

    def counts(self):
        """A dict state -> count, for status displays."""
        return {state: self.count(state) for state in STATES if state != "tmp"}

    def active_dirs(self):
        """The claim directories under ``active/`` (not those being made)."""
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dirs["active"]) as it:
            return [Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")]
        return []

    def reason(self, name):
        """Why the message ``name`` in ``dead/`` was given up, or ''."""
        try:
            return (self.dirs["dead"] / (str(name) + REASON_SUFFIX)).read_text()
        except FileNotFoundError:
            return ""

    def locate(self, message_id):
        """(state, path) of the message with ``message_id``; None if absent."""
        for state in ("queue", "deferred", "hold", "dead", "sent"):
            for name in self.names(state):
                if name.id == message_id:
                    return state, self.dirs[state] / str(name)
        for d in self.active_dirs():
            for name in self.names(None, directory=d):
                if name.id == message_id:
                    return "active", d / str(name)
        return None

    # -- sender -----------------------------------------------------------


    # -- retry scanner ----------------------------------------------------


    # -- operator ---------------------------------------------------------


    # -- reaper -----------------------------------------------------------

    def _write_note(self, path, text):
        """Write a small file, fsync-ed when the spool syncs (it is renamed into
        place next, and must not come back empty after an OS crash); ``SpoolFull``
        (and no file) on a full disk. Made afresh (O_EXCL), so that nothing a
        producer put at that name in ``tmp/`` (a symlink to a file of ours) is
        followed or overwritten."""
        try:
            fd = _create_afresh(path)
            try:
                _write_all(fd, text.encode())
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if e.errno in _FULL:
                raise SpoolFull(f"spool {self.root} is full: {e.strerror}") from None
            raise

    def _now_ms(self):
        return int(self._clock() * 1000)
