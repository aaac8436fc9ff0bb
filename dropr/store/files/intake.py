"""The receiver's side of the files store: a body is written into ``tmp/``
(staged), flushed, and published by ``os.link`` into ``queue/<channel>/``
unless an earlier copy of the message is anywhere in the store. Mixed into
:class:`dropr.store.files.Store`; runs in receiver worker processes.

Crash points: ``store.after_tmp_write``, ``store.after_tmp_fsync``,
``store.after_link``, ``store.after_publish``, ``store.after_queue_sync``.
"""

import contextlib
import dataclasses
import functools
import os
import secrets
from pathlib import Path

from dropr import fs, names
from dropr.errors import StoreFull, TooLarge
from dropr.faults import crash_point
from dropr.fs import FULL, SYNCFS_REPORTS_ERRORS, fsync_dir, write_all
from dropr.fs import syncfs as _syncfs
from dropr.store import DUPLICATE, STORED
from dropr.store.files import format as store_names
from dropr.store.files.holders import NO_HOLDERS, Holders
from dropr.store.files.format import entry_name, header_line, read_message

_CHUNK = 1 << 20
#: (channel, client) pairs a store remembers as checked, at most: a name that
#: passed the grammar once passes it again (strings do not change).
_GOOD_NAMES_MAX = 4096
_PRIORITY_MIN, _PRIORITY_MAX = names.PRIORITY_MIN, names.PRIORITY_MAX


@dataclasses.dataclass
class Staged:
    """A message body written into ``tmp/`` that no consumer can see yet
    (from :meth:`Store.stage`); ``size`` is the body's length in bytes.

    ``fd`` is the descriptor the body was written through, held open until the
    body is flushed (or discarded): a write-back error is reported to a
    descriptor opened before it happened, not reliably to one opened later."""

    id: str
    channel: str
    priority: int
    size: int
    file: str  # the path in tmp/: a plain string, as the hot path uses it
    synced: bool = True  # False: its body still has to be flushed before it is linked
    fd: int = None
    client: str = ""
    received_at: float = 0.0

    @functools.cached_property
    def name(self):
        """Its file name in ``queue/<channel>/``."""
        return entry_name(self.priority, self.client, self.id)

    @property
    def path(self):
        """The staged file, as a Path."""
        return Path(self.file)


@contextlib.contextmanager
def full_is_store_full(root):
    try:
        yield
    except OSError as e:
        _raise_full(e, root)
        raise


def _raise_full(error, root):
    """``StoreFull`` for ``error`` if it is one of a full disk."""
    if error.errno in FULL:
        # The path is for the log, not for a client's answer.
        raise StoreFull(f"the store is full: {error.strerror}", path=root) from None


def _close_fd(staged):
    if staged.fd is not None:
        fd, staged.fd = staged.fd, None
        os.close(fd)


