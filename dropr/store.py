"""The server store: the receiver writes it, consumers read it.

    .format                      names are P.CLIENT@ID (absent: an older store,
                                 see :mod:`dropr.store_names`)
    tmp/                         bodies being received
    queue/<channel>/P.CLIENT@ID  stored, waiting for a consumer
    work/<consumer>/<channel>/   claimed by a consumer
    work/<consumer>/.lock        flock-ed by a consumer process while it lives
    retry/<channel>/P.CLIENT@ID  failures of a message that waits for a new try
    done/<channel>/              acknowledged; expired by the reaper
    dead/<channel>/              given up by a consumer (``dropr consume``);
                                 ``P.CLIENT@ID.reason`` beside it says why

This module alone knows the layout. A stored file is a one-line header
(``DROPR1 {json}\\n`` with id, channel, priority, client and received_at)
followed by the message body byte for byte, so a message and its metadata
appear together or not at all. A message is published by ``os.link`` of the
finished, fsync-ed ``tmp/`` file into ``queue/<channel>/``: the link fails if
the name exists, so two uploads of the same id cannot both win.

A message is known by its channel, priority, client and id (its name,
:mod:`dropr.store_names`). In a store made before client names (no
``.format``) a message is also a duplicate of an old ``P.ID`` copy of the same
client, so that a re-send across the upgrade is not stored twice, until the
reaper marks the store (:meth:`Store.adopt_format`).

The interface the receiver and consumers use (``put``, or ``stage`` then
``publish``; ``channels``, ``count``, ``messages``, ``claim``, ``ack``) is
small on purpose, so that a store on another engine can stand beside this one.
"""

import contextlib
import dataclasses
import errno
import fcntl
import functools
import itertools
import json
import os
import secrets
import time
from pathlib import Path

from dropr import ids, names, store_names
from dropr.errors import AlreadyRunning, NotFound, StoreFull, TooLarge, ValidationError
from dropr.durable import SYNCFS_REPORTS_ERRORS
from dropr.durable import syncfs as _syncfs
from dropr.faults import crash_point
from dropr.spool import perms
from dropr.spool.spool import LOCK, REASON_SUFFIX, LockedDir, fsync_dir, make_dirs
from dropr.store_names import entry_name, id_of
from dropr.store_names import is_message as _is_message
from dropr.store_operator import OperatorMixin

MAGIC = b"DROPR1 "
HEADER_MAX = 4096
STORED, DUPLICATE = "stored", "duplicate"
_CHUNK = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: With ``[receiver] group``: members (consumer accounts) may pass the root,
#: claim, read, ack, retry and bury (the rest), and write their failure notes
#: into ``tmp/`` but neither list it nor touch the bodies being received there.
SHARED_MODES = {"": 0o2750, "tmp": 0o3730, "queue": 0o2770, "work": 0o2770, "done": 0o2770,
                "dead": 0o2770, "retry": 0o2770}

#: Bytes of disk a stored message may take beyond its body and the rounding of
#: its last block: its header line (ids, channel and client of at most 64
#: characters each) and its directory entry.
MESSAGE_OVERHEAD = 512


