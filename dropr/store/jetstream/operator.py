"""The JetStream store's side of the operator's toolbox (as
:mod:`dropr.store.files.operator` is the files store's): pause and resume a channel,
the dead letters and their requeue, purge, per-channel figures, and where one
message is now.

A pause is a key of its own in a small key-value bucket beside the stream
(``<stream>_PAUSED``, as many replicas as the stream): it lasts as the stream
does, across restarts of every process, and every consumer sees it. Runs in
consumers' and the ``dropr`` command's processes, and in receiver workers.

What JetStream cannot say: an acknowledged message leaves a work-queue stream,
so there is no ``done`` count (null) and ``locate`` finds no acked message;
a claimed one is told from a waiting one by its durable consumer's delivery
state.
"""

import json

from dropr import names
from dropr.errors import NotFound
from dropr.store import CLAIMED, DEAD, QUEUED
from dropr.store.jetstream.wire import message_of, msg_id_of, nats_module, subject_of

PRIORITIES = range(10)


class JsOperatorMixin:
    """Operator verbs of :class:`~dropr.store.jetstream.store.JetStreamStore`."""

    # -- pause ------------------------------------------------------------------

    def _paused_bucket(self, *, make=True):
        """The coroutine function giving the bucket; without ``make``, None
        where no pause was ever set (a consumer's claim must not need the
        right to make streams)."""
        async def bucket():
            nats = nats_module()
            name = f"{self.settings.stream}_PAUSED"
            try:
                return await self._js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                if not make:
                    return None
                kv = await self._js.create_key_value(bucket=name,
                                                      replicas=self.settings.replicas)
                # A bucket is a stream: until its leader is elected a put finds
                # no stream and the first pause would fail.
                await self._leader_elected(self._js, f"KV_{name}")
                return kv
        return bucket

    def pause(self, channel):
        """Consumers take nothing from ``channel`` until :meth:`resume`."""
        names.check_name(channel, "channel")
        self._set_paused(channel, b"1")

    def resume(self, channel):
        """Undo :meth:`pause` (idempotent)."""
        names.check_name(channel, "channel")
        self._set_paused(channel, b"0")

    def _set_paused(self, channel, value):
        make = self._paused_bucket()

        async def put():
            kv = await make()
            await kv.put(channel, value)
        self._call(put)

    def paused(self, channel):
        """True while ``channel`` is paused."""
        find = self._paused_bucket(make=False)

        async def get():
            nats = nats_module()
            kv = await find()
            if kv is None:
                return False
            try:
                entry = await kv.get(channel)
            except nats.js.errors.KeyNotFoundError:
                return False
            return entry.value == b"1"
        return self._call(get)

    # -- figures ----------------------------------------------------------------

    def stats(self, channel, *, now=None):
        """As the files store's: ``queued`` (claimed ones included), ``claimed``,
        ``done`` (null: acknowledged messages leave the stream), ``dead``,
        ``oldest_age`` and ``paused``."""
        names.check_name(channel, "channel")
        now = self._clock() if now is None else now
        waiting, made_ms = self.depths().get(channel, (0, None))
        claimed = sum(self._pending(channel, p)[0] for p in PRIORITIES)
        return {"channel": channel, "queued": waiting, "claimed": claimed, "done": None,
                "dead": self.count(channel, "dead"),
                "oldest_age": max(0.0, now - made_ms / 1000) if waiting and made_ms else 0.0,
                "paused": self.paused(channel)}

    def _pending(self, channel, priority):
        """(messages delivered and not yet acked, the stream sequence below
        which all are acked) of the channel's durable consumer of ``priority``."""
        from dropr.store.jetstream.wire import durable_of

        async def info():
            nats = nats_module()
            try:
                ci = await self._js.consumer_info(self.settings.stream,
                                                  durable_of(channel, priority))
            except nats.js.errors.NotFoundError:
                return 0, 0
            return ci.num_ack_pending or 0, (ci.ack_floor.stream_seq if ci.ack_floor else 0)
        return self._call(info)

    # -- dead letters -------------------------------------------------------------

    def dead_messages(self, channel):
        """``[(message, reason)]`` of the channel's dead subject, oldest first."""
        names.check_name(channel, "channel")
        prefix = f"{self.settings.subject}-dead"
        out = []
        for p in PRIORITIES:
            out += self._call(lambda p=p: self._read_with_reasons(subject_of(prefix, channel, p)))
        return out

    async def _read_with_reasons(self, subject):
        nats = nats_module()
        out, seq = [], 1
        while True:
            try:
                raw = await self._js.get_msg(self.settings.stream, seq=seq, subject=subject,
                                             next=True)
            except nats.js.errors.NotFoundError:
                return out
            headers = raw.headers or {}
            try:
                reason = json.loads(headers.get("Dropr-Reason", '""'))
            except ValueError:
                reason = ""
            out.append((message_of(headers, raw.data or b"", raw.seq), reason))
            seq = raw.seq + 1

    def requeue(self, message):
        """A dead message back into the channel's queue, attempts reset: published
        again under an id of its own (the first one is inside the duplicate
        window), then the dead copy is deleted. A crash in between leaves both;
        requeueing again is a duplicate of the first requeue."""
        headers = {"Nats-Msg-Id": f"requeue-{message.seq}-" + msg_id_of(message.client,
                                                                         message.id),
                   "Dropr-Id": message.id, "Dropr-Channel": message.channel,
                   "Dropr-Priority": str(message.priority), "Dropr-Client": message.client,
                   "Dropr-Received-At": f"{message.received_at:.6f}"}
        if message.legacy_id is not None:
            headers["Dropr-Legacy-Id"] = message.legacy_id
        subject = subject_of(self.settings.subject, message.channel, message.priority)
        self._call(lambda: self._js.publish(subject, message.body, headers=headers))
        self._call(lambda: self._js.delete_msg(self.settings.stream, message.seq))

    # -- purge ----------------------------------------------------------------

    def purge(self, channel, state, *, older_than=None, dry_run=False, now=None):
        """Remove the messages of ``channel`` in ``state`` (queue or dead; done
        holds none here) that arrived more than ``older_than`` s ago; how many."""
        names.check_name(channel, "channel")
        limit = None if older_than is None else (
            (self._clock() if now is None else now) - older_than)
        chosen = [m for m in self.messages(channel, state=state)
                  if limit is None or m.received_at <= limit]
        if not dry_run:
            for m in chosen:
                self._call(lambda m=m: self._js.delete_msg(self.settings.stream, m.seq))
        return len(chosen)

    # -- trace ------------------------------------------------------------------

    def locate(self, channel, message_id, *, client=None):
        """Where ``message_id`` of ``channel`` is: ``queued`` or ``claimed`` (by
        the channel's consumers, by its delivery state), or ``dead`` with its
        reason. ``NotFound`` if the stream no longer holds it (acknowledged)."""
        names.check_name(channel, "channel")
        names.check_id(message_id)
        for m in self.messages(channel):
            if m.id == message_id and (client is None or m.client == client):
                pending, floor = self._pending(channel, m.priority)
                claimed = pending and m.seq > floor and self._delivered(channel, m)
                return self._where(CLAIMED if claimed else QUEUED, m, consumer="(jetstream)"
                                   if claimed else None)
        for m, reason in self.dead_messages(channel):
            if m.id == message_id and (client is None or m.client == client):
                return self._where(DEAD, m, reason=reason or None)
        raise NotFound(f"no message {message_id} in channel {channel}")

    def _delivered(self, channel, message):
        from dropr.store.jetstream.wire import durable_of

        async def info():
            ci = await self._js.consumer_info(self.settings.stream,
                                              durable_of(channel, message.priority))
            return message.seq <= ci.delivered.stream_seq
        try:
            return self._call(info)
        except Exception:  # noqa: BLE001 - no consumer yet: not delivered
            return False

    @staticmethod
    def _where(state, m, *, consumer=None, reason=None):
        return {"id": m.id, "channel": m.channel, "state": state, "priority": m.priority,
                "client": m.client, "received_at": m.received_at, "size": m.size,
                "consumer": consumer, "reason": reason, "acked_at": None}

    def locate_anywhere(self, message_id, *, client=None):
        """:meth:`locate` in whichever channel holds ``message_id``."""
        for channel in self.channels() + self._dead_channels():
            try:
                return self.locate(channel, message_id, client=client)
            except NotFound:
                continue
        raise NotFound(f"no message {message_id} in any channel")

    def _dead_channels(self):
        return sorted({subj.split(".", 1)[1].rsplit(".", 1)[0]
                       for subj in self._subjects(f"{self.settings.subject}-dead.>")})
