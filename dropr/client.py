"""The producer API: ``Client(config).put(data, peer) -> id``.

``put()`` writes the message into the local spool and returns its id at once,
whether or not the network is up; a sender delivers it later. With spool
limits configured (``[client] max_messages``, ``max_bytes``) it refuses, or
waits for room, while the backlog is at the limit.
"""

import math
import time

from dropr import config as config_mod
from dropr import names
from dropr.errors import QueueFull, ValidationError
from dropr.ids import IdGenerator
from dropr.ipc import Notices
from dropr.spool import Spool, SpoolName, spool_name

#: Seconds between looks at the backlog while put() waits for room.
POLL = 0.05
#: Seconds between two attempts to open the wake queue while it is missing
#: (no daemon running): opening costs more than the put itself.
REOPEN = 0.25
#: How many (peer, channel) pairs a Client remembers as checked.
_CHECKED_MAX = 1024


class Backlog:
    """The spool's backlog (``queue/`` + ``deferred/``) against its limits, as one
    producer sees it. Lives in the producer's process, inside its :class:`Client`.

    Counting is O(n) in the backlog (a listing of two directories, plus a
    ``stat()`` per file when ``max_bytes`` is set), too dear for every put on a
    deep queue. So a count is reused for ``recount`` seconds, plus what this
    producer put since. A refusal is always judged on a fresh count, so no put
    is refused because senders drained the queue meanwhile; an admission may
    rest on a count up to ``recount`` s old, so several producers together can
    overshoot a limit by what the others put in that time. At the limit every
    attempt counts afresh, which is the price of refusing only on the truth."""

    def __init__(self, spool, *, max_messages, max_bytes, recount=0.5, clock=time.monotonic):
        self.spool = spool
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.recount = recount
        self._clock = clock
        self._counted_at = None
        self._messages = self._bytes = 0

    @property
    def limited(self):
        """True when a limit is set at all."""
        return bool(self.max_messages or self.max_bytes)

    def has_room(self):
        """True if one more message may be put now."""
        if not self.limited:
            return True
        fresh = self._counted_at is None or self._clock() - self._counted_at >= self.recount
        if fresh:
            self._count()
        if self._under():
            return True
        if not fresh:
            self._count()
        return self._under()

    def added(self, size):
        """This producer put one message of ``size`` bytes (0 if unknown)."""
        self._messages += 1
        self._bytes += size

    def describe(self):
        """The last count against the limits, for the QueueFull message."""
        parts = []
        if self.max_messages:
            parts.append(f"{self._messages} messages (max_messages = {self.max_messages})")
        if self.max_bytes:
            parts.append(f"{self._bytes} bytes (max_bytes = {self.max_bytes})")
        return " and ".join(parts)

    def _count(self):
        self._messages, self._bytes = self.spool.backlog(with_bytes=bool(self.max_bytes))
        self._counted_at = self._clock()

    def _under(self):
        return ((not self.max_messages or self._messages < self.max_messages)
                and (not self.max_bytes or self._bytes < self.max_bytes))


