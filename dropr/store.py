"""The server store: the receiver writes it, consumers read it.

    tmp/                         bodies being received
    queue/<channel>/P.ID         stored, waiting for a consumer
    work/<consumer>/<channel>/   claimed by a consumer
    done/<channel>/              acknowledged; expired by the reaper
    dead/<channel>/              given up by a consumer (``dropr consume``)

This module alone knows the layout. A stored file is a one-line header
(``DROPR1 {json}\\n`` with id, channel, priority, client and received_at)
followed by the message body byte for byte, so a message and its metadata
appear together or not at all. A message is published by ``os.link`` of the
finished, fsync-ed ``tmp/`` file into ``queue/<channel>/``: the link fails if
the name exists, so two uploads of the same id cannot both win.

The interface the receiver and consumers use (``put``, ``channels``,
``count``, ``messages``, ``claim``, ``ack``) is small on purpose, so that a
store on another engine can stand beside this one.
"""

import contextlib
import dataclasses
import errno
import json
import os
import secrets
import time
from pathlib import Path

from dropr import names
from dropr.errors import NotFound, StoreFull, TooLarge, ValidationError
from dropr.spool.spool import fsync_dir

MAGIC = b"DROPR1 "
HEADER_MAX = 4096
STORED, DUPLICATE = "stored", "duplicate"
_CHUNK = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)


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


def _header(message_id, channel, priority, client, received_at):
    meta = {"id": message_id, "channel": channel, "priority": priority,
            "client": client, "received_at": received_at}
    return MAGIC + json.dumps(meta, separators=(",", ":")).encode() + b"\n"


def read_message(path):
    """The :class:`Message` stored at ``path``; ``ValidationError`` if it is not one."""
    with open(path, "rb") as f:
        line = f.readline(HEADER_MAX)
        size = os.fstat(f.fileno()).st_size
    if not line.startswith(MAGIC) or not line.endswith(b"\n"):
        raise ValidationError(f"{path}: not a dropr message file")
    meta = json.loads(line[len(MAGIC):])
    return Message(meta["id"], meta["channel"], meta["priority"], meta["client"],
                   meta["received_at"], size - len(line), Path(path), len(line))


