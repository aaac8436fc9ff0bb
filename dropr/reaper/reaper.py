"""The cleanup reaper: gives the claims of dead senders back, and removes what
has outlived its use on both sides.

One :meth:`Reaper.reap` pass, in the order that matters most first:

- claim directories in ``active/`` whose sender is dead (its ``flock`` is
  gone) go back to ``queue/``, and the senders are woken to pick them up;
- acknowledged messages in ``sent/`` older than ``[sender] sent_retention``;
- leftovers of crashed writers in the client ``tmp/`` older than
  ``[reaper] tmp_max_age``, and ``dead/`` reason files whose message is gone;
- on a host that holds the server store: ``done/`` messages older than
  ``[reaper] done_retention`` and stale uploads in its ``tmp/``.

The layout knowledge stays in :mod:`dropr.spool.spool` and :mod:`dropr.store`;
this module only decides what to clean and when.
"""

import dataclasses
import logging
import time

from dropr.spool import Spool
from dropr.store import Store

log = logging.getLogger(__name__)

#: A half-made claim directory (``active/.new-*``) is a few microseconds old
#: while its sender lives; one this old belongs to a sender that died making it.
NEW_DIR_MAX_AGE = 60.0


@dataclasses.dataclass(frozen=True)
class Reaped:
    """What one pass did: messages returned to ``queue/`` and files removed."""

    recovered: int = 0
    sent: int = 0
    tmp: int = 0
    reasons: int = 0
    done: int = 0
    store_tmp: int = 0

    def __bool__(self):
        return any(dataclasses.astuple(self))


class Reaper:
    """Returns orphaned claims to ``queue/`` and expires old files in the client spool
    and (if this host has one) the server store. Runs in the reaper process under
    droprd (:class:`dropr.reaper.shell.ReaperWorker`), or in any process that
    calls :meth:`reap`."""

    def __init__(self, config, *, notices=None, clock=time.time):
        self.config = config
        self.spool = Spool(config.client.spool, fsync=config.client.fsync, clock=clock)
        self.notices = notices
        self._clock = clock

    def open(self):
        """Make the spool tree if it is missing; returns self."""
        self.spool.create()
        return self

    def reap(self):
        """One pass over the spool and the store; returns a :class:`Reaped`."""
        recovered = self._recover()
        sent, tmp, reasons = self._clean_spool()
        done, store_tmp = self._clean_store()
        reaped = Reaped(recovered, sent, tmp, reasons, done, store_tmp)
        if reaped:
            log.info("reaped: %s", reaped)
        return reaped

    def _recover(self):
        """Give the claims of dead senders back to ``queue/``; wake the senders."""
        recovered = self.spool.recover_orphans()
        self.spool.remove_stale_new_dirs(max_age=NEW_DIR_MAX_AGE)
        if recovered:
            log.warning("returned %d messages of dead senders to the queue", recovered)
            if self.notices is not None:
                self.notices.wake(self.config.client.notify_max)
        return recovered

    def _clean_spool(self):
        # With sent_retention 0 the sender unlinks at once; anything still in sent/
        # was left by a crash or an older config, and is cleared all the same.
        sent = self.spool.remove_older("sent", self.config.sender.sent_retention)
        max_age = self.config.reaper.tmp_max_age
        tmp = self.spool.remove_older("tmp", max_age)
        reasons = self.spool.remove_orphan_reasons(max_age)
        return sent, tmp, reasons

    def _clean_store(self):
        root = self.config.receiver.store
        # Only where the store lives: a client-only host must not grow an empty one.
        if root is None or not root.is_dir():
            return 0, 0
        store = Store(root, fsync=self.config.receiver.fsync, clock=self._clock)
        done = store.expire_done(self.config.reaper.done_retention)
        stale = store.remove_stale_tmp(self.config.reaper.tmp_max_age)
        store.adopt_format()  # a store made before P.CLIENT@ID names, once none is left
        return done, stale
