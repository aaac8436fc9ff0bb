"""The retry scanner: brings deferred messages back when they are due.

One :meth:`RetryScanner.scan` lists ``deferred/`` once and judges every
message by its name alone (expiry, attempts and due time travel in the name;
the creation time is in the id), so a scan costs one directory listing and no
``stat()`` per message, except for ids that dropr did not make. It gives up on
expired and too-old messages (``dead/``), leaves the messages of a peer that is
marked down where they are, and moves the due ones back to ``queue/`` with
their attempt count kept, so that their backoff keeps growing.

Before that it probes the readiness (``GET /v1/ready``) of the peers marked
down whose pause runs out soon. A peer that is not ready gets its next, longer
pause. A ready one is put on trial: its oldest batch of deferred messages goes
back to ``queue/``, the rest of its backlog stays (no whole backlog is
requeued, only to be held again ahead of other peers' messages), and its
failure count is kept, so a peer that is ready but refuses uploads is retried
once per growing pause. As soon as a sender gets a batch through to a peer
that was down (after a probe or on its own), *all* of that peer's deferred
messages go back at once, whatever their own due times, in send order.

Every move is one ``rename()`` (see :mod:`dropr.spool.spool`): a scanner that
dies mid-scan leaves each message in exactly one directory.
"""

import concurrent.futures
import logging
import os
import time

from dropr import ids
from dropr.errors import SpoolFull
from dropr.peers import Peers
from dropr.sender import transport
from dropr.spool import Spool

log = logging.getLogger(__name__)

#: Ids whose embedded time lies before this (2020-01-01) or far in the future
#: were not made by :class:`dropr.ids.IdGenerator`; their age comes from mtime.
_PLAUSIBLE_FROM_MS = 1_577_836_800_000
_FUTURE_SLACK_MS = 86_400_000
#: Seconds a scan waits for the probes in flight: a ready receiver answers well
#: within it; a slower answer (a hung one's timeout) is acted on by a later scan.
PROBE_WAIT = 0.25


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
    droprd (:class:`dropr.retry_scanner.shell.RetryScannerWorker`), or in any
    process that calls :meth:`scan`."""

    def __init__(self, config, *, notices=None, clock=time.time, boottime=None,
                 probe=transport.probe):
        self.config = config
        # Wall time for what is stored (due times, ages); the boot clock for waits.
        self.spool = Spool(config.client.spool, fsync=config.client.fsync, clock=clock)
        self.peers = Peers(self.spool, clock=clock, boottime=boottime)
        self.notices = notices
        self._clock = clock
        self._probe = probe
        self._pool = None  # the probe threads, made on first use
        self._probing = {}  # peer -> its probe in flight

    def open(self):
        """Make the spool tree if it is missing; returns self."""
        self.spool.create()
        return self

    def scan(self):
        """One pass: probe, then judge every deferred message; returns how many moved."""
        now = self._clock()
        down, revived, trials = self._check_peers()
        requeued = dead = 0
        for name in self.spool.names("deferred"):
            outcome = self._judge(name, now, down, revived, trials)
            if not outcome or not self._apply(outcome, name):
                continue
            if outcome == "requeue":
                requeued += 1
            else:
                dead += 1
        for peer in revived:
            self.peers.forget_revived(peer)  # after the moves: a crash before redoes them
        for peer, left in trials.items():
            self.peers.trial_done(peer, requeued=self.config.sender.batch_messages - left)
        if requeued or dead:
            log.info("retry scan: %d back to queue, %d given up", requeued, dead)
        if requeued and self.notices is not None:
            self.notices.wake(self.config.client.notify_max)
        return requeued + dead

    # -- messages -------------------------------------------------------------

    def _judge(self, name, now, down, revived, trials):
        """What to do with deferred ``name``: None (leave it), "requeue", or a reason."""
        now_ms = int(now * 1000)
        if name.expires_ms and name.expires_ms <= now_ms:
            return "expired"
        age = self._age(name, now)
        if age is not None and age > self.config.retry.max_age:
            return f"undelivered after {name.attempts} attempts in {format_age(age)}: too old"
        if name.peer in revived:
            return "requeue"
        if trials.get(name.peer, 0) > 0:
            trials[name.peer] -= 1  # names come in send order: the first of the backlog
            return "requeue"
        if name.peer in down:
            return None
        # A due time further ahead than any backoff: the wall clock was stepped back.
        due = name.due_ms <= now_ms or name.due_ms > now_ms + self._longest_wait_ms()
        return "requeue" if due else None

    def _longest_wait_ms(self):
        retry, sender = self.config.retry, self.config.sender
        return 1000 * (max(retry.cap * (1 + retry.jitter), sender.peer_backoff_cap) + 1)

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

    def _check_peers(self):
        """(peers marked down, peers a sender found up again, {peer: how many
        of its oldest messages to requeue as a trial}). A down peer whose pause
        ends before the next scan is probed: if it is ready, a trial batch
        goes back to queue/; the rest of its backlog waits until a sender gets
        one batch through (then all of it goes at once)."""
        down = set()
        for peer in self.peers.down():
            if peer not in self.config.peers:
                log.info("peer %s is no longer configured: forgetting its down marker", peer)
                self.peers.mark_up(peer)
                continue
            state = self.peers.state(peer)
            if not state:
                continue  # marked up meanwhile
            down.add(peer)
            if peer not in self._probing and self.peers.due_for_probe(
                    state, cap=self.config.sender.peer_backoff_cap,
                    within=self.config.retry.interval):
                self._start_probe(peer)
        trials = self._take_probes()
        revived = set(self.peers.revived())
        for peer in revived & down:
            self.peers.forget_revived(peer)  # down again already: nothing to hurry
        return down, revived - down, trials

    def _start_probe(self, peer):
        """Probe ``peer`` in a thread of its own: a peer that hangs delays no
        scan, so no other peer's messages, by its timeouts."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max(1, len(self.config.peers)), thread_name_prefix="probe")
        config = self.config.peers[peer]
        self._probing[peer] = self._pool.submit(self._probe, config,
                                                timeout=config.connect_timeout)

    def _take_probes(self):
        """Wait up to PROBE_WAIT for the probes in flight, and act on those that
        answered; {peer: trial batch size} of the peers found ready."""
        if self._probing:
            concurrent.futures.wait(self._probing.values(), timeout=PROBE_WAIT)
        trials, sender = {}, self.config.sender
        for peer, probe in list(self._probing.items()):
            if probe.done():
                del self._probing[peer]
                if self.peers.probed(peer, *probe.result(), base=sender.peer_backoff_base,
                                     cap=sender.peer_backoff_cap):
                    trials[peer] = sender.batch_messages
        return trials

    def close(self):
        """Let go of the probes in flight (their threads end with their timeouts)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._probing.clear()