class IntakeMixin:
    """Staging and publishing of the files :class:`~dropr.store.files.Store`."""

    def put(self, channel, message_id, body, *, priority, client, limit=None, sync_dir=True,
            legacy_id=None):
        """Store ``body`` (bytes or an object with ``read(n)``) unless ``message_id``
        is already stored; returns ``"stored"`` or ``"duplicate"``.

        Raises ``TooLarge`` past ``limit`` bytes and ``StoreFull`` on a full disk;
        either way nothing is left behind. With ``sync_dir=False`` the caller
        must call :meth:`sync` for the channel before answering.
        The same as :meth:`stage` then :meth:`publish`."""
        staged = self.stage(channel, message_id, body, priority=priority, client=client,
                            limit=limit, legacy_id=legacy_id)
        return self.publish(staged, sync_dir=sync_dir)

    def stage(self, channel, message_id, body, *, priority, client, limit=None, batch=None,
              legacy_id=None):
        """Write ``body`` (bytes or an object with ``read(n)``) into ``tmp/`` and
        return it as a :class:`Staged` message that no consumer can see yet. Hand
        it to :meth:`publish` or :meth:`discard`; when the store syncs, its body
        is flushed there, through the descriptor it was written with.

        ``batch`` is the deque of the messages staged before it that will be
        published together with it (:meth:`publish_many`): where one syncfs
        covers them all, only the first holds its descriptor.

        Raises ``ValidationError`` for a bad name, ``TooLarge`` past ``limit``
        bytes and ``StoreFull`` on a full disk; then nothing is left behind."""
        good = self._good_names
        if type(channel) is str and type(client) is str and (channel, client) in good:
            names.check_id(message_id)  # the names were checked for an earlier message
        else:
            names.check_name(channel, "channel")
            names.check_id(message_id)
            names.check_name(client, "client")
            if len(good) >= _GOOD_NAMES_MAX:
                good.clear()
            good.add((channel, client))
        if type(priority) is not int or not _PRIORITY_MIN <= priority <= _PRIORITY_MAX:
            priority = names.check_priority(priority)  # converts, or refuses
        # A batch's messages were received together: the first one's time is theirs.
        received_at = batch[0].received_at if batch else self._clock()
        header = header_line(message_id, channel, priority, client, received_at, legacy_id)
        try:
            fd, tmp = self._create_tmp(message_id)
            try:
                size = self._write(fd, body, header, limit)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            if self.fsync:
                staged = Staged(message_id, channel, priority, size, tmp, synced=False,
                                fd=fd, client=client, received_at=received_at)
                self._hold_or_flush(staged, batch)
            else:  # nothing to flush: the descriptor is done with
                os.close(fd)
                staged = Staged(message_id, channel, priority, size, tmp, client=client,
                                received_at=received_at)
        except OSError as e:
            _raise_full(e, self.root)
            raise
        return staged

    def _hold_or_flush(self, staged, batch):
        """Keep the descriptor of a staged body only as long as needed: a lone
        message, and the first of a batch where one syncfs will flush them all,
        hold theirs until :meth:`_flush`; the rest of such a batch need none.
        In a batch on a kernel whose syncfs cannot report errors each body is
        fsync-ed now, so that a batch never holds a descriptor per message."""
        if staged.synced:
            _close_fd(staged)
        elif batch is not None and SYNCFS_REPORTS_ERRORS:
            if batch and batch[0].fd is not None:
                _close_fd(staged)  # the first one's syncfs covers it
        elif batch is not None:
            try:
                os.fsync(staged.fd)
            except BaseException:
                self.discard(staged)
                raise
            _close_fd(staged)
            staged.synced = True

    def _create_tmp(self, message_id):
        """(fd, path) of a new file in ``tmp/``. Unique by process and a counter
        (cheaper than random bytes from the kernel); O_EXCL guards against a
        name left by an earlier process that had the same pid."""
        while True:
            tmp = f"{self._root}/tmp/{message_id}.{self._pid}-{next(self._serial)}"
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640), tmp
            except FileExistsError:
                continue

    def publish(self, staged, *, sync_dir=True, fresh=False):
        """Make a :class:`Staged` message visible in ``queue/<channel>/`` unless its
        id is already stored; returns ``"stored"`` or ``"duplicate"``. The staged
        file is gone afterwards, whatever happens. With ``sync_dir=False`` the
        caller must call :meth:`sync` for the channel before answering.

        ``fresh``: the receiver made the id itself just now (a plain POST
        without an Idempotency-Key), so no earlier copy can be in ``work/``,
        ``done/`` or ``dead/``, and those are not looked at; the link still
        refuses a name that is in ``queue/``."""
        self._notice_format()
        try:
            with full_is_store_full(self.root):
                self._flush([staged])
                status = self._link_new(staged, NO_HOLDERS if fresh else Holders(self._root))
                if (status == STORED and not fresh
                        and self._placed_twice(staged, Holders(self._root))):
                    status = DUPLICATE
                if sync_dir:
                    # "duplicate" too: the copy that won may be another request's,
                    # linked but not synced yet, and the caller will forget its own.
                    self.sync([staged.channel])
                return status
        finally:
            self.discard(staged)
            crash_point("store.after_publish")

    def publish_many(self, staged):
        """Publish the :class:`Staged` messages of the deque ``staged``, emptying it
        as it goes, then make their channels durable at once; their statuses,
        in order. What is left in ``staged`` after an error was not published.

        The bodies are flushed together before the first link, and the folders
        that may hold an earlier copy (see :class:`~dropr.store.files.holders.Holders`) are listed once
        before the links and once after them, not for every message."""
        statuses, channels, linked = [], set(), []
        self._notice_format()
        try:
            with full_is_store_full(self.root):
                self._flush(staged)
                before = Holders(self._root)
                while staged:
                    message = staged.popleft()
                    linked.append(message)  # its tmp/ name goes below, whatever happens
                    statuses.append(self._link_new(message, before))
                    # A duplicate may have been linked a moment ago by another request
                    # that has not synced yet; syncing here too keeps "duplicate" durable.
                    channels.add(message.channel)
                after = Holders(self._root)
                for i, message in enumerate(linked):
                    if statuses[i] == STORED and self._placed_twice(message, after):
                        statuses[i] = DUPLICATE
        finally:
            for message in linked:
                self.discard(message)
                crash_point("store.after_publish")
        self.sync(channels)
        return statuses

    def _flush(self, staged):
        """Make the bodies of ``staged`` durable. Where syncfs(2) reports write-back
        errors, one flush of the store's filesystem for them all, through the
        descriptor of the first message, opened before any of their writes: it
        returns once every dirty page and inode is on disk, and fails if any
        write-back failed since that descriptor was opened, whoever saw the error
        first; so the promise is that of an fsync per file. Elsewhere one fsync
        per file, through the descriptor that wrote it."""
        pending = [m for m in staged if not m.synced]
        try:
            if len(pending) > 1 and SYNCFS_REPORTS_ERRORS and pending[0].fd is not None:
                _syncfs(pending[0].fd)
            else:
                for message in pending:
                    self._fsync_staged(message)
        finally:
            for message in pending:
                _close_fd(message)
        for message in pending:
            message.synced = True
        for _ in staged:
            crash_point("store.after_tmp_fsync")

    def _fsync_staged(self, message):
        if message.fd is not None:
            os.fsync(message.fd)
            return
        # Staged in a batch whose syncfs would have covered it, flushed alone
        # now: a descriptor opened late is the best there is.
        fd = os.open(message.file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _link_new(self, staged, holders):
        """Link ``staged`` into its channel unless an earlier copy is already in
        ``holders`` or in ``queue/``; ``"stored"`` or ``"duplicate"``."""
        name = staged.name
        qdir = f"{self._root}/queue/{staged.channel}"
        if holders.hold(staged.channel, name) or (self._legacy
                                                   and self._has_legacy(staged, holders)):
            # Linking first and unlinking on finding it here would leave a second
            # copy in queue/ if this process died in between.
            return DUPLICATE
        try:
            self._link(staged.file, qdir, f"{qdir}/{name}")
        except FileExistsError:
            return DUPLICATE
        crash_point("store.after_link")
        return STORED

    def _notice_format(self):
        """A store made before may have been marked since (one stat per request)."""
        if self._legacy:
            self._legacy = not store_names.marked(self._root)

    def adopt_format(self):
        """Mark a store made before ``P.CLIENT@ID`` names once no ``P.ID`` name
        is left where duplicates are looked for; True if it is marked (now).
        Run by the reaper after each pass."""
        if store_names.marked(self._root):
            return True
        if store_names.old_names_left(self._root):
            return False
        store_names.mark(self.root)
        self._legacy = False
        return True

    def _has_legacy(self, staged, holders):
        """In a store older than ``P.CLIENT@ID`` names: is a ``P.ID`` copy of
        ``staged`` by the same client in ``queue/`` or in ``holders``?"""
        name = store_names.old_name(staged.priority, staged.id)
        for _ in range(2):  # a copy that moves on meanwhile is found where it went
            path = f"{self._root}/queue/{staged.channel}/{name}"
            if not os.path.lexists(path):
                path = holders.find(staged.channel, name)
            if path is None:
                return False
            with contextlib.suppress(FileNotFoundError):
                return read_message(path).client == staged.client
        return False

    def _placed_twice(self, staged, holders):
        """After the link: True (and the new link removed) if an earlier copy
        moved forward meanwhile and ``holders``, listed after the link, shows it."""
        name = staged.name
        if not holders.hold(staged.channel, name):
            return False
        dest = f"{self._root}/queue/{staged.channel}/{name}"
        ino = os.stat(staged.file).st_ino
        with contextlib.suppress(FileNotFoundError):
            if os.stat(dest).st_ino == ino:
                os.unlink(dest)
        return True

    def discard(self, staged):
        """Drop a :class:`Staged` message that will not be published (idempotent)."""
        _close_fd(staged)
        try:
            os.unlink(staged.file)
        except FileNotFoundError:
            pass

    def _write(self, fd, body, header, limit):
        """Write the header and ``body`` to ``fd``; the body's size. Not synced
        here: :meth:`publish` and :meth:`publish_many` flush before they link,
        the latter a whole batch at once."""
        written, pending = 0, header  # the header goes out with the first chunk: one write
        if isinstance(body, (bytes, bytearray, memoryview)):
            chunk, read = body, None
        else:
            read = body.read
            chunk = read(_CHUNK)
        while chunk:
            written += len(chunk)
            if limit is not None and written > limit:
                raise TooLarge(f"message is over the limit of {limit} bytes")
            write_all(fd, pending + chunk if pending else chunk)
            pending = b""
            chunk = read(_CHUNK) if read is not None else b""
        if pending:
            write_all(fd, pending)
        crash_point("store.after_tmp_write")
        return written

    def _link(self, tmp, qdir, dest):
        try:
            os.link(tmp, dest)
        except FileNotFoundError:
            if not os.path.lexists(tmp):
                raise  # the tmp file itself is gone: nothing to publish
            # The channel's first message; another worker may be making the
            # folder at this very moment, and may not have synced queue/ yet.
            self._make_dir(qdir, always_sync=True)
            os.link(tmp, dest)

    def sync(self, channels):
        """Make the entries published in ``channels`` durable (after ``sync_dir=False``)."""
        if self.fsync:
            for channel in set(channels):
                fsync_dir(self.root / "queue" / channel)
        crash_point("store.after_queue_sync")

    def free_bytes(self):
        """Bytes free for this process's writes on the store's filesystem."""
        return fs.free_bytes(self._root)

    def free_inodes(self):
        """Inodes free for this process's files on the store's filesystem
        (``None`` where the filesystem does not count them)."""
        return fs.free_inodes(self._root)

    def check_writable(self):
        """Create, write and remove a file in ``tmp/`` (readiness); ``OSError``
        if the store cannot be written. A probe left by a crash is a stale
        ``tmp/`` file like any other, removed by the reaper."""
        path = os.path.join(self._root, "tmp", f".probe.{secrets.token_hex(6)}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, b"probe\n")
        finally:
            os.close(fd)
            os.unlink(path)
