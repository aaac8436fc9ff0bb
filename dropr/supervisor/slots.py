"""The supervisor's record of one named worker, and its restart policy.

A :class:`Slot` outlives the processes that fill it: ``sender 2`` keeps its
restart history across lives. Pure bookkeeping with no system calls, so the
policy (backoff, throttle, fatal, planned exits) is tested with a fake clock.

The policy sorts every unplanned exit into one of three kinds:

- **cannot boot**: the worker said so (exit ``EXIT_BOOT_FAILED``) or exited
  with a non-zero status of its own before its first report (bad config,
  port in use, import error). More than ``max_restarts`` of these within
  ``restart_window`` make the slot FATAL, with the reason in ``error``; only
  an operator starts it again. Nothing else makes a slot FATAL.
- **died young**: crashed by a signal of its own (SIGSEGV, SIGABRT, ...)
  before its first report, or stopped by the supervisor before it (silent
  at boot) or right after it (over ``max_rss`` while young). Restarted with
  the backoff; more than ``max_restarts`` within ``restart_window`` throttle
  the slot: it waits ``throttle_time`` (Postfix's 60 s) and is tried again,
  for ever.
- **died**: it ran and then died (killed, crashed, hung), or something killed
  it from outside (SIGKILL, SIGTERM: the OOM killer, an operator) at any
  time. Restarted after the capped exponential backoff, for ever; never
  FATAL, never throttled: a burst of kills delays it by ``backoff_cap`` at
  most.
"""

import collections
import dataclasses
import os
import signal

from dropr import backoff
from dropr.supervisor.states import ALIVE, WAITING, State
from dropr.workers import kinds
from dropr.workers.base import EXIT_BOOT_FAILED, EXIT_RECYCLE

# What to do when a worker the supervisor asked to stop has exited.
THEN_STOP = "stop"  # shutting down: leave it STOPPED
THEN_RESTART = "restart"  # planned replacement (operator, memory): start again at once
THEN_REMOVE = "remove"  # surplus after a reload: forget the slot
THEN_FAIL = "fail"  # hung: counts as a failure, restarted with backoff
THEN_FAIL_YOUNG = "fail-young"  # over max_rss right after boot: counts toward the throttle


def reconcile(current, workers):
    """Make the dict ``current`` (name -> Slot) match a [workers] config:
    add missing slots (STOPPED, so they get started), drop surplus ones that
    have no process, and return the surplus ones that still run, for the
    caller to stop. A slot being removed that is wanted again is kept."""
    wanted = kinds.wanted(workers)
    names = {name for _, _, name in wanted}
    surplus = []
    for name, slot in list(current.items()):
        if name in names:
            continue
        if slot.alive:
            surplus.append(slot)
        else:
            del current[name]
    for kind, number, name in wanted:
        slot = current.get(name)
        if slot is None:
            current[name] = Slot(kind, number, name)
        elif slot.then == THEN_REMOVE:
            slot.then = THEN_RESTART  # wanted again before it was gone
    return surplus


def describe_exit(status):
    """'exit 3' or 'signal 9' for a raw ``waitpid`` status (None: vanished)."""
    if status is None:
        return "vanished"
    code = os.waitstatus_to_exitcode(status)
    return f"signal {-code}" if code < 0 else f"exit {code}"


