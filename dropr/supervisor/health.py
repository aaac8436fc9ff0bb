"""The supervisor's judgement of its living workers: psutil and heartbeats.

:class:`Health` only judges; the arbiter acts on its verdicts (terminate and
replace). A worker is checked for being gone or a zombie, for its resident
memory against ``max_rss``, and for the age of its last report against the
heartbeat timeout (or its kind's longer bound: ``Kind.silence_limit`` in
:mod:`dropr.workers.kinds`).
"""

import contextlib
import dataclasses

import psutil

from dropr.supervisor.slots import THEN_FAIL, THEN_FAIL_YOUNG, THEN_RESTART
from dropr.supervisor.states import State

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What should happen to a worker: ``gone`` (vanished without a waitpid),
    else stop it, with ``then`` following its exit, for ``why``."""

    gone: bool = False
    then: str = ""
    why: str = ""


GONE = Verdict(gone=True)


class Health:
    """Watches the worker processes of one supervisor, in the supervisor
    process; keeps a psutil handle per pid so CPU and memory are cheap to read."""

    def __init__(self):
        self._procs = {}

    def watch(self, pid):
        """Start watching a freshly forked worker."""
        with contextlib.suppress(psutil.Error):
            self._procs[pid] = psutil.Process(pid)

    def forget(self, pid):
        """Stop watching a worker that has been reaped."""
        self._procs.pop(pid, None)

    def rss(self, pid):
        """Resident bytes of ``pid``; False for a zombie or unknown (reaped next
        cycle); None if it is gone."""
        proc = self._procs.get(pid)
        try:
            if proc is None or proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return proc.memory_info().rss
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            return False

    def judge(self, slot, now, policy, silence_limit):
        """The :class:`Verdict` on a living ``slot``, or None if it is healthy.

        Over ``max_rss`` is a planned recycle when the worker had been up
        ``backoff_reset`` s, and a death right after boot otherwise, so that a
        limit below a fresh worker's size ends in a throttle (see
        :mod:`dropr.supervisor.slots`) and not in a fork storm."""
        rss = self.rss(slot.pid)
        if rss is None:
            return GONE
        if rss is False or slot.state is State.STOPPING:
            return None
        if policy.max_rss and rss > policy.max_rss * MiB:
            young = now - slot.started < policy.backoff_reset
            return Verdict(then=THEN_FAIL_YOUNG if young else THEN_RESTART,
                           why=f"RSS {rss / MiB:.0f} MiB over max_rss {policy.max_rss}")
        if now - slot.last_seen > silence_limit:
            return Verdict(then=THEN_FAIL, why=f"silent for {now - slot.last_seen:.1f}s")
        return None
