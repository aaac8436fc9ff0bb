"""Peer health on the producer host: which peers are down, for how long, and
what the sender and the retry scanner do about it.

A peer that failed gets a down marker, ``peers/<peer>`` in the client spool
(a small JSON file: until when, how many failures in a row, the last error,
and ``trial`` once a probe found it ready); a sender that gets a batch
through to a peer that was down removes it and leaves a ``.revived-<peer>``
note, on which the retry scanner sends all of that peer's deferred messages
at once. Between failures the pause grows (``[sender] peer_backoff_base`` to
``peer_backoff_cap``).

Pauses run on the boot clock (``CLOCK_BOOTTIME``: never stepped, and running
on through a suspend), which every process of one boot shares; wall time is
kept beside it for people and for a marker read after a reboot.

Every change of a marker is one rename (written in the spool's ``tmp/``,
where the reaper removes what a crash leaves) or one unlink; a marker is
advice: whatever happens to it, every message stays in exactly one folder.
"""

import contextlib
import json
import logging
import os
import time

from dropr import backoff
from dropr.errors import SpoolFull
from dropr.faults import crash_point

log = logging.getLogger(__name__)

_REVIVED_PREFIX = ".revived-"


def _boottime():
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _read_boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""  # no /proc: every marker is judged by its wall time, bounded


#: This boot's id: a boot-clock time stored by another boot means nothing here.
_BOOT_ID = _read_boot_id()


class Peers:
    """The peers' health as recorded in the ``peers/`` folder of ``spool`` (a
    :class:`~dropr.spool.Spool`); used by senders, the retry scanner, the
    metrics worker and the admin commands, each in its own process. ``clock``
    is wall time (what is stored for people), ``boottime`` the clock of the
    pauses."""

    def __init__(self, spool, *, clock=time.time, boottime=None):
        self.spool = spool
        self.folder = spool.peers_dir
        self._clock = clock
        self._boottime = boottime or _boottime
        self._boot_id = _BOOT_ID

    # -- the markers ----------------------------------------------------------

    def state(self, peer):
        """The down-state of ``peer``: a dict with ``down_until`` (wall-clock s,
        for people), ``failures``, ``error``, ``trial`` (a probe found it ready:
        senders may try it), and the pause on the boot clock (see
        :meth:`pause`); an empty dict when it is up."""
        try:
            return json.loads((self.folder / peer).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def pause(self, state, *, cap):
        """Seconds left of the pause in a :meth:`state` (0 when over).

        A marker from an earlier boot (or an older dropr) has only its wall
        time, trusted no further than ``cap`` s ahead (the longest pause
        there is): a wall clock stepped back cannot stretch a pause."""
        if not state:
            return 0.0
        if state.get("boot_id") == self._boot_id and "down_until_boot" in state:
            left = state["down_until_boot"] - self._boottime()
        else:
            left = state.get("down_until", 0) - self._clock()
        return max(0.0, min(left, cap))

    def mark_down(self, peer, *, failures, error, pause=None, until=None, trial=False):
        """Record that ``peer`` failed, so no sender tries it for ``pause`` s
        (or until wall-clock ``until``); ``trial``: a probe found it ready, so
        senders may try it, while the retry scanner still holds back its
        backlog. False if the disk had no room for the record."""
        now = self._clock()
        pause = (until - now) if pause is None else pause
        record = {"down_until": now + pause, "failures": failures, "error": error,
                  "boot_id": self._boot_id, "down_until_boot": self._boottime() + pause}
        if trial:
            record["trial"] = True
        # Written in tmp/, where the reaper removes what a crash leaves behind.
        tmp = self.spool.dirs["tmp"] / f".peer-{peer}.{os.getpid()}"
        try:
            self.spool._write_note(tmp, json.dumps(record))
        except SpoolFull:
            return False  # a full disk: the marker is advice, the messages wait all the same
        crash_point("send.after_mark_down_write")
        os.rename(tmp, self.folder / peer)
        crash_point("send.after_mark_down")
        return True

    def mark_up(self, peer, *, revived=False):
        """Forget that ``peer`` was down. ``revived``: it was found up by a
        sender, so leave a note for the retry scanner to send all of the peer's
        deferred messages at once (see :meth:`revived`)."""
        try:
            (self.folder / peer).unlink()
        except FileNotFoundError:
            return
        if revived:
            # After the unlink: a crash between the two costs only the early requeue.
            with contextlib.suppress(OSError):
                os.close(os.open(self.folder / (_REVIVED_PREFIX + peer),
                                 os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))

    def revived(self):
        """Peers a sender found up again since the retry scanner last looked."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(p.name.removeprefix(_REVIVED_PREFIX) for p in self.folder.iterdir()
                          if p.name.startswith(_REVIVED_PREFIX))
        return []

    def forget_revived(self, peer):
        """The retry scanner has requeued ``peer``'s messages: drop its note."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / (_REVIVED_PREFIX + peer)).unlink()

    def down(self):
        """Names of the peers currently recorded as down."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(p.name for p in self.folder.iterdir() if not p.name.startswith("."))
        return []

    # -- the sender's decisions -------------------------------------------------

    def before_send(self, peer, *, cap):
        """(``peer``'s state, seconds a sender must hold its messages back):
        none while it is up or on trial, else what is left of its pause."""
        state = self.state(peer)
        return state, 0.0 if state.get("trial") else self.pause(state, cap=cap)

    def sent(self, peer, state):
        """A batch got through to ``peer``; ``state`` is what it was before. A
        peer that was down is up again, and the retry scanner sends all of its
        deferred messages at once."""
        if state:
            self.mark_up(peer, revived=True)
            log.info("peer %s is up again", peer)

    def failed(self, peer, state, error, *, base, cap):
        """An upload to ``peer`` failed: mark it down for the next, longer
        pause (from ``state``, what it was before the upload)."""
        failures = state.get("failures", 0) + 1
        pause = backoff.delay(failures, base=base, cap=cap)
        self.mark_down(peer, pause=pause, failures=failures, error=str(error))
        down = "down" if failures == 1 else f"still down ({failures} failures in a row)"
        log.warning("%s: %s, next try in %.1f s", error, down, pause)

    # -- the retry scanner's decisions ------------------------------------------

    def due_for_probe(self, state, *, cap, within):
        """Should a down peer be probed now: does its pause end ``within`` s
        (before the retry scanner's next scan)?"""
        return self.pause(state, cap=cap) <= within

    def probed(self, peer, ok, reason, *, base, cap):
        """Act on a probe of ``peer``. Ready: its marker turns to a trial
        (senders may try it) with the same failure count and pause, so a peer
        that is ready but refuses uploads (401, 429, 5xx, 507) is tried once
        per pause, a pause that keeps growing. Not ready: the next, longer
        pause. True if ready (and still marked down)."""
        state = self.state(peer)
        if not state:
            return False  # a sender got through meanwhile
        failures = state.get("failures", 0) + (0 if ok else 1)
        pause = backoff.delay(max(1, failures), base=base, cap=cap)
        self.mark_down(peer, pause=pause, failures=failures, trial=ok,
                       error=state.get("error", "") if ok else reason)
        if ok:
            log.info("peer %s is ready again: trying one batch", peer)
        else:
            log.debug("peer %s still down: %s", peer, reason)
        return ok

    def trial_done(self, peer, *, requeued):
        """After a scan that requeued ``requeued`` of a ready peer's messages as
        its trial batch: with nothing of it waiting, it is simply up."""
        if not requeued:
            self.mark_up(peer)
