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

from dropr.store.jetstream.store import JetStreamStore, StagedBody
from dropr.store.jetstream.wire import StreamMessage, durable_of, subject_of

__all__ = ["JetStreamStore", "StagedBody", "StreamMessage", "durable_of", "subject_of"]
