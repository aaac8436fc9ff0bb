"""The server store on a NATS JetStream cluster, beside the filesystem one.

One stream (``[store] stream``, default ``DROPR``) holds every message under
the subject ``<subject>.<channel>.<priority>``; messages given up by a
consumer go to ``<subject>-dead.<channel>.<priority>``. The stream keeps
messages until they are acknowledged (work-queue retention), replicated on
``replicas`` servers. A message's id is its ``Nats-Msg-Id``, so JetStream
itself answers a re-sent id within ``duplicate_window`` as a duplicate; its
channel, priority, client and arrival time travel in headers.

The receiver stages a body in a local scratch file (bounded memory) and
publishes only once the whole request parsed; it answers "stored" or
"duplicate" only for what JetStream acknowledged. Every JetStream fault (no
server, timeout, an election in progress) is :class:`StoreUnavailable`, which
the receiver answers 503: the sender keeps the batch and tries again.

Consumers read through one durable pull consumer per channel and priority,
shared by every consumer process of that channel (they compete, as on the
filesystem), and fetch priority 0 first. A claim lasts ``ack_wait`` seconds:
a consumer that dies without settling a message gives it back by then.

Each process that uses the store runs one asyncio loop in a thread of its own,
started on first use (so after a fork, never in a parent that forks).
"""

import asyncio
import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from dropr import names
from dropr.errors import NotFound, StoreUnavailable, TooLarge
from dropr.store import DUPLICATE, STORED, Failures

log = logging.getLogger(__name__)

#: Bodies up to this size stay in memory while staged; larger ones spill to disk.
SPOOL_IN_MEMORY = 1 << 20
#: Bytes of a published message's size kept for its headers under max_payload.
HEADER_ROOM = 1024
PRIORITIES = range(10)
_CHUNK = 1 << 20
#: Seconds a claim waits for a priority that shows messages (they may all be
#: claimed by others: then nothing comes).
FETCH_WAIT = 0.2


def _nats():
    import nats  # imported in the process that uses it, after any fork
    import nats.errors
    import nats.js.api
    import nats.js.errors
    return nats


@dataclasses.dataclass
class StagedBody:
    """A body read from a request into a scratch file, not yet in the stream
    (from :meth:`JetStreamStore.stage`)."""

    id: str
    channel: str
    priority: int
    size: int
    client: str
    received_at: float
    file: object

    path = None


@dataclasses.dataclass(frozen=True)
class StreamMessage:
    """A message read from the stream; ``read()`` gives its body."""

    id: str
    channel: str
    priority: int
    client: str
    received_at: float
    size: int
    seq: int
    body: bytes
    attempts: int = 0
    handle: object = dataclasses.field(default=None, repr=False, compare=False)

    def read(self):
        return self.body

    def open(self):
        """A real file (it has a descriptor, for a command's stdin) holding the body."""
        f = tempfile.TemporaryFile()
        f.write(self.body)
        f.seek(0)
        return f


class _Work:
    """What :meth:`JetStreamStore.open_work` gives: nothing is locked, since
    the cluster hands a message to one consumer at a time."""

    recovered = 0

    def __init__(self, consumer):
        self.consumer = consumer

    def close(self):
        pass


class _Loop:
    """One asyncio loop in a daemon thread, and the connection to the cluster
    it owns; started on first use in each process."""

    def __init__(self):
        self._pid = None
        self._lock = threading.Lock()
        self.loop = None

    def run(self, coro, timeout):
        """Run ``coro`` on the loop; its result, or the exception it raised."""
        loop = self._ensure()
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def _ensure(self):
        with self._lock:
            if self._pid != os.getpid():  # first use, or a fork copied a dead thread
                self.loop = asyncio.new_event_loop()
                threading.Thread(target=self.loop.run_forever, name="dropr-jetstream",
                                 daemon=True).start()
                self._pid = os.getpid()
            return self.loop


def _unavailable(e):
    what = type(e).__name__ + (f": {e}" if str(e) else "")
    return StoreUnavailable(f"JetStream is not available now ({what}); try later")


def subject_of(prefix, channel, priority):
    return f"{prefix}.{channel}.{priority}"


def durable_of(channel, priority):
    """The durable consumer of a channel and priority (no dots allowed in it)."""
    digest = hashlib.sha1(channel.encode()).hexdigest()[:8]
    return f"{channel.replace('.', '_')}-{digest}-p{priority}"


