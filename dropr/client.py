"""The producer API: ``Client(config).put(data, peer) -> id``.

``put()`` writes the message into the local spool and returns its id at once,
whether or not the network is up; a sender delivers it later.
"""

import time

from dropr import config as config_mod
from dropr import names
from dropr.errors import ValidationError
from dropr.ids import IdGenerator
from dropr.ipc import Notices
from dropr.spool import Spool, SpoolName


class Client:
    """A producer bound to one config (a ``Config`` or the path of a ``dropr.toml``).

    Cheap to make; keep one per process. Not thread-safe (use one per thread)."""

    def __init__(self, config=None, *, new_id=None, clock=time.time):
        if config is None or not isinstance(config, config_mod.Config):
            config = config_mod.load(config)
        self.config = config
        self.spool = Spool(config.client.spool, fsync=config.client.fsync, clock=clock).create()
        self._new_id = new_id or IdGenerator(clock=clock)
        self._clock = clock
        self._notices = None

    def put(self, data, peer, channel="common", priority=names.DEFAULT_PRIORITY, *, ttl=None):
        """Spool ``data`` (bytes, a path or a binary file object) for ``peer``'s
        ``channel``; returns the message id. ``ttl`` (seconds) makes it expire.

        Raises ``UnknownPeer``, ``ValidationError`` or ``SpoolFull``; on any
        error nothing is left in the spool."""
        self.config.peer(peer)
        names.check_name(channel, "channel")
        priority = names.check_priority(priority)
        expires_ms = 0
        if ttl is not None:
            if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0:
                raise ValidationError(f"ttl must be a positive number of seconds, not {ttl!r}")
            expires_ms = int((self._clock() + ttl) * 1000)
        message_id = self._new_id()
        name = SpoolName(priority, message_id, peer, channel, expires_ms=expires_ms)
        self.spool.put(data, name)
        self._wake()
        return message_id

    def _wake(self):
        if self.config.client.notify_max == 0:
            return
        if self._notices is None:
            self._notices = Notices.open(self.spool.root)
        if self._notices is not None and not self._notices.wake(self.config.client.notify_max):
            # The queue may have been replaced by a restarted daemon: look again next time.
            self._notices = None