@dataclasses.dataclass(frozen=True)
class Message:
    """A stored message; ``read()`` gives its body."""

    id: str
    channel: str
    priority: int
    client: str
    received_at: float
    size: int
    path: Path
    offset: int
    legacy_id: str = None  # a PHP dropr client's own id of the message, if it came from one

    def read(self):
        """The whole body as bytes."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read()

    def open(self):
        """A binary file object positioned at the start of the body."""
        f = open(self.path, "rb")
        f.seek(self.offset)
        return f


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

    @property
    def name(self):
        """Its file name in ``queue/<channel>/``."""
        return entry_name(self.priority, self.client, self.id)

    @property
    def path(self):
        """The staged file, as a Path."""
        return Path(self.file)


@dataclasses.dataclass(frozen=True)
class Failures:
    """What consumers recorded about a message whose command failed: how many
    tries failed, the time before which no claim takes it, and the last reason."""

    attempts: int = 0
    not_before: float = 0.0
    reason: str = ""

    def encode(self):
        meta = {"attempts": self.attempts, "not_before": self.not_before}
        return (json.dumps(meta) + "\n" + self.reason.rstrip("\n") + "\n").encode()

    @classmethod
    def decode(cls, data):
        line, _, reason = data.decode(errors="replace").partition("\n")
        meta = json.loads(line)
        return cls(meta["attempts"], meta["not_before"], reason.rstrip("\n"))


class WorkDir(LockedDir):
    """A consumer's folder ``work/<consumer>/``, ``flock``-ed for as long as the
    consumer process lives (see :meth:`Store.open_work`); once closed, a later
    consumer of that name may take over."""

    def __init__(self, consumer, path, fd):
        super().__init__(path, fd)
        self.consumer = consumer


@contextlib.contextmanager
def _full_is_store_full(root):
    try:
        yield
    except OSError as e:
        if e.errno in _FULL:
            # The path is for the log, not for a client's answer.
            raise StoreFull(f"the store is full: {e.strerror}", path=root) from None
        raise


def _close_fd(staged):
    if staged.fd is not None:
        fd, staged.fd = staged.fd, None
        os.close(fd)


def _private(path, flags):
    """An ``opener`` for ``open()``: files of the store are 0640, as messages."""
    return os.open(path, flags, 0o640)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Holders:
    """The folders that may hold an earlier copy of a message, per channel: the
    channel's folder in each consumer's ``work/``, then its ``done/`` and its
    ``dead/`` folders, each only if it exists when first asked. Made in a
    receiver worker, for one batch (or one message) at a time.

    A message moves only forward (``queue/`` to ``work/`` to ``done/`` or
    ``dead/``), and the link into ``queue/`` fails while a copy is there. So a
    copy that was in some ``work/``, in ``done/`` or in ``dead/`` when a message
    was linked is seen by holders listed after that link: its ``work/`` folder
    exists then, or, if it has moved on since, its ``done/`` or ``dead/`` folder
    (listed last) does. One listing after all the links of a batch therefore
    serves them all; where no consumer has touched a channel, checking a
    message costs no system call at all."""

    def __init__(self, root):
        self._root = root
        self._consumers = None
        self._dirs = {}

    def hold(self, channel, name):
        """True if ``name`` is in one of ``channel``'s folders."""
        return any(os.path.lexists(f"{d}/{name}") for d in self._of(channel))

    def find(self, channel, name):
        """The path of ``name`` in one of ``channel``'s folders, or ``None``."""
        return next((f"{d}/{name}" for d in self._of(channel)
                     if os.path.lexists(f"{d}/{name}")), None)

    def _of(self, channel):
        dirs = self._dirs.get(channel)
        if dirs is None:
            if self._consumers is None:
                self._consumers = []
                with contextlib.suppress(FileNotFoundError), os.scandir(f"{self._root}/work") as it:
                    self._consumers = [e.path for e in it]
            dirs = [f"{c}/{channel}" for c in self._consumers]
            dirs += [f"{self._root}/done/{channel}", f"{self._root}/dead/{channel}"]
            dirs = self._dirs[channel] = [d for d in dirs if os.path.isdir(d)]
        return dirs


class _NoHolders:
    """The holders of a message whose id was made just now: none."""

    def hold(self, channel, name):
        return False

    def find(self, channel, name):
        return None


_NO_HOLDERS = _NoHolders()


def _header(message_id, channel, priority, client, received_at, legacy_id=None):
    """The first line of a stored file. Formatted by hand, as json.dumps would
    with these separators: id and channel are checked names that need no
    escaping (the caller checks them first), and the client is encoded once."""
    legacy = f',"legacy_id":{json.dumps(legacy_id)}' if legacy_id is not None else ""
    return (f'DROPR1 {{"id":"{message_id}","channel":"{channel}","priority":{priority:d},'
            f'"client":{_json_string(client)},"received_at":{float(received_at)!r}'
            f'{legacy}}}\n').encode()


@functools.lru_cache(maxsize=1024)
def _json_string(text):
    return json.dumps(text)


