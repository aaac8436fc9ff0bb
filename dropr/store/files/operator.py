"""The files store's side of the operator's toolbox: pause and resume a
channel, the dead letters and their requeue, purge, per-channel figures, and
where one message is now. Mixed into :class:`dropr.store.files.Store`, which owns the
layout; this adds one folder to it:

    paused/<channel>   present while the channel's consumers are paused

Runs in consumers' and the ``dropr`` command's processes, and in receiver
workers (for ``GET /v1/channels/{channel}/messages/{id}``).
"""

import contextlib
import os

from dropr import names
from dropr.errors import NotFound
from dropr.faults import crash_point
from dropr.fs import fsync_dir
from dropr.store import ACKED, CLAIMED, DEAD, QUEUED
from dropr.store.files.format import REASON_SUFFIX, id_of, read_message
from dropr.store.files.format import is_message as _is_message


class OperatorMixin:
    """Operator verbs of the files :class:`~dropr.store.Store`."""

    # -- pause ------------------------------------------------------------------

    def pause(self, channel):
        """Consumers take nothing from ``channel`` until :meth:`resume`; uploads
        keep arriving. Lasts across restarts (a file in ``paused/``)."""
        names.check_name(channel, "channel")
        folder = self.root / "paused"
        folder.mkdir(exist_ok=True)
        os.close(os.open(folder / channel, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))
        if self.fsync:
            fsync_dir(folder)

    def resume(self, channel):
        """Undo :meth:`pause` (idempotent)."""
        names.check_name(channel, "channel")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / "paused" / channel)
            if self.fsync:
                fsync_dir(self.root / "paused")

    def paused(self, channel):
        """True while ``channel`` is paused."""
        return os.path.exists(f"{self._root}/paused/{channel}")

    def paused_channels(self):
        """The channels paused now."""
        try:
            return set(os.listdir(self.root / "paused"))
        except FileNotFoundError:
            return set()

    # -- figures ----------------------------------------------------------------

    def stats(self, channel, *, now=None):
        """``queued``, ``claimed``, ``done``, ``dead``, ``oldest_age`` (seconds the
        oldest queued message has waited; 0 when none) and ``paused``."""
        names.check_name(channel, "channel")
        now = self._clock() if now is None else now
        oldest = None
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / "queue" / channel) as it:
            for e in it:
                if _is_message(e.name):
                    with contextlib.suppress(FileNotFoundError):
                        mtime = e.stat(follow_symlinks=False).st_mtime
                        oldest = mtime if oldest is None else min(oldest, mtime)
        return {"channel": channel, "queued": self.count(channel),
                "claimed": sum(_count(d) for d in self._work_dirs(channel)),
                "done": self.count(channel, "done"), "dead": self.count(channel, "dead"),
                "oldest_age": max(0.0, now - oldest) if oldest is not None else 0.0,
                "paused": self.paused(channel)}

    def _work_dirs(self, channel):
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / "work") as it:
            return [os.path.join(c.path, channel) for c in it if c.is_dir(follow_symlinks=False)]
        return []

    # -- dead letters -------------------------------------------------------------

    def dead_messages(self, channel):
        """``[(message, reason)]`` of ``dead/<channel>/``, oldest first."""
        out = []
        for message in self.messages(channel, state="dead"):
            failures = self._read_failures(channel, message.path.name, dead=True)
            out.append((message, failures.reason))
        return out

    def requeue(self, message):
        """A dead message back into ``queue/<channel>/``, its attempts reset (its
        reason goes). ``NotFound`` if it is no longer dead."""
        self._move(message, self.root / "queue" / message.channel)
        crash_point("store.after_requeue")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / "dead" / message.channel / (message.path.name + REASON_SUFFIX))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / "retry" / message.channel / message.path.name)

    # -- purge ----------------------------------------------------------------

    def purge(self, channel, state, *, older_than=None, dry_run=False, now=None):
        """Remove the messages of ``channel`` in ``state`` (queue, done or dead)
        that arrived more than ``older_than`` s ago (all if None); how many."""
        names.check_name(channel, "channel")
        limit = None if older_than is None else (
            (self._clock() if now is None else now) - older_than)
        removed = 0
        for message in self.messages(channel, state=state):
            if limit is not None and message.received_at > limit:
                continue
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(message.path)
                    removed += 1
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(message.path) + REASON_SUFFIX)
            else:
                removed += 1
        return removed

    # -- trace ------------------------------------------------------------------

    def locate(self, channel, message_id, *, client=None):
        """Where message ``message_id`` of ``channel`` (sent by ``client``, if
        given) is: a dict with ``state`` (queued, claimed, acked, dead),
        ``consumer`` (claimed), ``reason`` (dead) and the message's own fields.
        ``NotFound`` if it is nowhere. One listing per folder: for an operator."""
        names.check_name(channel, "channel")
        names.check_id(message_id)
        places = [(QUEUED, None, self.root / "queue" / channel)]
        places += [(CLAIMED, os.path.basename(os.path.dirname(d)), d)
                   for d in self._work_dirs(channel)]
        places += [(ACKED, None, self.root / "done" / channel),
                   (DEAD, None, self.root / "dead" / channel)]
        for state, consumer, directory in places:
            with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
                for e in it:
                    if not _is_message(e.name) or id_of(e.name) != message_id:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        found = self._where(state, consumer, e.path, channel)
                        if client is None or found["client"] == client:
                            return found
        raise NotFound(f"no message {message_id} in channel {channel}")

    def _where(self, state, consumer, path, channel):
        message = read_message(path)
        found = {"id": message.id, "channel": message.channel, "state": state,
                 "priority": message.priority, "client": message.client,
                 "received_at": message.received_at, "size": message.size,
                 "consumer": consumer, "reason": None,
                 "acked_at": os.stat(path).st_ctime if state == ACKED else None}
        if state == DEAD:
            found["reason"] = self._read_failures(channel, os.path.basename(path),
                                                  dead=True).reason or None
        return found

    def locate_anywhere(self, message_id, *, client=None):
        """:meth:`locate` in whichever channel holds ``message_id``."""
        for channel in self.channels():
            with contextlib.suppress(NotFound):
                return self.locate(channel, message_id, client=client)
        raise NotFound(f"no message {message_id} in any channel")


def _count(directory):
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
        return sum(1 for e in it if _is_message(e.name))
    return 0