class JetStreamStore:
    """The server store on a JetStream stream, with the methods of the
    filesystem :class:`~dropr.store.Store` that the receiver, ``dropr
    consume`` and ``dropr store`` use. Used in receiver worker processes,
    consumers and admin commands, each with its own connection. ``scratch``
    is a local folder for staged bodies (``[receiver] store``)."""

    def __init__(self, settings, *, scratch, clock=time.time):
        self.settings = settings
        self.root = Path(scratch)
        self._clock = clock
        self._loop = _Loop()
        self._nc = self._js = None
        self._max_payload = None
        self._subs = {}
        self._held = {}
        self._acks = None  # the reply subscription for publish acks (used on the loop only)
        self._connecting = None
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    # -- connection -----------------------------------------------------------

    def _call(self, make_coro, timeout=None):
        """Run ``make_coro()`` on the loop once connected; JetStream faults
        become StoreUnavailable."""
        nats = _nats()
        timeout = timeout or self.settings.publish_timeout + self.settings.connect_timeout
        try:
            return self._loop.run(self._connected(make_coro), timeout)
        except (nats.errors.Error, asyncio.TimeoutError, TimeoutError, OSError) as e:
            if isinstance(e, nats.js.errors.NotFoundError):
                raise
            raise _unavailable(e) from None

    async def _connected(self, make_coro):
        if self._nc is None or self._nc.is_closed:
            if self._connecting is None:  # made on the loop, so no two threads race here
                self._connecting = asyncio.Lock()
            async with self._connecting:
                if self._nc is None or self._nc.is_closed:
                    await self._connect()
        return await make_coro()

    async def _connect(self):
        nats = _nats()
        s = self.settings

        async def quiet(e):  # reconnects are expected; callers see StoreUnavailable
            log.debug("nats: %s", e)
        nc = await nats.connect(list(s.servers), connect_timeout=s.connect_timeout,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                                allow_reconnect=True, error_cb=quiet, name="dropr")
        try:
            js = nc.jetstream(timeout=s.publish_timeout)
            await self._ensure_stream(js)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js, self._max_payload = nc, js, nc.max_payload

    async def _ensure_stream(self, js):
        nats = _nats()
        s = self.settings
        try:
            info = await js.stream_info(s.stream)
        except nats.js.errors.NotFoundError:
            api = nats.js.api
            await js.add_stream(api.StreamConfig(
                name=s.stream, subjects=[f"{s.subject}.>", f"{s.subject}-dead.>"],
                retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE,
                num_replicas=s.replicas, duplicate_window=s.duplicate_window))
            return
        if info.config.duplicate_window and info.config.duplicate_window < s.duplicate_window:
            log.warning("stream %s keeps ids for %g s, less than [store] duplicate_window %g s",
                        s.stream, info.config.duplicate_window, s.duplicate_window)

    def close(self):
        """Drain and close the connection (optional: a process may just exit)."""
        if self._nc is not None:
            nc, self._nc = self._nc, None
            try:
                self._loop.run(nc.close(), 5.0)
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    # -- receiver -------------------------------------------------------------

    def stage(self, channel, message_id, body, *, priority, client, limit=None):
        """Read ``body`` (bytes or an object with ``read(n)``) into a scratch
        file; ``TooLarge`` past ``limit`` or past what one JetStream message
        can hold (the servers' max_payload)."""
        names.check_name(channel, "channel")
        names.check_id(message_id)
        priority = names.check_priority(priority)
        limit, why = self._limit(limit)
        f = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=self.root / "tmp")
        try:
            size = _copy(body, f, limit, why)
        except BaseException:
            f.close()
            raise
        return StagedBody(message_id, channel, priority, size, client, self._clock(), f)

    def _limit(self, limit):
        if self._max_payload is None:
            self._call(lambda: asyncio.sleep(0))  # connect, to learn max_payload
        room = self._max_payload - HEADER_ROOM
        if limit is None or room < limit:
            return room, f"the JetStream servers' max_payload leaves {room} bytes per message"
        return limit, f"message is over the limit of {limit} bytes"

    def publish(self, staged, *, sync_dir=True):
        """Publish one staged body; ``"stored"`` or ``"duplicate"``."""
        return self.publish_many([staged])[0]

    def publish_many(self, staged, *, counted=None):
        """Publish every staged body with all acks in flight at once; their
        statuses, in order. StoreUnavailable unless JetStream acknowledged
        every one. The staged files are closed, whatever happens."""
        staged, queue = list(staged), staged
        queue.clear()  # the caller's deque: nothing in it is left to discard
        try:
            items = [(self._subject(s), s.file, self._headers(s)) for s in staged]
            payloads = [(subj, _read_all(f), h) for subj, f, h in items]
        finally:
            for s in staged:
                self.discard(s)
        timeout = self.settings.publish_timeout
        acks = self._call(lambda: self._publish_all(payloads, timeout), timeout * 2 + 5)
        return [DUPLICATE if duplicate else STORED for duplicate in acks]

    async def _publish_all(self, payloads, timeout):
        """Publish every payload, then wait for all their acks at once. The
        publishes go out without yielding to the loop in between, so the
        connection writes the whole batch in a few large writes; each ack
        comes back on this connection's reply subject with the publish's token."""
        acks = await self._acks_for(self._nc)
        futures = {}
        try:
            for subj, data, h in payloads:
                token, future = acks.expect()
                futures[token] = future
                await self._nc.publish(subj, data, reply=acks.prefix + token, headers=h)
            done, pending = await asyncio.wait(futures.values(), timeout=timeout)
        finally:
            acks.forget(futures)
        if pending:
            raise asyncio.TimeoutError(f"{len(pending)} of {len(futures)} publishes unacknowledged")
        replies = [f.result() for f in futures.values()]
        if any(isinstance(r, dict) for r in replies):  # no stream answered: deleted?
            await self._ensure_stream(self._js)  # made again for the sender's next try
        return [_pub_ack(r) for r in replies]

    async def _acks_for(self, nc):
        """The reply subscription of connection ``nc`` (made on first use; a
        reconnect keeps it, a new connection makes another)."""
        if self._acks is None or self._acks.nc is not nc:
            self._acks = _Acks(nc)
            await self._acks.start()
        return self._acks

    def _subject(self, s):
        return subject_of(self.settings.subject, s.channel, s.priority)

    def _headers(self, s):
        return {"Nats-Msg-Id": s.id, "Dropr-Channel": s.channel,
                "Dropr-Priority": str(s.priority), "Dropr-Client": s.client or "",
                "Dropr-Received-At": f"{s.received_at:.6f}"}

    def discard(self, staged):
        """Drop a staged body that will not be published (idempotent)."""
        staged.file.close()

    def sync(self, channels):
        """Nothing to do: an acknowledged publish is as durable as JetStream makes it."""

    def free_bytes(self):
        """Bytes free on the scratch folder's filesystem (staged bodies spill there)."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_writable(self):
        """The stream answers (readiness); StoreUnavailable if not."""
        self._call(lambda: self._js.stream_info(self.settings.stream),
                   self.settings.connect_timeout + 2.0)

    # -- admin ----------------------------------------------------------------

    def _subjects(self, pattern):
        info = self._call(lambda: self._js.stream_info(self.settings.stream,
                                                       subjects_filter=pattern))
        return info.state.subjects or {}

    def channels(self):
        """The channels that hold messages waiting (claimed ones included)."""
        found = {subj.split(".", 1)[1].rsplit(".", 1)[0]
                 for subj in self._subjects(f"{self.settings.subject}.>")}
        return sorted(found)

    def _prefix(self, state):
        if state == "queue":
            return self.settings.subject
        if state == "dead":
            return f"{self.settings.subject}-dead"
        return None  # done: acknowledged messages leave the stream

    def count(self, channel, state="queue"):
        """How many messages ``channel`` holds in ``state`` (queue or dead; done is 0)."""
        names.check_name(channel, "channel")
        prefix = self._prefix(state)
        return sum(self._subjects(f"{prefix}.{channel}.*").values()) if prefix else 0

    def messages(self, channel, limit=None, *, state="queue"):
        """Messages of ``channel`` in ``state``: by priority, then arrival."""
        names.check_name(channel, "channel")
        prefix = self._prefix(state)
        if prefix is None:
            return []
        out = []
        for p in PRIORITIES:  # every priority: a new leader's subject counts may lag
            out += self._call(lambda p=p: self._read_subject(
                subject_of(prefix, channel, p), None if limit is None else limit - len(out)))
            if limit is not None and len(out) >= limit:
                break
        return out

    async def _read_subject(self, subject, limit):
        nats = _nats()
        out, seq = [], 1
        while limit is None or len(out) < limit:
            try:
                raw = await self._js.get_msg(self.settings.stream, seq=seq, subject=subject,
                                             next=True)
            except nats.js.errors.NotFoundError:
                break
            out.append(_message(raw.headers or {}, raw.data or b"", raw.seq))
            seq = raw.seq + 1
        return out

    def get(self, channel, message_id):
        """The message ``message_id`` of ``channel`` (waiting or dead); ``NotFound`` if absent."""
        names.check_id(message_id)
        for state in ("queue", "dead"):
            for m in self.messages(channel, state=state):
                if m.id == message_id:
                    return m
        raise NotFound(f"no message {message_id} in channel {channel}")

    # -- consumers ------------------------------------------------------------

    def open_work(self, consumer):
        """Nothing to lock or recover: a claim not settled within ``ack_wait``
        goes back to the stream by itself."""
        names.check_name(consumer, "consumer")
        return _Work(consumer)

    def tidy_failures(self, channel):
        return 0

    def unclaim(self, work):
        """Give back every message this process claimed and has not settled."""
        held, self._held = self._held, {}
        for msg in held.values():
            self._call(lambda m=msg: m.nak())
        return len(held)

    def claim(self, channel, consumer, limit=1):
        """Up to ``limit`` messages of ``channel``, priority 0 first, claimed for
        ``ack_wait`` seconds. Every consumer of a channel shares its durable
        consumers, whatever its name."""
        names.check_name(channel, "channel")
        names.check_name(consumer, "consumer")
        counts = self._subjects(f"{self.settings.subject}.{channel}.*")
        claimed = []
        for p in PRIORITIES:
            if len(claimed) >= limit or not self._worth_fetching(counts, channel, p):
                continue
            try:
                claimed += self._call(lambda p=p: self._fetch(channel, p, limit - len(claimed)))
            except StoreUnavailable:
                if not claimed:
                    raise
                break  # what is claimed is the caller's to settle; the rest waits
        return claimed

    def _worth_fetching(self, counts, channel, priority):
        """The stream shows messages of ``priority``, or an earlier fetch left
        some delivered to this process (they are not to wait out ack_wait)."""
        if counts.get(subject_of(self.settings.subject, channel, priority)):
            return True
        sub = getattr(self._subs.get((channel, priority)), "_sub", None)  # nats-py's own
        queue = getattr(sub, "_pending_queue", None)
        return queue is not None and not queue.empty()

    async def _fetch(self, channel, priority, n):
        nats = _nats()
        sub = await self._subscription(channel, priority)
        try:
            msgs = await sub.fetch(n, timeout=FETCH_WAIT)
        except nats.errors.TimeoutError:
            return []
        except nats.errors.Error:
            # The durable consumer may be gone or moved (a lost election, a
            # re-made stream): bind it again on the next claim.
            self._subs.pop((channel, priority), None)
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass  # the connection is down: its subscriptions went with it
            raise
        out = []
        for msg in msgs:
            m = _message(msg.headers or {}, msg.data, msg.metadata.sequence.stream,
                         attempts=msg.metadata.num_delivered - 1, handle=msg)
            self._held[m.seq] = msg
            out.append(m)
        return out

    async def _subscription(self, channel, priority):
        key = (channel, priority)
        if key not in self._subs:
            api = _nats().js.api
            config = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT,
                                        ack_wait=self.settings.ack_wait, max_deliver=-1,
                                        deliver_policy=api.DeliverPolicy.ALL)
            self._subs[key] = await self._js.pull_subscribe(
                subject_of(self.settings.subject, channel, priority),
                durable=durable_of(channel, priority), stream=self.settings.stream,
                config=config)
        return self._subs[key]

    def failures(self, message):
        """How many deliveries of ``message`` came before this one."""
        return Failures(attempts=message.attempts)

    def ack(self, message):
        """Done with ``message``: it leaves the stream (acknowledged, or deleted
        by an operator's ``dropr store ack``)."""
        if message.handle is None:
            self._call(lambda: self._js.delete_msg(self.settings.stream, message.seq))
            return
        try:
            self._call(lambda: message.handle.ack_sync(self.settings.publish_timeout))
        except StoreUnavailable:
            self._hand_back(message)
            raise
        self._held.pop(message.seq, None)

    def _hand_back(self, message):
        """After a failed ack: give the message back at once, so that it comes
        again now rather than after ack_wait (if the ack did land, it is gone
        and the nak changes nothing)."""
        try:
            self._call(lambda: message.handle.nak())
        except StoreUnavailable:
            return  # it comes back by itself after ack_wait
        self._held.pop(message.seq, None)

    def release(self, message):
        """Give a claimed message back at once."""
        self._call(lambda: message.handle.nak())
        self._held.pop(message.seq, None)

    def retry(self, message, failures):
        """Give a claimed message back, to be delivered again after ``failures.not_before``."""
        delay = max(0.0, failures.not_before - self._clock())
        self._call(lambda: message.handle.nak(delay=delay))
        self._held.pop(message.seq, None)

    def bury(self, message, failures=None):
        """Copy ``message`` to the dead subject (with its reason), then take it
        out of the queue. A crash in between delivers it again; burying it
        again is a duplicate of the first copy."""
        reason = failures.reason if failures is not None else ""
        headers = {"Nats-Msg-Id": f"dead-{message.id}", "Dropr-Id": message.id,
                   "Dropr-Channel": message.channel,
                   "Dropr-Priority": str(message.priority), "Dropr-Client": message.client,
                   "Dropr-Received-At": f"{message.received_at:.6f}",
                   "Dropr-Reason": json.dumps(reason)}
        subject = subject_of(f"{self.settings.subject}-dead", message.channel, message.priority)
        self._call(lambda: self._js.publish(subject, message.body, headers=headers))
        self.ack(message)  # term() would leave it in a work-queue stream of nats-server 2.9


class _Acks:
    """Publish acks of one connection: one wildcard reply subscription, and
    the future each publish waits on, by a token counted per connection."""

    def __init__(self, nc):
        self.nc = nc
        self.prefix = nc.new_inbox() + "."
        self.waiting = {}
        self._count = 0

    async def start(self):
        await self.nc.subscribe(self.prefix + "*", cb=self._on_reply)

    def expect(self):
        """(token, future) for one more publish; its reply subject is prefix + token."""
        self._count += 1
        token = str(self._count)
        future = self.waiting[token] = asyncio.get_running_loop().create_future()
        return token, future

    def forget(self, tokens):
        """Stop waiting for these publishes (answered or not)."""
        for token in tokens:
            self.waiting.pop(token, None)

    async def _on_reply(self, msg):
        future = self.waiting.pop(msg.subject[len(self.prefix):], None)
        if future is not None and not future.done():
            status = (msg.headers or {}).get("Status")
            future.set_result(msg.data if not status else {"status": status,
                                                          "description": msg.headers.get("Description", "")})


def _pub_ack(reply):
    """Whether a publish's ack says duplicate; StoreUnavailable if it is an error."""
    if isinstance(reply, dict):  # a status from the server: 503 is "no stream answers"
        raise StoreUnavailable(f"JetStream is not available now (status {reply['status']}: "
                               f"{reply['description'] or 'no responders'}); try later")
    try:
        ack = json.loads(reply)
    except ValueError:
        ack = {"error": {"description": f"unreadable ack {reply[:80]!r}"}}
    if "error" in ack:
        what = ack["error"].get("description") or ack["error"]
        raise StoreUnavailable(f"JetStream refused a message now ({what}); try later")
    return ack.get("duplicate", False)


def _message(headers, body, seq, *, attempts=0, handle=None):
    return StreamMessage(
        id=headers.get("Dropr-Id") or headers.get("Nats-Msg-Id", str(seq)), channel=headers.get("Dropr-Channel", ""),
        priority=int(headers.get("Dropr-Priority", names.DEFAULT_PRIORITY)),
        client=headers.get("Dropr-Client", ""),
        received_at=float(headers.get("Dropr-Received-At", 0.0)), size=len(body), seq=seq,
        body=body, attempts=attempts, handle=handle)


def _copy(body, f, limit, why):
    if isinstance(body, (bytes, bytearray, memoryview)):
        chunks = [body]
    else:
        chunks = iter(lambda: body.read(_CHUNK), b"")
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TooLarge(why if "limit" in why else f"message of over {limit} bytes: {why}")
        f.write(chunk)
    return size


def _read_all(f):
    f.seek(0)
    return f.read() if not isinstance(f, io.BytesIO) else f.getvalue()


def open_store(config, *, clock=time.time):
    """The server store ``config`` names in ``[store] backend``: the filesystem
    :class:`~dropr.store.Store` at ``[receiver] store``, or a :class:`JetStreamStore`."""
    from dropr.store import Store

    if config.store.backend == "jetstream":
        return JetStreamStore(config.store, scratch=config.receiver.store, clock=clock)
    return Store(config.receiver.store, fsync=config.receiver.fsync, clock=clock)
