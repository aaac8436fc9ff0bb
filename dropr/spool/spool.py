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
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

from dropr.errors import SpoolFull, ValidationError
from dropr.faults import crash_point
from dropr.fs import FULL as _FULL
from dropr.fs import LOCK, FsFlush, LockedDir, fsync_dir, lock_file, make_dirs
from dropr.fs import write_all as _write_all
from dropr.spool import perms
from dropr.spool.files import check_message, is_message_file
from dropr.spool.listing import Listing
from dropr.spool.filenames import parse

log = logging.getLogger(__name__)

STATES = ("tmp", "queue", "active", "deferred", "hold", "sent", "dead")
REASON_SUFFIX = ".reason"
_NEW_PREFIX = ".new-"
_CHUNK = 1 << 20
#: A claim listing keeps the first max(_KEEP_BATCHES * limit, _KEEP_MIN) names.
_KEEP_BATCHES = 100
_KEEP_MIN = 10_000


def _copy_into(fd, data):
    """Write ``data`` (bytes, a path, or a binary file object) to ``fd``, streaming."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        written = os.write(fd, data)
        if written < len(data):  # rare: a signal, or a file past its first few MiB
            _write_all(fd, memoryview(data)[written:])
    elif isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(fd, src.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
    elif hasattr(data, "read"):
        while chunk := data.read(_CHUNK):
            _write_all(fd, chunk)
    else:
        raise ValidationError(f"data must be bytes, a path or a binary file, not {type(data).__name__}")


def _create_afresh(path, tries=5):
    """A new file at ``path`` (O_EXCL, O_NOFOLLOW), whatever was there removed;
    a few tries, in case a producer keeps putting something there."""
    for _ in range(tries - 1):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with contextlib.suppress(FileExistsError):
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o644)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


#: A sender's claim directory ``active/<name>.<pid>/`` (a space in the name is a ``-``).
ActiveDir = LockedDir


class Spool:
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

    def put(self, data, name):
        """Write ``data`` under ``name`` (a :class:`SpoolName` or its string) into
        ``tmp/``, then rename it into ``queue/``; returns the path in ``queue/``.

        Raises ``SpoolFull`` on a full disk, after removing the partial file."""
        filename = str(name)
        # Plain strings, not Paths: this is the producer's hot path.
        tmp, queued = f"{self._tmp}/{filename}", f"{self._queue}/{filename}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            try:
                _copy_into(fd, data)
                crash_point("put.after_tmp_write")
                if self.fsync:
                    os.fsync(fd)
                crash_point("put.after_fsync")
            finally:
                os.close(fd)
            os.rename(tmp, queued)
            crash_point("put.after_rename")
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(tmp)
            if isinstance(e, OSError) and e.errno in _FULL:
                raise SpoolFull(f"spool {self.root} is full: {e.strerror}") from None
            if isinstance(e, PermissionError):
                folder = self._tmp if e.filename == tmp and e.filename2 is None else self._queue
                raise perms.denied(folder, "write and search (wx)", self.group) from None
            raise
        if self.fsync:
            self._sync_queue(queued)
        crash_point("put.after_dir_fsync")
        return queued

    def put_many(self, items):
        """Spool each ``(data, name)`` of ``items`` with one flush for them all:
        every body is written into ``tmp/``, the filesystem is flushed once
        (syncfs, armed before the first write; an fsync per file where the
        kernel cannot report write-back errors through syncfs), then each is
        renamed into ``queue/`` and ``queue/`` is synced once. A crash leaves
        each message whole in ``queue/`` or only in ``tmp/``, which the reaper
        clears. On any error every message of the call is taken back (but one
        a sender claimed in the instant between its rename and the error) and
        the error is raised: ``SpoolFull`` for a full disk."""
        written, queued = [], []
        flush = FsFlush(self._tmp) if self.fsync else None
        try:
            for data, name in items:
                written.append(self._write_tmp(str(name), data, fsync=flush is not None
                                               and not flush.available))
                crash_point("put_many.after_tmp_write")
            if flush is not None and flush.available:
                flush.flush()
            crash_point("put_many.after_flush")
            for filename in written:
                os.rename(f"{self._tmp}/{filename}", f"{self._queue}/{filename}")
                queued.append(filename)
                crash_point("put_many.after_rename")
            if self.fsync:
                fsync_dir(self._queue)
            crash_point("put_many.after_dir_fsync")
        except BaseException as e:
            self._take_back(written, queued)
            if isinstance(e, OSError) and e.errno in _FULL:
                raise SpoolFull(f"spool {self.root} is full: {e.strerror}") from None
            if isinstance(e, PermissionError):
                folder = self._queue if e.filename2 is not None else self._tmp
                raise perms.denied(folder, "write and search (wx)", self.group) from None
            raise
        finally:
            if flush is not None:
                flush.close()

    def _write_tmp(self, filename, data, *, fsync):
        """Create ``tmp/filename`` holding ``data``; returns ``filename``. A
        partial file is removed before the error is raised."""
        tmp = f"{self._tmp}/{filename}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            _copy_into(fd, data)
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.close(fd)
        return filename

    def _take_back(self, written, queued):
        """Undo a failed put_many: back out of ``queue/`` (unless already claimed),
        then out of ``tmp/``."""
        for filename in queued:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.rename(f"{self._queue}/{filename}", f"{self._tmp}/{filename}")
        for filename in written:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(f"{self._tmp}/{filename}")

    def _sync_queue(self, queued):
        """Make the rename into ``queue/`` durable. If that fails, take the message
        back out before raising, so that a caller who puts it again does not make
        a second one. (Should a sender have claimed it in that instant, it may be
        delivered as well: twice is better than a success that an OS crash undoes.)"""
        try:
            fsync_dir(self._queue)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(queued)
            raise

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

    def open_active(self, name):
        """Make and lock a fresh claim directory ``active/<name>.<pid>``, where
        the worker's name (``sender 2``) is spelled without spaces (``sender-2``)."""
        stem = f"{name.replace(' ', '-')}.{os.getpid()}"
        final = self.dirs["active"] / stem
        fresh = self.dirs["active"] / f"{_NEW_PREFIX}{stem}.{time.monotonic_ns()}"
        fresh.mkdir()
        fd = os.open(fresh / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        crash_point("send.after_new_active_dir")
        if final.exists():
            self._release_dir(final)
        os.rename(fresh, final)
        return ActiveDir(final, fd)

    def claim(self, active, *, limit, max_bytes, now_ms=None, skip_peers=frozenset()):
        """Move up to ``limit`` due messages (at most ``max_bytes``, but at least one)
        from ``queue/`` into ``active``; returns [(name, path, size)] in send order
        (``path`` a string).
        The messages of ``skip_peers`` stay in ``queue/``.

        Raw file names sort in send order, so only the names taken are parsed;
        anything that is not a regular file with a name dropr makes is left alone.
        The names come from a :class:`~dropr.spool.listing.Listing` kept between
        calls, so a deep queue is listed once for many batches (see there for
        how fresh it is)."""
        now_ms = self._now_ms() if now_ms is None else now_ms
        queue, dest = str(self.dirs["queue"]), str(active.path)
        listing, rescanned = self._listing_for(limit)
        claimed, total = [], 0
        while len(claimed) < limit:
            filename = listing.peek()
            if filename is None:
                if rescanned:
                    break
                listing, rescanned = self._rescan(limit), True
                continue
            item = self._claim_one(queue, dest, filename, now_ms, skip_peers)
            if item is not None and claimed and total + item[2] > max_bytes:
                break  # not moved: first in line for the next batch
            listing.advance()
            if item is None:
                continue
            path = dest + "/" + filename  # a plain string: a Path per message costs
            try:
                os.rename(item[1], path)
            except FileNotFoundError:
                continue  # another sender claimed it first
            crash_point("send.after_claim")
            size = self._claimed_size(path, item[1])
            if size is None:
                continue
            claimed.append((item[0], path, size))
            total += size
        return claimed

    def _claimed_size(self, path, back):
        """The size of the claimed ``path``, looked at again now that it is in
        our claim folder, where no producer can swap it any more (the look
        before the rename can be raced). Anything but a regular file with one
        link goes back to ``back`` in ``queue/``, where claims skip it; None."""
        st = os.lstat(path)
        if is_message_file(st):
            return st.st_size
        log.warning("spool: %s is not a regular file with one link: not sent, left in queue/",
                    back)
        os.rename(path, back)
        return None

    def _claim_one(self, queue, dest, filename, now_ms, skip_peers=frozenset()):
        """(name, source path, size) of ``filename`` if it is a due message still
        in ``queue/``; None to skip it."""
        try:
            name = parse(filename)
        except ValidationError:
            return None
        if name.due_ms > now_ms or name.peer in skip_peers:
            return None
        src = queue + "/" + filename
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return None  # another sender claimed it first
        return (name, src, st.st_size) if is_message_file(st) else None

    def _listing_for(self, limit):
        """(listing, True if just made): the kept one while it is fresh."""
        listing = self._listing
        if listing is None or listing.stale(self._monotonic()):
            return self._rescan(limit), True
        return listing, False

    def _rescan(self, limit):
        keep = max(_KEEP_BATCHES * limit, _KEEP_MIN)
        self._listing = Listing.scan(self._queue, keep=keep, clock=self._monotonic)
        return self._listing

    def unclaim(self, active):
        """Return every message still in the claim directory ``active`` to ``queue/``;
        its owner calls this before it lets go of the lock. Returns how many."""
        return self._back_to_queue(active.path)

    def to_sent(self, path, *, keep):
        """An acknowledged message: into ``sent/`` if ``keep``, else unlinked."""
        if keep:
            os.rename(path, f"{self.dirs['sent']}/{os.path.basename(path)}")
        else:
            os.unlink(path)
        crash_point("send.after_move_sent")

    def to_deferred(self, path, name, *, due_ms, count_attempt=True):
        """Move a claimed message to ``deferred/``, its next attempt due at ``due_ms``."""
        attempts = name.attempts + 1 if count_attempt else name.attempts
        new = name.replace(attempts=attempts, due_ms=due_ms)
        os.rename(path, self.dirs["deferred"] / str(new))
        crash_point("send.after_defer")
        return new

    def to_dead(self, path, name, reason):
        """Give up on a message: its reason first, then the message, into ``dead/``.
        ``SpoolFull`` if the disk has no room for the reason; the message stays put."""
        check_message(path)
        dead = self.dirs["dead"] / str(name)
        note = self.dirs["tmp"] / (f".reason-{os.getpid()}-" + str(name))
        self._write_note(note, reason.rstrip("\n") + "\n")
        crash_point("dead.after_reason_write")
        os.rename(note, dead.with_name(dead.name + REASON_SUFFIX))
        crash_point("dead.after_reason_rename")
        os.rename(path, dead)
        crash_point("dead.after_move")

    # -- retry scanner ----------------------------------------------------

    def requeue(self, state, name, **changes):
        """Move ``name`` from ``state`` (deferred or dead) back into ``queue/``."""
        src = self.dirs[state] / str(name)
        new = name.replace(**changes) if changes else name
        check_message(src)
        os.rename(src, self.dirs["queue"] / str(new))
        crash_point("retry.after_requeue")
        if state == "dead":
            with contextlib.suppress(FileNotFoundError):
                (self.dirs["dead"] / (str(name) + REASON_SUFFIX)).unlink()
        return new

    def expire(self, state, name, reason):
        """Move ``name`` from ``state`` into ``dead/`` with ``reason``."""
        self.to_dead(self.dirs[state] / str(name), name, reason)

    # -- operator ---------------------------------------------------------

    def hold(self, state, name):
        """Move ``name`` from ``state`` (queue or deferred) into ``hold/``, as it
        is: its id, metadata and attempts stay in its name. False if it is no
        longer there (a sender claimed it meanwhile)."""
        try:
            os.rename(self.dirs[state] / str(name), self.dirs["hold"] / str(name))
        except FileNotFoundError:
            return False
        crash_point("hold.after_move")
        return True

    def release(self, name):
        """Move a held message back into ``queue/``, due at once (its attempts
        and expiry kept). False if it is no longer held."""
        try:
            os.rename(self.dirs["hold"] / str(name), self.dirs["queue"] / str(name.replace(due_ms=0)))
        except FileNotFoundError:
            return False
        crash_point("release.after_move")
        return True

    def purge(self, state, name):
        """Remove ``name`` from ``state`` for good (and its reason, from ``dead/``).
        False if it was no longer there."""
        try:
            os.unlink(self.dirs[state] / str(name))
        except FileNotFoundError:
            return False
        if state == "dead":
            with contextlib.suppress(FileNotFoundError):
                (self.dirs["dead"] / (str(name) + REASON_SUFFIX)).unlink()
        return True

    # -- reaper -----------------------------------------------------------

    def recover_orphans(self):
        """Return the files of every claim directory whose owner is gone to ``queue/``;
        returns how many messages went back."""
        moved = 0
        for d in self.active_dirs():
            moved += self._release_dir(d)
        return moved

    def _release_dir(self, path):
        try:
            fd = lock_file(path / LOCK, create=False)
        except FileNotFoundError:
            # A claim directory gets its lock before it gets its name, so one
            # without a lock was being removed when its remover died: finish that.
            return self._empty_and_remove(path)
        if fd is None:
            return 0  # its sender is alive
        try:
            return self._empty_and_remove(path)
        finally:
            os.close(fd)

    def _empty_and_remove(self, path):
        moved = self._back_to_queue(path)
        crash_point("active.before_remove_dir")
        shutil.rmtree(path, ignore_errors=True)
        return moved

    def _back_to_queue(self, path):
        moved = 0
        for name in self.names(None, directory=path):
            with contextlib.suppress(FileNotFoundError):
                os.rename(path / str(name), self.dirs["queue"] / str(name))
                moved += 1
            crash_point("active.after_return_to_queue")
        return moved

    def remove_older(self, state, max_age, *, now=None):
        """Unlink files in ``state`` whose last change is older than ``max_age`` s."""
        limit = (self._clock() if now is None else now) - max_age
        removed = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dirs[state]) as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file() and entry.stat().st_ctime < limit:
                        os.unlink(entry.path)
                        removed += 1
                        crash_point("reaper.after_unlink")
        return removed

    def remove_orphan_reasons(self, max_age, *, now=None):
        """Unlink ``dead/`` reason files whose message is gone (purged by hand, or
        the writer died between the two renames of :meth:`to_dead`), once they are
        older than ``max_age`` s: a younger one may be waiting for its message."""
        limit = (self._clock() if now is None else now) - max_age
        removed, entries = 0, []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dirs["dead"]) as it:
            entries = list(it)
        present = {e.name for e in entries}
        for e in entries:
            message = e.name.removesuffix(REASON_SUFFIX)
            if message == e.name or message in present:
                continue
            with contextlib.suppress(FileNotFoundError):
                if e.stat().st_ctime < limit:
                    os.unlink(e.path)
                    removed += 1
        return removed

    def remove_stale_new_dirs(self, max_age):
        """Remove half-made claim directories of senders that died while making them."""
        limit = self._clock() - max_age
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dirs["active"]) as it:
            for e in it:
                if e.name.startswith(_NEW_PREFIX) and e.stat().st_mtime < limit:
                    shutil.rmtree(e.path, ignore_errors=True)

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
