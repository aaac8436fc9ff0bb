"""The consumers' side of the files store: listing, claiming into
``work/<consumer>/``, and settling (ack into ``done/``, release and retry back
into ``queue/``, bury into ``dead/``), each one rename; a consumer's failures
wait in ``retry/``. Mixed into :class:`dropr.store.files.Store`; runs in
consumer processes, ``dropr`` commands and receiver workers (reads).
"""

import contextlib
import os
import secrets
from pathlib import Path

from dropr import ids, names
from dropr.errors import AlreadyRunning, NotFound, ValidationError
from dropr.fs import LOCK, LockedDir, fsync_dir, lock_file
from dropr.store import Failures
from dropr.store.files.format import REASON_SUFFIX, id_of, read_message
from dropr.store.files.format import is_message as _is_message
from dropr.store.files.intake import full_is_store_full


class WorkDir(LockedDir):
    """A consumer's folder ``work/<consumer>/``, ``flock``-ed for as long as the
    consumer process lives (see :meth:`Store.open_work`); once closed, a later
    consumer of that name may take over."""

    def __init__(self, consumer, path, fd):
        super().__init__(path, fd)
        self.consumer = consumer


def _private(path, flags):
    """An ``opener`` for ``open()``: files of the store are 0640, as messages."""
    return os.open(path, flags, 0o640)


class ClaimsMixin:
    """Reading, claiming and settling in the files :class:`~dropr.store.files.Store`."""

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
        with full_is_store_full(self.root):
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
        fd = lock_file(path / LOCK)
        if fd is None:
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
