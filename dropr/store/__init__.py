"""The server store: the receiver writes it, consumers read it.

Two backends implement one interface, :class:`Backend`: the filesystem
store (:mod:`dropr.store.files`, :class:`Store`, the default) and a NATS
JetStream stream (:mod:`dropr.store.jetstream`). :func:`open_store` gives the
one a config's ``[store] backend`` names. This module holds what both share:
the interface, the words a publish answers (:data:`STORED`,
:data:`DUPLICATE`), the states a message is found in (:data:`QUEUED`,
:data:`CLAIMED`, :data:`ACKED`, :data:`DEAD`), a message's recorded
:class:`Failures`, and :class:`Message`.

Every backend keeps these promises, whatever process dies where:

- A message is stored at most once per channel, client and id while an
  earlier copy is still known (the files store: anywhere in the store; the
  stream: within its duplicate window); a re-send is answered "duplicate".
- "stored" and "duplicate" are said only for what is durable: a crash after
  the answer loses nothing the answer promised.
- A claimed message that its consumer neither acknowledged nor gave back
  returns to the queue when that consumer is gone (the files store: when the
  next consumer of the same name opens its work folder; the stream: after
  ``ack_wait``). A message is delivered at least once, never lost.
"""

import dataclasses
import json
import time
import typing
from pathlib import Path

# What a publish answers for a message: it is now stored, or an earlier copy
# was (the upload protocol's words).
from dropr.results import DUPLICATE, STORED

#: The states of a stored message, as trace and the HTTP API name them.
QUEUED, CLAIMED, ACKED, DEAD = "queued", "claimed", "acked", "dead"


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


