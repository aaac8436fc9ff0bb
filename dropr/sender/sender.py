"""The sender: claims a batch from the client spool, uploads it to its peers,
and moves every claimed file by its result.

    stored / duplicate        -> sent/ (or unlinked when sent_retention = 0)
    rejected                  -> dead/, with the receiver's reason
    missing from the answer   -> deferred/, one attempt counted
    peer failed (PeerError)   -> deferred/ with per-message backoff; peer marked down
    peer marked down          -> deferred/ until the peer's pause ends, no attempt counted
    batch refused (4xx)       -> split in halves and tried again at once;
                                 a single message -> dead/
    batch forbidden (403)     -> split by channel and tried again at once; a
                                 channel refused alone -> deferred/, one attempt
                                 counted, the peer not marked down
    expired, or unknown peer  -> dead/, never sent

Every move is one rename out of the sender's locked ``active/`` directory, so a
sender that dies mid-batch leaves its claims for the reaper (or the next
sender) to return to ``queue/``; the receiver drops the duplicates that a lost
answer causes.
"""

import concurrent.futures
import logging
import os
import queue
import random
import signal
import time

from dropr import backoff
from dropr.errors import BatchRefused, Forbidden, PeerError, SpoolFull, Unreadable
from dropr.faults import crash_point
from dropr.ipc import Notices
from dropr.peers import Peers
from dropr.results import DUPLICATE, REJECTED, STORED
from dropr.spool import Spool
from dropr.sender.transport import Transport, check_client_certs

log = logging.getLogger(__name__)

#: Batches a peer's lane holds: one on the wire and the next one claimed.
LANE_DEPTH = 2
#: Seconds between looks for a wake-up while waiting for a lane.
LANE_POLL = 0.05


