"""The receiver side of the JetStream store and its connection (see
:mod:`dropr.store.jetstream`)."""

import asyncio
import contextlib
import dataclasses
import io
import logging
import tempfile
import time
from pathlib import Path

from dropr import fs, names
from dropr.errors import TooLarge
from dropr.store import DUPLICATE, STORED
from dropr.store.jetstream.claims import JsClaimsMixin
from dropr.store.jetstream.operator import JsOperatorMixin
from dropr.store.jetstream.wire import (Acks, Loop, connect_options, msg_id_of, nats_module,
                                        pub_ack, require_nats, subject_of, unavailable)

log = logging.getLogger(__name__)

#: Bodies up to this size stay in memory while staged; larger ones spill to disk.
SPOOL_IN_MEMORY = 1 << 20
#: Bytes of a published message's size kept for its headers under max_payload.
HEADER_ROOM = 1024
_CHUNK = 1 << 20


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
    legacy_id: str = None

    path = None


class JetStreamStore(JsOperatorMixin, JsClaimsMixin):
    """The server store on a JetStream stream, with the methods of the
    filesystem :class:`~dropr.store.Store` (the interface
    :class:`~dropr.store.Backend`) that the receiver, ``dropr
    consume`` and ``dropr store`` use. Used in receiver worker processes,
    consumers and admin commands, each with its own connection. ``scratch``
    is a local folder for staged bodies (``[receiver] store``)."""

    def __init__(self, settings, *, scratch, clock=time.time, where="[store]"):
        require_nats()
        self.settings = settings
        self._options = connect_options(settings, where)  # ConfigError now, not at each connect
        self.root = Path(scratch)
        self._clock = clock
        self._loop = Loop()
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
        nats = nats_module()
        timeout = timeout or self.settings.publish_timeout + self.settings.connect_timeout
        try:
            return self._loop.run(self._connected(make_coro), timeout)
        except (nats.errors.Error, asyncio.TimeoutError, TimeoutError, OSError) as e:
            if isinstance(e, nats.js.errors.NotFoundError):
                raise
            raise unavailable(e) from None

    async def _connected(self, make_coro):
        if self._nc is None or self._nc.is_closed:
            if self._connecting is None:  # made on the loop, so no two threads race here
                self._connecting = asyncio.Lock()
            async with self._connecting:
                if self._nc is None or self._nc.is_closed:
                    await self._connect()
        return await make_coro()

    async def _connect(self):
        nats = nats_module()
        s = self.settings

        async def quiet(e):  # reconnects are expected; callers see StoreUnavailable
            # ... but refused credentials are the operator's to fix.
            refused = isinstance(e, nats.errors.AuthorizationError) or "uthoriz" in str(e)
            log.log(logging.WARNING if refused else logging.DEBUG, "nats: %s", e)
        nc = await nats.connect(list(s.servers), connect_timeout=s.connect_timeout,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                                allow_reconnect=True, error_cb=quiet, name="dropr",
                                **self._options)
        try:
            js = nc.jetstream(timeout=s.publish_timeout)
            await self._ensure_stream(js)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js, self._max_payload = nc, js, nc.max_payload

    async def _ensure_stream(self, js):
        nats = nats_module()
        s = self.settings
        try:
            info = await js.stream_info(s.stream)
        except nats.js.errors.NotFoundError:
            api = nats.js.api
            await js.add_stream(api.StreamConfig(
                name=s.stream, subjects=[f"{s.subject}.>", f"{s.subject}-dead.>"],
                retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE,
                num_replicas=s.replicas, duplicate_window=s.duplicate_window))
            await self._leader_elected(js)
            return
        if info.config.duplicate_window and info.config.duplicate_window < s.duplicate_window:
            log.warning("stream %s keeps ids for %g s, less than [store] duplicate_window %g s",
                        s.stream, info.config.duplicate_window, s.duplicate_window)

    async def _leader_elected(self, js, stream=None, *, consumer=None):
        """Wait, up to publish_timeout, until a stream just made (ours, or
        ``stream``) has a leader: before that a publish finds no stream
        (answered 503, retried later). With ``consumer``, until that durable
        consumer of our stream, just made, has one: before that a fetch
        finds no responders (503)."""
        nats = nats_module()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_timeout
        while loop.time() < deadline:
            wait = max(0.05, min(1.0, deadline - loop.time()))  # an answer may never come
            try:
                if consumer is None:
                    ask = js.stream_info(stream or self.settings.stream)
                else:
                    ask = js.consumer_info(self.settings.stream, consumer)
                info = await asyncio.wait_for(ask, wait)
                if info.cluster is None or info.cluster.leader:
                    return
            except (nats.errors.Error, asyncio.TimeoutError):
                pass  # not answered yet: no leader
            await asyncio.sleep(0.05)

    def close(self):
        """Drain and close the connection (optional: a process may just exit).
        Not to be called while other threads use the store."""
        if self._nc is not None:
            nc, self._nc = self._nc, None
            self._subs, self._held, self._acks = {}, {}, None
            try:
                self._loop.run(nc.close(), 5.0)
            except Exception:  # noqa: BLE001 - closing a broken connection
                # nats-py gives up its own clean-up when the servers are gone
                # with data still to send, and leaves its subscriptions' tasks
                # waiting on the loop: end what is left there.
                with contextlib.suppress(Exception):
                    self._loop.run(_end_tasks(), 5.0)

    # -- receiver -------------------------------------------------------------

    def stage(self, channel, message_id, body, *, priority, client, limit=None, batch=None,
              legacy_id=None):
        """Read ``body`` (bytes or an object with ``read(n)``) into a scratch
        file; ``TooLarge`` past ``limit`` or past what one JetStream message
        can hold (the servers' max_payload). ``batch`` is accepted for the
        files store's sake (JetStream stores each message on its own)."""
        names.check_name(channel, "channel")
        names.check_id(message_id)
        names.check_name(client, "client")
        priority = names.check_priority(priority)
        limit, why = self._limit(limit)
        f = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=self.root / "tmp")
        try:
            size = _copy(body, f, limit, why)
        except BaseException:
            f.close()
            raise
        return StagedBody(message_id, channel, priority, size, client, self._clock(), f,
                          legacy_id)

    def _limit(self, limit):
        if self._max_payload is None:
            self._call(lambda: asyncio.sleep(0))  # connect, to learn max_payload
        room = self._max_payload - HEADER_ROOM
        if limit is None or room < limit:
            return room, f"the JetStream servers' max_payload leaves {room} bytes per message"
        return limit, f"message is over the limit of {limit} bytes"

    def publish(self, staged, *, sync_dir=True, fresh=False):
        """Publish one staged body; ``"stored"`` or ``"duplicate"`` (``fresh``
        is the files store's: JetStream checks every id the same way)."""
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
        return [pub_ack(r) for r in replies]

    async def _acks_for(self, nc):
        """The reply subscription of connection ``nc`` (made on first use; a
        reconnect keeps it, a new connection makes another)."""
        if self._acks is None or self._acks.nc is not nc:
            self._acks = Acks(nc)
            await self._acks.start()
        return self._acks

    def _subject(self, s):
        return subject_of(self.settings.subject, s.channel, s.priority)

    def _headers(self, s):
        # Duplicates are judged per client, as on the files backend: one
        # client's id cannot pre-empt another's.
        headers = {"Nats-Msg-Id": msg_id_of(s.client, s.id), "Dropr-Id": s.id,
                   "Dropr-Channel": s.channel,
                   "Dropr-Priority": str(s.priority), "Dropr-Client": s.client,
                   "Dropr-Received-At": f"{s.received_at:.6f}"}
        if s.legacy_id is not None:
            headers["Dropr-Legacy-Id"] = s.legacy_id
        return headers

    def discard(self, staged):
        """Drop a staged body that will not be published (idempotent)."""
        staged.file.close()

    def sync(self, channels):
        """Nothing to do: an acknowledged publish is as durable as JetStream makes it."""

    def free_bytes(self):
        """Bytes free on the scratch folder's filesystem (staged bodies spill there)."""
        return fs.free_bytes(self.root)

    def free_inodes(self):
        """Inodes free on the scratch folder's filesystem (``None`` if it does not count them)."""
        return fs.free_inodes(self.root)

    def check_writable(self):
        """The stream answers (readiness); StoreUnavailable if not."""
        self._call(lambda: self._js.stream_info(self.settings.stream),
                   self.settings.connect_timeout + 2.0)


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


async def _end_tasks():
    """Cancel every other task on the running loop and wait for them."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