def read_message(path):
    """The :class:`Message` stored at ``path``; ``ValidationError`` if it is not one."""
    with open(path, "rb") as f:
        line = f.readline(HEADER_MAX)
        size = os.fstat(f.fileno()).st_size
    if not line.startswith(MAGIC) or not line.endswith(b"\n"):
        raise ValidationError(f"{path}: not a dropr message file")
    meta = json.loads(line[len(MAGIC):])
    return Message(meta["id"], meta["channel"], meta["priority"], meta["client"],
                   meta["received_at"], size - len(line), Path(path), len(line),
                   meta.get("legacy_id"))


class Store(OperatorMixin):
    """The filesystem store at ``root``. Used by receiver workers, consumers,
    the reaper and the admin commands, each in its own process."""

    def __init__(self, root, *, fsync=True, group="", clock=time.time):
        self.root = Path(root)
        self._root = str(self.root)  # the receiver's hot path joins plain strings, not Paths
        self.fsync = fsync
        self._clock = clock
        self._serial = itertools.count()  # next() is atomic: safe for the request threads
        # Read once: a Store copied into a forked child makes the same names
        # as its parent, and O_EXCL then moves it on to the next number.
        self._pid = os.getpid()
        if not (self.root / "queue").is_dir():  # a new store: marked before its folders
            self.root.mkdir(parents=True, exist_ok=True)
            store_names.mark(self.root)
        make_dirs(self.root, [self.root / sub for sub in ("tmp", "queue", "work", "done", "dead")],
                  fsync=fsync)
        if group:
            perms.share(self.root, SHARED_MODES, group, key="[receiver] group")
        # A store older than P.CLIENT@ID names may hold P.ID copies of what comes again.
        self._legacy = not store_names.marked(self._root)

    # -- receiver -----------------------------------------------------------

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
        names.check_name(channel, "channel")
        names.check_id(message_id)
        names.check_name(client, "client")
        priority = names.check_priority(priority)
        header = _header(message_id, channel, priority, client, self._clock(), legacy_id)
        with _full_is_store_full(self.root):
            fd, tmp = self._create_tmp(message_id)
            try:
                size = self._write(fd, body, header, limit)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            staged = Staged(message_id, channel, priority, size, tmp, synced=not self.fsync,
                            fd=fd, client=client)
            self._hold_or_flush(staged, batch)
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
            with _full_is_store_full(self.root):
                self._flush([staged])
                status = self._link_new(staged, _NO_HOLDERS if fresh else _Holders(self._root))
                if (status == STORED and not fresh
                        and self._placed_twice(staged, _Holders(self._root))):
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
        that may hold an earlier copy (see :class:`_Holders`) are listed once
        before the links and once after them, not for every message."""
        statuses, channels, linked = [], set(), []
        self._notice_format()
        try:
            with _full_is_store_full(self.root):
                self._flush(staged)
                before = _Holders(self._root)
                while staged:
                    message = staged.popleft()
                    linked.append(message)  # its tmp/ name goes below, whatever happens
                    statuses.append(self._link_new(message, before))
                    # A duplicate may have been linked a moment ago by another request
                    # that has not synced yet; syncing here too keeps "duplicate" durable.
                    channels.add(message.channel)
                after = _Holders(self._root)
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

    def close(self):
        """Nothing to release (the JetStream store closes its connection)."""

    def discard(self, staged):
        """Drop a :class:`Staged` message that will not be published (idempotent)."""
        _close_fd(staged)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged.file)

    def _write(self, fd, body, header, limit):
        """Write the header and ``body`` to ``fd``; the body's size. Not synced
        here: :meth:`publish` and :meth:`publish_many` flush before they link,
        the latter a whole batch at once."""
        written, pending = 0, header  # the header goes out with the first chunk: one write
        chunks = [body] if isinstance(body, (bytes, bytearray, memoryview)) else iter(
            lambda: body.read(_CHUNK), b"")
        for chunk in chunks:
            written += len(chunk)
            if limit is not None and written > limit:
                raise TooLarge(f"message is over the limit of {limit} bytes")
            _write_all(fd, pending + chunk if pending else chunk)
            pending = b""
        if pending:
            _write_all(fd, pending)
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

    def _make_dir(self, path, *, always_sync=False):
        """Make the folder ``path`` inside the store, and its missing parents. With
        fsync, the parent of each one made is synced: a new folder, and whatever
        is moved into it, survives an OS crash only once its parent is synced.
        ``always_sync``: sync the parent even if another process made it."""
        path = Path(path)
        if path.is_dir() and not always_sync:
            return
        if not path.parent.is_dir():
            self._make_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        if self.fsync:
            fsync_dir(path.parent)

    def sync(self, channels):
        """Make the entries published in ``channels`` durable (after ``sync_dir=False``)."""
        if self.fsync:
            for channel in set(channels):
                fsync_dir(self.root / "queue" / channel)
        crash_point("store.after_queue_sync")

    def free_bytes(self):
        """Bytes free for this process's writes on the store's filesystem."""
        st = os.statvfs(self._root)
        return st.f_bavail * st.f_frsize

    def free_inodes(self):
        """Inodes free for this process's files on the store's filesystem
        (``None`` where the filesystem does not count them)."""
        st = os.statvfs(self._root)
        return st.f_favail if st.f_files else None

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

    # -- consumers ----------------------------------------------------------

    def channels(self):
        """The names of the channels that have ever held a message."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(p.name for p in (self.root / "queue").iterdir() if p.is_dir())
        return []

    def count(self, channel, state="queue"):
        """How many messages ``channel`` holds in ``state`` (queue, done or dead)."""
        names.check_name(channel, "channel")
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / state / channel) as it:
            return sum(1 for e in it if _is_message(e.name))
        return 0

    def messages(self, channel, limit=None, *, state="queue"):
        """Messages of ``channel`` waiting in ``state``: by priority, then arrival."""
        names.check_name(channel, "channel")
        return self._sorted(self.root / state / channel, limit)

    def depths(self):
        """{channel: (messages waiting in queue/, when the oldest of them was made,
        in ms since the epoch, or None)} for the receiver's metrics. One listing
        per channel; the time comes from the id (a ``stat()`` only for ids dropr
        did not make: their file's mtime)."""
        out = {}
        for channel in self.channels():
            count, first, first_mtime = 0, None, None
            with contextlib.suppress(FileNotFoundError), \
                    os.scandir(self.root / "queue" / channel) as it:
                for e in it:
                    if not _is_message(e.name):
                        continue
                    count += 1
                    mid = id_of(e.name)
                    if len(mid) == 26:  # a ULID: ids sort by creation time
                        first = mid if first is None or mid < first else first
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        mtime = int(e.stat().st_mtime * 1000)
                        first_mtime = mtime if first_mtime is None else min(first_mtime, mtime)
            made = [t for t in (first and ids.timestamp_ms(first), first_mtime) if t]
            out[channel] = (count, min(made) if made else None)
        return out

    def _sorted(self, directory, limit):
        out = []
        for path in self._listing(directory)[:limit]:
            with contextlib.suppress(FileNotFoundError):
                out.append(read_message(path))
        return out

    def _listing(self, directory):
        """The message paths in ``directory``: by priority, then arrival."""
        keyed = []
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
            for e in it:
                if _is_message(e.name):
                    prio, _, mid = e.name.partition(".")
                    with contextlib.suppress(FileNotFoundError):
                        keyed.append((prio, e.stat().st_mtime_ns, mid, e.path))
        keyed.sort()
        return [Path(path) for *_, path in keyed]

    def get(self, channel, message_id, *, client=None):
        """The message ``message_id`` of ``channel`` (of ``client``, if given),
        wherever it is; ``NotFound`` if absent, ``ValidationError`` if several
        clients sent that id and ``client`` does not say which."""
        names.check_name(channel, "channel")
        names.check_id(message_id)
        found = {}
        for directory in self._dirs_of(channel):
            with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
                for e in it:
                    if _is_message(e.name) and id_of(e.name) == message_id:
                        with contextlib.suppress(FileNotFoundError):
                            m = read_message(e.path)
                            if client is None or m.client == client:
                                found.setdefault(m.client, m)
        if len(found) > 1:
            raise ValidationError(f"message {message_id} of channel {channel} came from "
                                  f"several clients ({', '.join(sorted(found))}): name one")
        if not found:
            whose = f" from client {client}" if client is not None else ""
            raise NotFound(f"no message {message_id}{whose} in channel {channel}")
        return next(iter(found.values()))

    def _dirs_of(self, channel):
        yield self.root / "queue" / channel
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / "work") as it:
            for consumer in it:
                yield Path(consumer.path) / channel
        yield self.root / "done" / channel
        yield self.root / "dead" / channel

    def claim(self, channel, consumer, limit=1):
        """Move up to ``limit`` messages of ``channel`` into ``consumer``'s work folder,
        skipping those whose :class:`Failures` say not yet."""
        names.check_name(channel, "channel")
        names.check_name(consumer, "consumer")
        if self.paused(channel):
            return []  # `dropr store pause`: uploads go on, consumers wait
        work = self.root / "work" / consumer / channel
        self._make_dir(work)
        now, failing = self._clock(), self._names(self.root / "retry" / channel)
        claimed = []
        for path in self._listing(self.root / "queue" / channel):
            if len(claimed) >= limit:
                break
            if path.name in failing and self._read_failures(channel, path.name).not_before > now:
                continue
            if self._left_behind(channel, path):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, work / path.name)  # another consumer may have won it
                claimed.append(read_message(work / path.name))
        return claimed

    def _left_behind(self, channel, path):
        """True (and the name removed) if ``path`` in ``queue/`` is the very file
        that is in ``done/`` or ``dead/`` too: an OS crash kept a synced move
        (an ack, a burial) but not the unsynced claim before it, or not the
        removal of its old name (see :meth:`_move`)."""
        for state in ("done", "dead"):
            with contextlib.suppress(FileNotFoundError):
                if os.path.samefile(path, self.root / state / channel / path.name):
                    os.unlink(path)
                    return True
        return False

    def ack(self, message):
        """Move a message (waiting or claimed) to ``done/<channel>/``."""
        self._move(message, self.root / "done" / message.channel)
        self._settle(message.channel, message.path.name, dead=False)

    def release(self, message):
        """Give a claimed message back to ``queue/<channel>/``."""
        self._move(message, self.root / "queue" / message.channel)

    def bury(self, message, failures=None):
        """Move a message to ``dead/<channel>/`` for the operator, with its last
        :class:`Failures` beside it as ``P.ID.reason``."""
        if failures is not None:
            self._write_failures(message, failures)
        self._move(message, self.root / "dead" / message.channel)
        self._settle(message.channel, message.path.name, dead=True)

    def retry(self, message, failures):
        """Record ``failures`` of a claimed message, then give it back to
        ``queue/<channel>/``; claims skip it until ``failures.not_before``."""
        self._write_failures(message, failures)
        self.release(message)

    def failures(self, message):
        """The :class:`Failures` recorded for ``message`` (waiting, or dead)."""
        return self._read_failures(message.channel, message.path.name, dead=True)

    def _read_failures(self, channel, name, *, dead=False):
        paths = [self.root / "retry" / channel / name]
        if dead:
            paths.append(self.root / "dead" / channel / (name + REASON_SUFFIX))
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                return Failures.decode(path.read_bytes())
        return Failures()

    def _names(self, directory):
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
            return {e.name for e in it}
        return set()

    def _write_failures(self, message, failures):
        directory = self.root / "retry" / message.channel
        self._make_dir(directory)
        tmp = self.root / "tmp" / f".retry-{secrets.token_hex(6)}"
        with _full_is_store_full(self.root):
            with open(tmp, "wb", opener=_private) as f:
                f.write(failures.encode())
                if self.fsync:
                    f.flush()  # out of the buffer first, or the fsync finds nothing to sync
                    os.fsync(f.fileno())
            os.replace(tmp, directory / message.path.name)
        if self.fsync:
            fsync_dir(directory)

    def _settle(self, channel, name, *, dead):
        """A message reached done/ or dead/: drop its failures, or keep them as its reason."""
        state = self.root / "retry" / channel / name
        with contextlib.suppress(FileNotFoundError):
            if dead:
                os.rename(state, self.root / "dead" / channel / (name + REASON_SUFFIX))
            else:
                os.unlink(state)

    def tidy_failures(self, channel):
        """Settle failures whose message reached done/ or dead/ while a consumer
        died between the two renames; returns how many."""
        settled = 0
        for name in self._names(self.root / "retry" / channel):
            for state in ("done", "dead"):
                if os.path.lexists(self.root / state / channel / name):
                    self._settle(channel, name, dead=state == "dead")
                    settled += 1
        return settled

    def open_work(self, consumer):
        """Lock ``work/<consumer>/`` for this process and return what an earlier
        consumer of this name left there (it died) to ``queue/``. Returns a
        :class:`WorkDir`; ``AlreadyRunning`` if a live process holds it."""
        names.check_name(consumer, "consumer")
        path = self.root / "work" / consumer
        self._make_dir(path)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"consumer {consumer} is already running "
                                 f"(another process holds {path / LOCK})") from None
        work = WorkDir(consumer, path, fd)
        work.recovered = self.unclaim(work)
        return work

    def unclaim(self, work):
        """Give every message in a locked :class:`WorkDir` back to ``queue/``;
        returns how many."""
        moved = 0
        with os.scandir(work.path) as channels:
            for chan in [c for c in channels if c.is_dir()]:
                queue = self.root / "queue" / chan.name
                self._make_dir(queue)
                returned = sum(self._unclaim_one(path, queue) for path in self._listing(chan.path))
                if returned and self.fsync:
                    fsync_dir(queue)
                moved += returned
        return moved

    def _unclaim_one(self, path, queue):
        """Return one claimed message to ``queue``: 1 if moved. An OS crash may
        have kept a move out of ``work/`` under both names (see :meth:`_move`):
        then the ``work/`` name is dropped."""
        channel = queue.name
        for state in ("done", "dead", "queue"):
            with contextlib.suppress(FileNotFoundError):
                if os.path.samefile(path, self.root / state / channel / path.name):
                    os.unlink(path)
                    return 0
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, queue / path.name)
            return 1
        return 0

    def _move(self, message, directory):
        """Rename ``message`` into ``directory``; with fsync, sync the destination.
        The source is not synced (nor is a claim): after an OS crash the message
        is under its new name, or, on a filesystem that persists a rename's two
        halves apart (btrfs can), under both. Both names are one file, and the
        stale one is dropped by the consumer's start (:meth:`unclaim`, for a
        ``work/`` name) or by the next claim (for a ``queue/`` name); never under
        neither. A sync of the source, and of every claim, would close that
        window at the price of three more disk flushes per message."""
        self._make_dir(directory)
        try:
            os.rename(message.path, directory / message.path.name)
        except FileNotFoundError:
            raise NotFound(f"message {message.id} is no longer at {message.path}") from None
        if self.fsync:
            fsync_dir(directory)

    # -- reaper ---------------------------------------------------------------

    def expire_done(self, retention, *, now=None):
        """Unlink ``done/`` messages acknowledged more than ``retention`` s ago."""
        limit = (self._clock() if now is None else now) - retention
        removed = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / "done") as chans:
            for chan in chans:
                if chan.is_dir(follow_symlinks=False):
                    removed += _unlink_older(chan.path, "st_ctime", limit)
        return removed

    def remove_stale_tmp(self, max_age, *, now=None):
        """Unlink ``tmp/`` files older than ``max_age`` s (uploads cut off by a crash)."""
        limit = (self._clock() if now is None else now) - max_age
        return _unlink_older(self.root / "tmp", "st_mtime", limit)


def _unlink_older(directory, field, limit):
    """Unlink the files in ``directory`` whose ``field`` (a stat time) is before
    ``limit``; returns how many. Run by the reaper."""
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
        for e in it:
            with contextlib.suppress(FileNotFoundError):
                if getattr(e.stat(), field) < limit:
                    os.unlink(e.path)
                    removed += 1
                    crash_point("reaper.after_store_unlink")
    return removed