@dataclasses.dataclass
class Slot:
    """One named worker (``sender 2``, ``reaper``) as the supervisor tracks it,
    in the supervisor process. Times are on the supervisor's monotonic clock
    unless named ``*_wall``."""

    kind: str
    number: int
    name: str
    state: State = State.STOPPED
    pid: int | None = None
    started: float = 0.0
    started_wall: float = 0.0
    last_seen: float = 0.0
    last_report_wall: float = 0.0
    handled: int = 0
    handled_before: int = 0
    max_messages: int = 0
    restarts: int = 0
    lives: int = 0
    streak: int = 0
    restart_at: float = 0.0
    kill_at: float | None = None
    then: str | None = None
    last_exit: str = ""
    error: str = ""
    note: str = ""  # what the worker's last report says for the operator
    failed: bool = False
    reason: str = ""
    boot_error: str = ""
    throttled_until: float = 0.0
    throttled_until_wall: float = 0.0
    failures: collections.deque = dataclasses.field(default_factory=collections.deque)
    early_deaths: collections.deque = dataclasses.field(default_factory=collections.deque)

    @property
    def alive(self):
        """A process exists for this slot."""
        return self.state in ALIVE

    def spawned(self, pid, now, now_wall, max_messages):
        """Record a new process for the slot."""
        if self.lives:
            self.restarts += 1
        self.lives += 1
        self.state, self.pid = State.STARTING, pid
        self.started = self.last_seen = now
        self.started_wall, self.last_report_wall = now_wall, 0.0
        self.handled_before += self.handled
        self.handled, self.max_messages = 0, max_messages
        self.kill_at, self.then, self.error, self.boot_error = None, None, "", ""
        self.throttled_until = self.throttled_until_wall = 0.0

    def not_forked(self, error, now, policy):
        """fork() failed (EAGAIN, ENOMEM): no process; try again after the backoff."""
        self.last_exit = f"not started: {error}"
        self._back_off(now, policy, State.BACKOFF)

    def heard(self, report, now, now_wall):
        """A heartbeat report from the slot's process arrived (or, with
        ``error``, its last word: why it cannot boot)."""
        if report.get("error"):
            self.boot_error = str(report["error"])
            return
        self.last_seen, self.last_report_wall = now, now_wall
        self.handled = int(report.get("handled", self.handled))
        self.note = str(report.get("note") or "")[:300]
        if self.state is State.STARTING:
            self.state = State.RUNNING

    def stopping(self, then, deadline, reason=""):
        """The process was sent SIGTERM; ``then`` says what follows its exit."""
        self.state, self.then = State.STOPPING, then
        self.reason = reason or self.reason
        if self.kill_at is None or deadline < self.kill_at:
            self.kill_at = deadline

    def due(self, now):
        """Should the supervisor start a process for this slot now?"""
        if self.state is State.STOPPED:
            return True
        return self.state in WAITING and now >= self.restart_at

    def settle(self, now, policy):
        """Forget past failures once the process has stayed up long enough
        (a first report is not enough: the receiver reports before its HTTP
        workers have loaded the app, and they may not)."""
        if self.state is State.RUNNING and now - self.started >= policy.backoff_reset:
            self.streak = 0
            self.failures.clear()

    def revive(self, now):
        """An operator asked for a restart: forget the failures, start at once."""
        self.failures.clear()
        self.early_deaths.clear()
        self.streak, self.restart_at, self.error = 0, now, ""
        self.throttled_until = self.throttled_until_wall = 0.0
        if self.state is State.FATAL:
            self.state = State.BACKOFF

    def exited(self, status, now, policy, now_wall=0.0):
        """The process is gone (``status`` from waitpid, None if unknown).
        Decides the next state; returns False if the slot is to be forgotten.
        ``now_wall`` only dates a throttle for operators."""
        ran, then, code = bool(self.last_report_wall), self.then, _code(status)
        self.pid, self.kill_at, self.then = None, None, None
        self.last_exit = describe_exit(status) + (f" ({self.reason})" if self.reason else "")
        self.reason = ""
        self.failed = False
        if then == THEN_REMOVE:
            return False
        if then == THEN_STOP:
            self.state = State.STOPPED
        elif then == THEN_RESTART or code == EXIT_RECYCLE:
            self.state, self.restart_at = State.EXITED, now
        elif cannot_boot(code, ran) and then is None:
            self._boot_failed(now, policy)
        elif died_young(code, ran, then):
            self._died_young(now, policy, now_wall)
        else:
            self._back_off(now, policy, State.EXITED if ran else State.BACKOFF)
        return True

    def _boot_failed(self, now, policy):
        """Cannot boot: counts toward FATAL; ``error`` says why."""
        count = _count(self.failures, now, policy)
        why = f"{self.boot_error}; " if self.boot_error else ""
        self.error = (f"cannot boot: {why}failed to boot {count} times within "
                      f"{policy.restart_window:g}s ({self.last_exit})")
        if count > policy.max_restarts:
            self.failed, self.state = True, State.FATAL
            return
        self._back_off(now, policy, State.BACKOFF)

    def _died_young(self, now, policy, now_wall):
        """Died before or right after its first report: throttled when it keeps doing so."""
        if _count(self.early_deaths, now, policy) <= policy.max_restarts:
            self._back_off(now, policy, State.BACKOFF)
            return
        deaths = len(self.early_deaths)
        self.early_deaths.clear()  # the next round of tries starts after the pause
        self.failed, self.state = True, State.BACKOFF
        self.restart_at = self.throttled_until = now + policy.throttle_time
        self.throttled_until_wall = now_wall + policy.throttle_time if now_wall else 0.0
        self.error = (f"throttled for {policy.throttle_time:g}s: died {deaths} times within "
                      f"{policy.restart_window:g}s right after boot ({self.last_exit})")

    def _back_off(self, now, policy, state):
        """Restart after the capped exponential backoff."""
        self.failed = True
        self.streak += 1
        wait = backoff.delay(self.streak, base=policy.backoff_base,
                             factor=policy.backoff_factor, cap=policy.backoff_cap)
        self.state, self.restart_at = state, now + wait


def cannot_boot(code, ran):
    """Did the worker fail to boot? It exits with ``EXIT_BOOT_FAILED`` to say
    so; any other non-zero exit status of its own before its first report
    means the same. A signal means it was killed (OOM killer, an operator),
    which says nothing about whether it can boot."""
    if code is None or code < 0:
        return False
    return code == EXIT_BOOT_FAILED or (not ran and code not in (0, EXIT_RECYCLE))


#: Signals that come from outside (the OOM killer, an operator, a deploy):
#: they say nothing about the worker.
KILLED_FROM_OUTSIDE = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT,
                                 signal.SIGQUIT, signal.SIGHUP})


def died_young(code, ran, then):
    """Did the worker die of itself right after boot? (Any unplanned exit but
    a boot failure, a kill from outside and a death after running.)"""
    if then == THEN_FAIL_YOUNG:
        return True
    if ran:
        return False
    if then == THEN_FAIL:  # killed by us, silent since it was forked
        return True
    return code is not None and code < 0 and -code not in KILLED_FROM_OUTSIDE


def _count(times, now, policy):
    """Add ``now`` to a window of event times; how many are within restart_window."""
    times.append(now)
    while times and now - times[0] > policy.restart_window:
        times.popleft()
    return len(times)


def _code(status):
    return None if status is None else os.waitstatus_to_exitcode(status)