class Store:
    """The filesystem store at ``root``. Used by receiver workers, consumers,
    the reaper and the admin commands, each in its own process."""

    def __init__(self, root, *, fsync=True, clock=time.time):
        self.root = Path(root)
        self.fsync = fsync
        self._clock = clock
        for sub in ("tmp", "queue", "work", "done", "dead"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- receiver -----------------------------------------------------------

    def put(self, channel, message_id, body, *, priority, client, limit=None, sync_dir=True):
        """Store ``body`` (bytes or an object with ``read(n)``) unless ``message_id``
        is already stored; returns ``"stored"`` or ``"duplicate"``.

        Raises ``TooLarge`` past ``limit`` bytes and ``StoreFull`` on a full disk;
        either way nothing is left behind. With ``sync_dir=False`` the caller
        must call :meth:`sync` for the channel before answering."""
        names.check_name(channel, "channel")
        names.check_id(message_id)
        priority = names.check_priority(priority)
        tmp = self.root / "tmp" / f"{message_id}.{secrets.token_hex(6)}"
        try:
            self._write(tmp, body, _header(message_id, channel, priority, client, self._clock()), limit)
            return self._publish(tmp, channel, f"{priority}.{message_id}", sync_dir)
        except OSError as e:
            if e.errno in _FULL:
                raise StoreFull(f"store {self.root} is full: {e.strerror}") from None
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _write(self, tmp, body, header, limit):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, header)
            written = 0
            chunks = [body] if isinstance(body, (bytes, bytearray, memoryview)) else iter(
                lambda: body.read(_CHUNK), b"")
            for chunk in chunks:
                written += len(chunk)
                if limit is not None and written > limit:
                    raise TooLarge(f"message is over the limit of {limit} bytes")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _publish(self, tmp, channel, name, sync_dir):
        qdir = self.root / "queue" / channel
        dest = qdir / name
        try:
            os.link(tmp, dest)
        except FileNotFoundError:
            qdir.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                fsync_dir(qdir.parent)
            return self._publish(tmp, channel, name, sync_dir)
        except FileExistsError:
            return DUPLICATE
        # Checked after linking, in the order a message moves (work, then done),
        # so that a copy moving forward concurrently is still seen.
        if self._in_work_or_done(channel, name):
            ino = os.stat(tmp).st_ino
            with contextlib.suppress(FileNotFoundError):
                if os.stat(dest).st_ino == ino:
                    os.unlink(dest)
            return DUPLICATE
        if sync_dir and self.fsync:
            fsync_dir(qdir)
        return STORED

    def _in_work_or_done(self, channel, name):
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / "work") as it:
            for consumer in it:
                if os.path.lexists(os.path.join(consumer.path, channel, name)):
                    return True
        return os.path.lexists(self.root / "done" / channel / name)

    def sync(self, channels):
        """Make the entries published in ``channels`` durable (after ``sync_dir=False``)."""
        if self.fsync:
            for channel in set(channels):
                fsync_dir(self.root / "queue" / channel)

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
            return sum(1 for e in it if not e.name.startswith("."))
        return 0

    def messages(self, channel, limit=None, *, state="queue"):
        """Messages of ``channel`` waiting in ``state``: by priority, then arrival."""
        names.check_name(channel, "channel")
        return self._sorted(self.root / state / channel, limit)

    def _sorted(self, directory, limit):
        keyed = []
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
            for e in it:
                prio, _, mid = e.name.partition(".")
                with contextlib.suppress(FileNotFoundError):
                    keyed.append((prio, e.stat().st_mtime_ns, mid, e.path))
        keyed.sort()
        out = []
        for *_, path in keyed[:limit]:
            with contextlib.suppress(FileNotFoundError):
                out.append(read_message(path))
        return out

    def get(self, channel, message_id):
        """The message ``message_id`` of ``channel``, wherever it is; ``NotFound`` if absent."""
        names.check_name(channel, "channel")
        names.check_id(message_id)
        for directory in self._dirs_of(channel):
            with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
                for e in it:
                    if e.name.partition(".")[2] == message_id:
                        return read_message(e.path)
        raise NotFound(f"no message {message_id} in channel {channel}")

    def _dirs_of(self, channel):
        yield self.root / "queue" / channel
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / "work") as it:
            for consumer in it:
                yield Path(consumer.path) / channel
        yield self.root / "done" / channel
        yield self.root / "dead" / channel

    def claim(self, channel, consumer, limit=1):
        """Move up to ``limit`` messages of ``channel`` into ``consumer``'s work folder."""
        names.check_name(consumer, "consumer")
        work = self.root / "work" / consumer / channel
        work.mkdir(parents=True, exist_ok=True)
        claimed = []
        for m in self.messages(channel):
            if len(claimed) >= limit:
                break
            with contextlib.suppress(FileNotFoundError):
                os.rename(m.path, work / m.path.name)
                claimed.append(dataclasses.replace(m, path=work / m.path.name))
        return claimed

    def ack(self, message):
        """Move a message (waiting or claimed) to ``done/<channel>/``."""
        self._move(message, self.root / "done" / message.channel)

    def release(self, message):
        """Give a claimed message back to ``queue/<channel>/``."""
        self._move(message, self.root / "queue" / message.channel)

    def bury(self, message):
        """Move a message to ``dead/<channel>/`` for the operator."""
        self._move(message, self.root / "dead" / message.channel)

    def _move(self, message, directory):
        directory.mkdir(parents=True, exist_ok=True)
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
                with os.scandir(chan.path) as it:
                    for e in it:
                        with contextlib.suppress(FileNotFoundError):
                            if e.stat().st_ctime < limit:
                                os.unlink(e.path)
                                removed += 1
        return removed

    def remove_stale_tmp(self, max_age, *, now=None):
        """Unlink ``tmp/`` files older than ``max_age`` s (uploads cut off by a crash)."""
        limit = (self._clock() if now is None else now) - max_age
        removed = 0
        with os.scandir(self.root / "tmp") as it:
            for e in it:
                with contextlib.suppress(FileNotFoundError):
                    if e.stat().st_mtime < limit:
                        os.unlink(e.path)
                        removed += 1
        return removed
