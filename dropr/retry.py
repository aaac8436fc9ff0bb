"""The retry scanner: brings deferred messages back when they are due.

One :meth:`RetryScanner.scan` lists ``deferred/`` once and judges every
message by its name alone (expiry, attempts and due time travel in the name;
the creation time is in the id), so a scan costs one directory listing and no
``stat()`` per message, except for ids that dropr did not make. It gives up on
expired and too-old messages (``dead/``), leaves the messages of a peer that is
marked down where they are, and moves the due ones back to ``queue/`` with
their attempt count kept, so that their backoff keeps growing.

Before that it probes the peers marked down whose marker runs out soon: a peer
that answers its health check is marked up and *all* of its deferred messages
go back at once, whatever their own due times, so delivery resumes at once.

Every move is one ``rename()`` (see :mod:`dropr.spool.spool`): a scanner that
dies mid-scan leaves each message in exactly one directory.
"""

import logging
import os
import time

from dropr import backoff, ids, transport
from dropr.errors import SpoolFull
from dropr.spool import Spool

log = logging.getLogger(__name__)

#: Ids whose embedded time lies before this (2020-01-01) or far in the future
#: were not made by :class:`dropr.ids.IdGenerator`; their age comes from mtime.
_PLAUSIBLE_FROM_MS = 1_577_836_800_000
_FUTURE_SLACK_MS = 86_400_000


def format_age(seconds):
    """``93784`` -> ``'1d 2h'``: the two largest units, for reasons operators read."""
    seconds = max(0, int(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


class RetryScanner:
    """Moves due messages from ``deferred/`` back to ``queue/``, expires old ones to
    ``dead/`` and probes peers marked down. Runs in the retry-scanner process under
    droprd (:class:`dropr.workers.retry_scanner.RetryScannerWorker`), or in any
    process that calls :meth:`scan`."""

    def __init__(self, config, *, notices=None, clock=time.time, probe=transport.probe):
        self.config = config
        self.spool = Spool(config.client.spool, fsync=config.client.fsync, clock=clock)
        self.notices = notices
        self._clock = clock
        self._probe = probe
        #: peer -> (failed probes in a row, time before which not to probe again)
        self._probe_backoff = {}

    def open(self):
        """Make the spool tree if it is missing; returns self."""
        self.spool.create()
        return self

    def scan(self):
        """One pass: probe, then judge every deferred message; returns how many moved."""
        now = self._clock()
        down, revived = self._check_peers(now)
        requeued = dead = 0
        for name in self.spool.names("deferred"):
            outcome = self._judge(name, now, down, revived)
            if not outcome or not self._apply(outcome, name):
                continue
            if outcome == "requeue":
                requeued += 1
            else:
                dead += 1
        if requeued or dead:
            log.info("retry scan: %d back to queue, %d given up", requeued, dead)
        if requeued and self.notices is not None:
            self.notices.wake(self.config.client.notify_max)
        return requeued + dead

    # -- messages -------------------------------------------------------------

    def _judge(self, name, now, down, revived):
        """What to do with deferred ``name``: None (leave it), "requeue", or a reason."""
        now_ms = int(now * 1000)
        if name.expires_ms and name.expires_ms <= now_ms:
            return "expired"
        age = self._age(name, now)
        if age is not None and age > self.config.retry.max_age:
            return f"undelivered after {name.attempts} attempts in {format_age(age)}: too old"
        if name.peer in revived:
            return "requeue"
        if down.get(name.peer, 0) > now:
            return None
        return "requeue" if name.due_ms <= now_ms else None

    def _age(self, name, now):
        """Seconds since ``name`` was made: from its id, else from the file's mtime."""
        created_ms = ids.timestamp_ms(name.id)
        if created_ms is not None and (
                _PLAUSIBLE_FROM_MS <= created_ms <= now * 1000 + _FUTURE_SLACK_MS):
            return now - created_ms / 1000
        try:
            return now - os.stat(self.spool.dirs["deferred"] / str(name)).st_mtime
        except FileNotFoundError:
            return None  # moved away meanwhile (an operator); nothing to judge

    def _apply(self, outcome, name):
        """Carry out ``outcome``; False if the file was gone (moved by someone else)."""
        try:
            if outcome == "requeue":
                self.spool.requeue("deferred", name, due_ms=0)
            else:
                self.spool.expire("deferred", name, outcome)
                log.warning("message %s for %s/%s given up: %s",
                            name.id, name.peer, name.channel, outcome)
        except FileNotFoundError:
            return False
        except SpoolFull as e:
            log.warning("message %s is to go to dead/ (%s), but %s: left in deferred/",
                        name.id, outcome, e)
            return False
        return True

    # -- peers ----------------------------------------------------------------

    def _check_peers(self, now):
        """({peer: down_until} of peers still down, {peers found up by a probe})."""
        down, revived = {}, set()
        for peer in self.spool.down_peers():
            if peer not in self.config.peers:
                log.info("peer %s is no longer configured: forgetting its down marker", peer)
                self.spool.mark_peer_up(peer)
                continue
            until = self.spool.peer_state(peer).get("down_until", 0)
            if self._should_probe(peer, until, now) and self._probe_peer(peer, now):
                revived.add(peer)
            else:
                down[peer] = until
        for gone in set(self._probe_backoff) - set(down):
            del self._probe_backoff[gone]  # marked up by a sender meanwhile
        return down, revived

    def _should_probe(self, peer, until, now):
        """Probe when the marker runs out before the next scan, unless a probe
        failed recently (a marker nobody extends would be probed every scan)."""
        if until > now + self.config.retry.interval:
            return False
        _, not_before = self._probe_backoff.get(peer, (0, 0.0))
        return now >= not_before

    def _probe_peer(self, peer, now):
        """Probe ``peer``; on success mark it up. True if it answered."""
        config = self.config.peers[peer]
        ok, reason = self._probe(config, timeout=config.connect_timeout)
        if ok:
            self._probe_backoff.pop(peer, None)
            self.spool.mark_peer_up(peer)
            log.info("peer %s answers its health check again: marked up", peer)
            return True
        failures = self._probe_backoff.get(peer, (0, 0.0))[0] + 1
        wait = backoff.delay(failures, base=self.config.sender.peer_backoff_base,
                             cap=self.config.sender.peer_backoff_cap)
        self._probe_backoff[peer] = (failures, now + wait)
        log.debug("peer %s still down: %s", peer, reason)
        return False