class Sender:
    """Delivers spooled messages to their peers; runs in a sender process
    (under droprd, or alone as ``dropr send``). Building it has no side effects;
    :meth:`open` acquires the claim directory."""

    def __init__(self, config, *, name="sender 1", notices=None, counts=None,
                 clock=time.time, boottime=None, rand=random.random):
        self.config = config
        self.name = name  # the worker's name: in its logs and its claim folder's
        self.notices = notices
        self.counts = counts  # a counts.SenderCounts, or None: not counted
        # Wall time for what is stored (due times); the boot clock for waits.
        self.spool = Spool(config.client.spool, fsync=config.client.fsync, clock=clock)
        self.peers = Peers(self.spool, clock=clock, boottime=boottime)
        self._clock = clock
        self._rand = rand
        self._active = None
        self._transports = {}
        self._tokens = {}
        self._lanes = {}  # peer -> its upload thread for step(), made on first use
        self._lanes_in_flight = {}  # peer -> batches in its lane, not yet collected
        self._futures = {}  # upload in a lane -> its peer
        self._answered = queue.SimpleQueue()  # (peer, part, results) from the lanes

    def open(self):
        """Read the peers' tokens, make the spool tree, return orphaned claims
        to ``queue/``, and lock a claim directory of our own. Returns self.
        ConfigError (naming the key) for a token file it cannot read: better
        not to start than to claim messages it cannot deliver."""
        peers = self.config.peers
        self._tokens = {name: self.config.token_of(peer) for name, peer in peers.items()}
        check_client_certs(self.config)  # a bad certfile: stop before claiming
        self.spool.create()
        recovered = self.spool.recover_orphans()
        if recovered:
            log.info("%s: returned %d orphaned messages to queue/", self.name, recovered)
        self._active = self.spool.open_active(self.name)
        return self

    def run_once(self):
        """Claim one batch, deliver it grouped by peer, move every claimed file by
        its result. Returns how many messages it moved (0: nothing due)."""
        moved, by_peer = self._claim()
        self._deliver_all(by_peer)
        return moved

    @property
    def busy(self):
        """True while an upload put on the wire by :meth:`step` is unsettled."""
        return bool(self._futures) or not self._answered.empty()

    def drain(self, *, stop=lambda: False):
        """Deliver batches with :meth:`step` until nothing is due or ``stop()``
        is true; returns the total claimed. Nothing is left in flight."""
        total = 0
        try:
            while True:
                moved = self.step(claim=not stop())
                total += moved
                if not moved and not self.busy:
                    return total
        finally:
            self.flush()

    def step(self, *, claim=True):
        """One step: settle the uploads that finished, claim the next batch and
        put each peer's share on the wire in that peer's own lane (a thread
        with its own connection), without waiting for it.

        Peers never wait for each other: a peer that hangs or is down ties up
        its own lane only. A lane holds at most ``LANE_DEPTH`` batches (one on
        the wire, the next claimed behind it, so claiming and uploading still
        overlap); while it is full, that peer's messages stay in ``queue/``
        and the claim takes the other peers' messages after them. Within a
        lane the batches go one at a time, in order, so the peer's state is
        judged as in :meth:`run_once`; an answered message stays in
        ``active/`` until it is settled, so each is in exactly one directory
        throughout. When nothing could be claimed while uploads are in
        flight, waits up to ``[sender] wait`` for one of them to finish or
        for a producer's wake-up. Returns how many it claimed."""
        self._collect()
        moved = 0
        full = {peer for peer, n in self._lanes_in_flight.items() if n >= LANE_DEPTH}
        # Every lane full: a claim would only walk the whole listing (and list
        # queue/ again) to skip every message in it. Every peer down and in its
        # pause: a claim would only park what it takes in deferred/ until the
        # pause ends; it waits in queue/ for that as well.
        if claim and not full.issuperset(self.config.peers) and not self._all_held():
            moved, by_peer = self._claim(skip_peers=full)
            for peer, batch in by_peer.items():
                self._submit(peer, batch)
        if not moved and self._futures:
            self._wait_for_lanes()
            self._collect()
        return moved

    def _all_held(self):
        """Whether every peer is down and in its pause."""
        return self._held_for() > 0

    def _held_for(self):
        """Seconds until the first peer's pause ends: 0 if a peer is not in one."""
        cap = self.config.sender.peer_backoff_cap
        return min((self.peers.before_send(peer, cap=cap)[1] for peer in self.config.peers),
                   default=0.0)

    def _wait_for_lanes(self):
        """Wait up to ``[sender] wait`` for an upload to finish, but no longer
        than until a producer's wake-up: a peer that takes long to answer must
        not make the messages put meanwhile for others wait."""
        deadline = time.monotonic() + self.config.sender.wait
        while (left := deadline - time.monotonic()) > 0:
            done, _ = concurrent.futures.wait(self._futures, timeout=min(LANE_POLL, left),
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if done or (self.notices is not None and self.notices.woken()):
                return

    def flush(self):
        """Wait for every upload in flight and settle its answers."""
        try:
            concurrent.futures.wait(self._futures)
        finally:
            self._collect()

    def _submit(self, peer, batch):
        """Put ``peer``'s share of a batch in that peer's lane."""
        lane = self._lanes.get(peer)
        if lane is None:
            lane = self._lanes[peer] = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"{self.name}-{peer}")
        self._lanes_in_flight[peer] = self._lanes_in_flight.get(peer, 0) + 1
        form = self._transport(peer).prepare(batch)  # here, not in the lane: see prepare()
        future = lane.submit(self._deliver, peer, batch,
                             lambda *answer: self._answered.put(answer), form)
        self._futures[future] = peer

    def _collect(self):
        """Settle the answers of finished uploads; an upload's error is ours."""
        errors = []
        for future in [f for f in self._futures if f.done()]:
            peer = self._futures.pop(future)
            self._lanes_in_flight[peer] -= 1
            if not future.cancelled() and future.exception() is not None:
                errors.append(future.exception())
        while not self._answered.empty():
            self._settle(*self._answered.get())
        if errors:
            raise errors[0]

    def _claim(self, skip_peers=frozenset()):
        """Claim a batch (none of the messages of ``skip_peers``); (how many,
        {peer: batch}) of those to deliver. The expired and those of unknown
        peers go to dead/ here."""
        sender = self.config.sender
        now_ms = int(self._clock() * 1000)
        claimed = self.spool.claim(self._active, limit=sender.batch_messages,
                                   max_bytes=sender.batch_bytes, now_ms=now_ms,
                                   skip_peers=skip_peers)
        by_peer = {}
        for item in claimed:
            name = item[0]
            if name.expires_ms and name.expires_ms <= now_ms:
                self._dead(item, "expired")
            elif name.peer not in self.config.peers:
                self._dead(item, f"unknown peer {name.peer}")
            else:
                by_peer.setdefault(name.peer, []).append(item)
        return len(claimed), by_peer

    def _deliver_all(self, by_peer, settle=None):
        """Deliver each peer's batch; ``settle(peer, part, results)`` takes each
        answer (default: :meth:`_settle`, at once)."""
        for peer, batch in by_peer.items():
            self._deliver(peer, batch, settle or self._settle)

    def wait(self):
        """Block for a wake-up notice up to ``[sender] wait`` seconds (without
        notices, sleep that long). True if woken by a notice. While every peer
        is in its pause, sleep until the first pause ends instead (at most as
        long): what producers put meanwhile waits in queue/ for it anyway, and
        their wake-ups are taken after it."""
        held = self._held_for()
        if held > 0:
            time.sleep(min(held, self.config.sender.wait))
            return False
        if self.notices is not None:
            return self.notices.wait(self.config.sender.wait)
        time.sleep(self.config.sender.wait)
        return False

    def close(self):
        """Return claimed-but-unfinished files to ``queue/``, release the claim
        directory's lock and close the connections. The uploads on the wire
        are finished and settled first, so their answers are not thrown away;
        a batch still waiting in a lane is not sent."""
        for future in self._futures:
            future.cancel()  # not on the wire yet: its batch goes back to queue/ below
        try:
            self.flush()
        finally:
            lanes, self._lanes = self._lanes, {}
            for lane in lanes.values():
                lane.shutdown()
            self._release()

    def _release(self):
        if self._active is not None:
            returned = self.spool.unclaim(self._active)
            if returned:
                log.info("%s: returned %d claimed messages to queue/", self.name, returned)
            self._active.close()
            self._active = None
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()

    # -- one peer's share of a batch ----------------------------------------

    def _deliver(self, peer, batch, settle=None, form=None):
        # A stack of sub-batches, first half on top: a refused batch is split and
        # its halves are tried at once, in send order. ``form``: the body's
        # fixed parts of ``batch`` (Transport.prepare), if made already.
        pending = [batch]
        while pending:
            part = pending.pop()
            state, pause = self.peers.before_send(peer, cap=self.config.sender.peer_backoff_cap)
            if pause > 0:
                self._hold(peer, part, pause)
                continue
            try:
                results = self._transport(peer).send(part, form=form)
            except BatchRefused as e:
                pending += self._split_refused(peer, part, e)
                continue
            except Forbidden as e:
                pending += self._split_forbidden(part, e)
                continue
            except Unreadable as e:
                pending += self._drop_unreadable(part, e)
                continue
            except PeerError as e:
                self._peer_failed(peer, part, state, e)
                continue
            crash_point("send.after_upload")
            self.peers.sent(peer, state)
            (settle or self._settle)(peer, part, results)

    def _split_refused(self, peer, part, error):
        """The sub-batches still to try after ``part`` was refused as a whole."""
        if len(part) == 1:
            self._dead(part[0], f"refused by peer {peer}: {error}")
            return []
        log.debug("batch of %d to %s refused (%s): splitting", len(part), peer, error)
        middle = len(part) // 2
        return [part[middle:], part[:middle]]

    def _split_forbidden(self, part, error):
        """The sub-batches still to try after ``part`` was answered 403: one per
        channel, in send order. A single channel refused alone waits in
        ``deferred/`` with its messages' own backoff (a right can be granted
        later, so they are not given up), and the peer is not marked down: the
        other channels of the same token are fine."""
        channels = {}
        for item in part:
            channels.setdefault(item[0].channel, []).append(item)
        if len(channels) > 1:
            return list(reversed(channels.values()))  # a stack: the first channel on top
        log.warning("%s: %d messages deferred", error, len(part))
        for name, path, _ in part:
            self.spool.to_deferred(path, name, due_ms=self._retry_due_ms(name))
        return []

    def _drop_unreadable(self, part, error):
        """The sub-batch still to try: ``part`` without the message that cannot
        be read, which goes to dead/ (if it is there at all)."""
        log.error("%s", error)
        rest = []
        for item in part:
            if item[0].id != error.message_id:
                rest.append(item)
            elif os.path.exists(item[1]):
                self._dead(item, str(error))
        return [rest] if rest else []

    def _settle(self, peer, part, results):
        counts = {STORED: 0, DUPLICATE: 0, REJECTED: 0, "deferred": 0}
        keep = self.config.sender.sent_retention > 0
        for name, path, size in part:
            result = results.get(name.id)
            status = result.get("status") if isinstance(result, dict) else None
            if status in (STORED, DUPLICATE):
                self.spool.to_sent(path, keep=keep)
            elif status == REJECTED:
                reason = result.get("error") or "no reason given"
                self._dead((name, path, size), f"rejected by peer {peer}: {reason}")
            else:
                status = "deferred"  # no (valid) answer for it: nothing known, try again
                self.spool.to_deferred(path, name, due_ms=self._retry_due_ms(name))
            counts[status] += 1
        self._count(peer, stored=counts[STORED], duplicate=counts[DUPLICATE],
                    deferred=counts["deferred"])  # rejected: counted dead by _dead()
        log.debug("batch of %d to %s: %s", len(part), peer,
                  ", ".join(f"{n} {k}" for k, n in counts.items() if n))

    def _peer_failed(self, peer, part, state, error):
        """Mark ``peer`` down, then defer ``part`` with per-message backoff."""
        sender = self.config.sender
        self.peers.failed(peer, state, error, base=sender.peer_backoff_base,
                          cap=sender.peer_backoff_cap)
        for name, path, _ in part:
            self.spool.to_deferred(path, name, due_ms=self._retry_due_ms(name))
        self._count(peer, deferred=len(part))

    def _hold(self, peer, part, pause):
        """Park ``part`` until its peer's pause ends; it was not tried, so no attempt counts."""
        due_ms = int((self._clock() + pause) * 1000)
        for name, path, _ in part:
            self.spool.to_deferred(path, name, due_ms=due_ms, count_attempt=False)
        log.debug("held %d messages for %s: peer down", len(part), peer)

    def _retry_due_ms(self, name):
        retry = self.config.retry
        pause = backoff.delay(name.attempts + 1, base=retry.base, factor=retry.factor,
                              cap=retry.cap, jitter=retry.jitter, rand=self._rand)
        return int((self._clock() + pause) * 1000)

    def _dead(self, item, reason):
        name, path, _ = item
        try:
            self.spool.to_dead(path, name, reason)
        except SpoolFull as e:
            # No room to write why: judge it again on a later attempt rather than crash.
            self.spool.to_deferred(path, name, due_ms=self._retry_due_ms(name),
                                   count_attempt=False)
            log.warning("message %s is to go to dead/ (%s), but %s: deferred", name.id, reason, e)
            return
        log.warning("message %s for %s/%s is dead: %s", name.id, name.peer, name.channel, reason)
        self._count(name.peer, dead=1)

    def _count(self, peer, **results):
        if self.counts is not None:
            self.counts.add(peer, **results)

    def _transport(self, peer):
        transport = self._transports.get(peer)
        if transport is None:
            sender = self.config.sender
            transport = Transport(self.config.peer(peer), client=self.config.client.name,
                                  token=self._tokens.get(peer, ""),
                                  backoff_base=sender.peer_backoff_base,
                                  backoff_cap=sender.peer_backoff_cap)
            self._transports[peer] = transport
        return transport


def main(config, *, once=False):
    """``dropr send``: one Sender in the foreground. ``once``: deliver everything
    due, then return. Otherwise loop until SIGTERM or SIGINT, which end the loop
    after the current batch. Returns the exit code (0)."""
    signals = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: signals.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    notices = None if once else Notices.open(config.client.spool)
    sender = Sender(config, name="send", notices=notices).open()
    try:
        while not signals:
            if sender.drain(stop=lambda: bool(signals)) == 0:
                if once:
                    break
                sender.wait()
    finally:
        sender.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0
