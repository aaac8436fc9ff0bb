"""The consumer side of the JetStream store: what ``dropr consume``,
``dropr store`` and :func:`dropr.open_store` readers call (counts, listings,
claim, ack, retry, bury), as a base class of
:class:`~dropr.store.jetstream.store.JetStreamStore`."""

import json

from dropr import ids, names
from dropr.errors import NotFound, StoreUnavailable, ValidationError
from dropr.store import Failures
from dropr.store.jetstream.wire import durable_of, message_of, msg_id_of, nats_module, subject_of

PRIORITIES = range(10)
#: Seconds a claim waits for a priority that shows messages (they may all be
#: claimed by others: then nothing comes).
FETCH_WAIT = 0.2


async def _unsubscribe(sub):
    try:
        await sub.unsubscribe()
    except nats_module().errors.Error:
        pass  # the connection is down: its subscriptions went with it


class _Work:
    """What :meth:`JetStreamStore.open_work` gives: nothing is locked, since
    the cluster hands a message to one consumer at a time."""

    recovered = 0

    def __init__(self, consumer):
        self.consumer = consumer

    def close(self):
        pass


class JsClaimsMixin:
    """Reading and settling messages; needs ``settings``, ``_call``, ``_js``,
    ``_subs``, ``_held`` and ``_clock`` from the store it is a base of."""

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

    def depths(self):
        """{channel: (messages waiting, claimed ones included; when the oldest
        was made, in ms since the epoch, or None)}, from the stream's subject
        counts and the first message of each subject that holds any."""
        counts, firsts = {}, {}
        for subj, n in self._subjects(f"{self.settings.subject}.>").items():
            channel, _, priority = subj.split(".", 1)[1].rpartition(".")
            counts[channel] = counts.get(channel, 0) + n
            if n:
                first = self._call(lambda s=subj: self._read_subject(s, 1))
                made = [ids.timestamp_ms(m.id) or int(m.received_at * 1000) for m in first]
                if made and min(made):
                    firsts[channel] = min(firsts.get(channel, made[0]), *made)
        return {channel: (n, firsts.get(channel)) for channel, n in counts.items()}

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
        nats = nats_module()
        out, seq = [], 1
        while limit is None or len(out) < limit:
            try:
                raw = await self._js.get_msg(self.settings.stream, seq=seq, subject=subject,
                                             next=True)
            except nats.js.errors.NotFoundError:
                break
            out.append(message_of(raw.headers or {}, raw.data or b"", raw.seq))
            seq = raw.seq + 1
        return out

    def get(self, channel, message_id, *, client=None):
        """The message ``message_id`` of ``channel`` (of ``client``, if given),
        waiting or dead; ``NotFound`` if absent, ``ValidationError`` if several
        clients sent that id and ``client`` does not say which."""
        names.check_id(message_id)
        found = {}
        for state in ("queue", "dead"):
            for m in self.messages(channel, state=state):
                if m.id == message_id and (client is None or m.client == client):
                    found.setdefault(m.client, m)
        if len(found) > 1:
            raise ValidationError(f"message {message_id} of channel {channel} came from "
                                  f"several clients ({', '.join(sorted(found))}): name one")
        if not found:
            whose = f" from client {client}" if client is not None else ""
            raise NotFound(f"no message {message_id}{whose} in channel {channel}")
        return next(iter(found.values()))

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
        if self.paused(channel):
            return []  # `dropr store pause`: uploads go on, consumers wait
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
        nats = nats_module()
        sub = await self._subscription(channel, priority)
        try:
            msgs = await sub.fetch(n, timeout=FETCH_WAIT)
        except nats.errors.TimeoutError:
            return []
        except nats.errors.Error:
            # The durable consumer may be gone or moved (a lost election, a
            # re-made stream): bind it again on the next claim.
            self._subs.pop((channel, priority), None)
            await _unsubscribe(sub)
            raise
        out = []
        for msg in msgs:
            m = message_of(msg.headers or {}, msg.data, msg.metadata.sequence.stream,
                         attempts=msg.metadata.num_delivered - 1, handle=msg)
            self._held[m.seq] = msg
            out.append(m)
        return out

    async def _subscription(self, channel, priority):
        key = (channel, priority)
        if key not in self._subs:
            api = nats_module().js.api
            config = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT,
                                        ack_wait=self.settings.ack_wait, max_deliver=-1,
                                        deliver_policy=api.DeliverPolicy.ALL)
            durable = durable_of(channel, priority)
            sub = await self._js.pull_subscribe(
                subject_of(self.settings.subject, channel, priority),
                durable=durable, stream=self.settings.stream, config=config)
            try:
                # A consumer just made answers no fetch until its replicas elect a leader.
                await self._leader_elected(self._js, consumer=durable)
            except BaseException:
                await _unsubscribe(sub)
                raise
            self._subs[key] = sub
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
        headers = {"Nats-Msg-Id": "dead-" + msg_id_of(message.client, message.id),
                   "Dropr-Id": message.id,
                   "Dropr-Channel": message.channel,
                   "Dropr-Priority": str(message.priority), "Dropr-Client": message.client,
                   "Dropr-Received-At": f"{message.received_at:.6f}",
                   "Dropr-Reason": json.dumps(reason)}
        if message.legacy_id is not None:
            headers["Dropr-Legacy-Id"] = message.legacy_id
        subject = subject_of(f"{self.settings.subject}-dead", message.channel, message.priority)
        self._call(lambda: self._js.publish(subject, message.body, headers=headers))
        self.ack(message)  # term() would leave it in a work-queue stream of nats-server 2.9