def _size_of(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    return 0  # a path or a stream: known only once written; the next count sees it


class Client:
    """A producer bound to one config (a ``Config`` or the path of a ``dropr.toml``).

    Cheap to make; keep one per process. Not thread-safe (use one per thread)."""

    def __init__(self, config=None, *, new_id=None, clock=time.time, sleep=time.sleep,
                 monotonic=time.monotonic):
        if config is None or not isinstance(config, config_mod.Config):
            config = config_mod.load(config)
        self.config = config
        self.spool = Spool(config.client.spool, fsync=config.client.fsync,
                           group=config.client.group, clock=clock).create(producer=True)
        self.backlog = Backlog(self.spool, max_messages=config.client.max_messages,
                               max_bytes=config.client.max_bytes, clock=monotonic)
        self._new_id = new_id or IdGenerator(clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._notices = None
        self._reopen_at = 0.0
        self._checked = set()
        self._caller = None  # made by the first call()

    def put(self, data, peer, channel="common", priority=names.DEFAULT_PRIORITY, *, ttl=None,
            timeout=None):
        """Spool ``data`` (bytes, a path or a binary file object) for ``peer``'s
        ``channel``; returns the message id. ``ttl`` (seconds) makes it expire.

        While the spool is at its limits, wait up to ``timeout`` seconds for
        room (default ``[client] put_timeout``; 0 = not at all), then raise
        ``QueueFull``. Raises ``UnknownPeer``, ``ValidationError`` or
        ``SpoolFull`` (a full disk); on any error nothing is left in the spool."""
        priority = self._check(peer, channel, priority, ttl)
        timeout = self._timeout(timeout)
        if self.backlog.limited:
            self._wait_for_room(timeout)
        expires_ms = int((self._clock() + ttl) * 1000) if ttl is not None else 0
        message_id = self._new_id()
        self.spool.put(data, spool_name(priority, message_id, peer, channel, expires_ms))
        self.backlog.added(_size_of(data))
        self._wake()
        return message_id

    def put_many(self, bodies, *, peer, channel="common", priority=names.DEFAULT_PRIORITY,
                 ttl=None, timeout=None):
        """Spool every body of ``bodies`` (bytes, paths or binary file objects)
        for ``peer``'s ``channel`` with one set of options; returns their ids, in
        order, once all are durable — with one flush for the batch instead of one
        per message (``[client] fsync``). Room is waited for once, before the
        batch, which may take the spool past its limits by its own size. On any
        error none of them is left in the spool (see ``Spool.put_many``)."""
        priority = self._check(peer, channel, priority, ttl)
        timeout = self._timeout(timeout)
        bodies = list(bodies)
        if not bodies:
            return []
        self._wait_for_room(timeout)
        expires_ms = int((self._clock() + ttl) * 1000) if ttl is not None else 0
        items = [(data, SpoolName(priority, self._new_id(), peer, channel, expires_ms=expires_ms))
                 for data in bodies]
        self.spool.put_many(items)
        for data, _ in items:
            self.backlog.added(_size_of(data))
        self._wake()
        return [name.id for _, name in items]

    def _check(self, peer, channel, priority, ttl):
        """Refuse bad arguments of a put; returns the priority as an int. The
        (peer, channel) pairs already checked are remembered: a producer puts
        to the same few again and again."""
        if (peer, channel) not in self._checked:
            self.config.peer(peer)
            names.check_name(channel, "channel")
            if len(self._checked) < _CHECKED_MAX:
                self._checked.add((peer, channel))
        if type(priority) is not int or not 0 <= priority <= 9:
            priority = names.check_priority(priority)
        if ttl is not None:
            _check_seconds(ttl, "ttl")
        return priority

    def _timeout(self, timeout):
        if timeout is None:
            return self.config.client.put_timeout
        _check_seconds(timeout, "timeout", zero=True)
        return timeout
    def call(self, data, *, peer, channel, timeout=None):
        """Ask ``peer``'s responder for ``channel`` and return its answer (bytes):
        a direct message, sent at once and never spooled. ``timeout`` (seconds,
        default the peer's ``timeout``) bounds the whole call. Raises
        ``CallFailed`` (with ``status`` and ``code``) on any answer but 200, and
        at once when no receiver of the peer can be reached."""
        if self._caller is None:
            from dropr.calls import Caller

            self._caller = Caller(self.config)
        _check_seconds(timeout, "timeout")
        return self._caller.call(data, peer=peer, channel=channel, timeout=timeout)

    def _wait_for_room(self, timeout):
        deadline = self._monotonic() + timeout
        while not self.backlog.has_room():
            left = deadline - self._monotonic()
            if left <= 0:
                raise QueueFull(f"spool {self.spool.root} is at its limit: it holds "
                                f"{self.backlog.describe()} in queue/ and deferred/")
            self._sleep(min(POLL, left))

    def _wake(self):
        if self.config.client.notify_max == 0:
            return
        if self._notices is None:
            now = self._monotonic()
            if now < self._reopen_at:
                return  # no queue a moment ago; a sender's timed wait picks the message up
            self._reopen_at = now + REOPEN
            self._notices = Notices.open(self.spool.root)
        if self._notices is not None and not self._notices.wake(self.config.client.notify_max):
            # The queue is gone (a daemon stopped or restarted): open it afresh, soon.
            self._notices = None


def _check_seconds(value, what, *, zero=False):
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        kind = "a number of seconds, 0 or more" if zero else "a positive number of seconds"
        raise ValidationError(f"{what} must be {kind}, not {value!r}")