class Backend(typing.Protocol):
    """The interface of a server store, as the receiver, ``dropr consume``,
    ``dropr store`` and :func:`open_store` readers use it. Each process (a
    receiver worker, a consumer, an admin command) opens its own.

    "After a crash" below means: the process dies on any line (``kill -9``),
    or the machine loses power, once the call returned or while it ran.
    Any method may raise ``StoreUnavailable`` where the backend cannot be
    reached now (JetStream: no server, a timeout, an election); the receiver
    answers it 503, and the sender tries again later."""

    # -- receiver -------------------------------------------------------------

    def stage(self, channel, message_id, body, *, priority, client, limit=None, batch=None,
              legacy_id=None):
        """Read ``body`` (bytes or an object with ``read(n)``) into the store's
        scratch space and return it staged: no consumer can see it, and it is
        not known as a copy of anything yet. Hand it to :meth:`publish` or
        :meth:`publish_many`, or :meth:`discard` it. ``batch`` is the deque of
        messages staged before it that will be published with it.

        ``ValidationError`` for a bad channel, id, client or priority,
        ``TooLarge`` past ``limit`` bytes (or what the backend can hold),
        ``StoreFull`` on a full disk; then nothing is left behind.
        After a crash: a staged body is a scratch file, never a message; the
        reaper (files) or the process's end (JetStream) removes it."""

    def publish(self, staged, *, sync_dir=True, fresh=False):
        """Make one staged message visible to consumers unless an earlier copy
        (same channel, client and id) is known: :data:`STORED` or
        :data:`DUPLICATE`. The staged body is gone afterwards, whatever happens.
        With ``sync_dir=False`` (files) the caller calls :meth:`sync` for the
        channel before it answers. ``fresh``: the receiver made the id itself
        just now, so no earlier copy can exist (the files store then looks
        only at the queue; the stream checks every id the same way).

        After a crash: once it returned (and :meth:`sync` ran, where asked),
        the answer holds: a "stored" message survives, and a "duplicate" one's
        earlier copy does. If it died inside, the message is stored once or
        not at all; never twice."""

    def publish_many(self, staged):
        """Publish the staged messages of the deque ``staged`` (emptying it),
        durable together at the end; their answers, in order. What is left in
        ``staged`` after an error was not published (the caller discards it).
        After a crash: as :meth:`publish`, for each message; the answers are
        all durable once it returned."""

    def discard(self, staged):
        """Drop a staged message that will not be published (idempotent)."""

    def sync(self, channels):
        """Make what was published into ``channels`` with ``sync_dir=False``
        durable (a no-op where every publish is already)."""

    def free_bytes(self):
        """Bytes free where this process stages bodies (the receiver's floor)."""

    def free_inodes(self):
        """Inodes free there (``None`` where the filesystem does not count them)."""

    def check_writable(self):
        """The store can take messages now (readiness); raises if not. Leaves
        nothing behind that the reaper would not remove."""

    def close(self):
        """Release the connection, if any (optional: a process may just exit)."""

    # -- reading ----------------------------------------------------------------

    def channels(self):
        """The names of the channels that hold (or held) messages, sorted."""

    def count(self, channel, state="queue"):
        """How many messages ``channel`` holds in ``state`` (queue, done or dead)."""

    def messages(self, channel, limit=None, *, state="queue"):
        """Up to ``limit`` :class:`Message` objects of ``channel`` in ``state``:
        by priority, then arrival. Reading changes nothing."""

    def depths(self):
        """{channel: (messages waiting, when the oldest was made in ms since the
        epoch or None)}, for the receiver's metrics."""

    def get(self, channel, message_id, *, client=None):
        """The message ``message_id`` of ``channel`` (of ``client``, if given);
        ``NotFound`` if absent, ``ValidationError`` if several clients sent
        that id and ``client`` does not say which."""

    # -- consumers ----------------------------------------------------------------

    def open_work(self, consumer):
        """Begin consuming as ``consumer`` in this process: an object with
        ``consumer``, ``recovered`` (messages an earlier consumer of that name
        left claimed and that are now back in the queue) and ``close()``.
        ``AlreadyRunning`` where a live process consumes under that name (files).
        After a crash of a consumer: the next ``open_work`` of its name (files)
        or ``ack_wait`` (JetStream) gives back what it had claimed."""

    def claim(self, channel, consumer, limit=1):
        """Up to ``limit`` messages of ``channel`` for ``consumer``, priority 0
        first, skipping those whose :class:`Failures` say not yet, and none
        while the channel is paused. A message is claimed by one consumer at a
        time. After a crash: a claimed message is claimed or back in the
        queue, never gone (see :meth:`open_work`)."""

    def ack(self, message):
        """Done with ``message``: out of the queue for good (files: into
        ``done/`` until the reaper expires it). ``NotFound`` if it moved on.
        After a crash: once it returned the message is never delivered again;
        if it died inside, the message is acked or still claimed."""

    def release(self, message):
        """Give a claimed message back to the queue at once."""

    def retry(self, message, failures):
        """Record ``failures`` of a claimed message and give it back; no claim
        takes it before ``failures.not_before``. After a crash: the message is
        claimed or back, with the new failures or the old."""

    def bury(self, message, failures=None):
        """Give a message up: out of the queue into the dead letters for the
        operator, with ``failures`` as its reason. After a crash: the message
        is in the queue (or claimed) or dead, not both for good (a JetStream
        dead copy made twice is one message by its id)."""

    def failures(self, message):
        """The :class:`Failures` recorded for ``message`` (zeros if none)."""

    def tidy_failures(self, channel):
        """Settle the failures of messages a consumer acknowledged or buried
        while it died between the two steps; how many (0 where there are no
        separate failure records)."""

    def unclaim(self, work):
        """Give every message claimed through ``work`` (from :meth:`open_work`)
        back to the queue; how many."""

    # -- operator -----------------------------------------------------------------

    def pause(self, channel):
        """No claim takes anything from ``channel`` until :meth:`resume`;
        uploads keep arriving. Lasts across restarts and crashes."""

    def resume(self, channel):
        """Undo :meth:`pause` (idempotent)."""

    def paused(self, channel):
        """True while ``channel`` is paused."""

    def stats(self, channel, *, now=None):
        """A dict of ``channel``, ``queued``, ``claimed``, ``done``, ``dead``,
        ``oldest_age`` (seconds) and ``paused``."""

    def dead_messages(self, channel):
        """``[(message, reason)]`` of the channel's dead letters, oldest first."""

    def requeue(self, message):
        """A dead message back into the queue with its attempts reset;
        ``NotFound`` if it is no longer dead. After a crash: the message is
        queued or still dead (files: a reason may stay behind in ``dead/``
        beside no message, harmless; JetStream: possibly both, and requeueing
        the dead copy again is a duplicate of the first requeue)."""

    def purge(self, channel, state, *, older_than=None, dry_run=False, now=None):
        """Remove the messages of ``channel`` in ``state`` that arrived more
        than ``older_than`` s ago (all if None); how many (would go, with
        ``dry_run``)."""

    def locate(self, channel, message_id, *, client=None):
        """Where a message is: a dict with ``state`` (:data:`QUEUED`,
        :data:`CLAIMED`, :data:`ACKED`, :data:`DEAD`), ``consumer``,
        ``reason`` and the message's own fields; ``NotFound`` if nowhere."""

    def locate_anywhere(self, message_id, *, client=None):
        """:meth:`locate` in whichever channel holds ``message_id``."""


def open_store(config, *, clock=time.time):
    """The server store ``config`` names in ``[store] backend``: the filesystem
    :class:`Store` at ``[receiver] store``, or a
    :class:`~dropr.store.jetstream.JetStreamStore`."""
    if config.store.backend == "jetstream":
        from dropr.store.jetstream import JetStreamStore

        config.warn_readable_secrets(config.store)
        return JetStreamStore(config.store, scratch=config.receiver.store, clock=clock,
                              where=f"{config.path}: [store]")
    return Store(config.receiver.store, fsync=config.receiver.fsync, group=config.receiver.group,
                 clock=clock)


# Last: the files backend imports the words and classes above.
from dropr.store.files import Store  # noqa: E402

__all__ = ["ACKED", "CLAIMED", "DEAD", "DUPLICATE", "QUEUED", "STORED", "Backend", "Failures",
           "Message", "Store", "open_store"]
