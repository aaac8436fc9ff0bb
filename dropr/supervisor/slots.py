"""The supervisor's record of one named worker, and its restart policy.

A :class:`Slot` outlives the processes that fill it: ``sender-2`` keeps its
restart history across lives. Pure bookkeeping with no system calls, so the
policy (backoff, flapping, planned exits) is tested with a fake clock.
"""

import collections
import dataclasses
import os

from dropr import backoff
from dropr.supervisor.states import ALIVE, WAITING, State
from dropr.workers.base import EXIT_RECYCLE

# What to do when a worker the supervisor asked to stop has exited.
THEN_STOP = "stop"  # shutting down: leave it STOPPED
THEN_RESTART = "restart"  # planned replacement (operator, memory): start again at once
THEN_REMOVE = "remove"  # surplus after a reload: forget the slot
THEN_FAIL = "fail"  # hung: counts as a failure, restarted with backoff


def labels(workers):
    """The slot labels a [workers] config asks for, in start order."""
    out = [("sender", n, f"sender-{n}") for n in range(1, workers.sender + 1)]
    for kind in ("retry_scanner", "reaper", "receiver", "metrics"):
        if getattr(workers, kind):
            out.append((kind, 1, kind.replace("_", "-")))
    return out


def reconcile(current, workers):
    """Make the dict ``current`` (label -> Slot) match a [workers] config:
    add missing slots (STOPPED, so they get started), drop surplus ones that
    have no process, and return the surplus ones that still run, for the
    caller to stop. A slot being removed that is wanted again is kept."""
    wanted = labels(workers)
    names = {label for _, _, label in wanted}
    surplus = []
    for label, slot in list(current.items()):
        if label in names:
            continue
        if slot.alive:
            surplus.append(slot)
        else:
            del current[label]
    for kind, number, label in wanted:
        slot = current.get(label)
        if slot is None:
            current[label] = Slot(kind, number, label)
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
    """One named worker (``sender-2``, ``reaper``) as the supervisor tracks it,
    in the supervisor process. Times are on the supervisor's monotonic clock
    unless named ``*_wall``."""

    kind: str
    number: int
    label: str
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
    failed: bool = False
    reason: str = ""
    failures: collections.deque = dataclasses.field(default_factory=collections.deque)

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
        self.kill_at, self.then, self.error = None, None, ""

    def heard(self, report, now, now_wall):
        """A heartbeat report from the slot's process arrived."""
        self.last_seen, self.last_report_wall = now, now_wall
        self.handled = int(report.get("handled", self.handled))
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
        """Forget past failures once the process has stayed up long enough."""
        if self.state is State.RUNNING and now - self.started >= policy.backoff_reset:
            self.streak = 0

    def revive(self, now):
        """An operator asked for a restart: forget the failures, start at once."""
        self.failures.clear()
        self.streak, self.restart_at, self.error = 0, now, ""
        if self.state is State.FATAL:
            self.state = State.BACKOFF

    def exited(self, status, now, policy):
        """The process is gone (``status`` from waitpid, None if unknown).
        Decides the next state; returns False if the slot is to be forgotten."""
        ran, then = bool(self.last_report_wall), self.then
        self.pid, self.kill_at, self.then = None, None, None
        self.last_exit = describe_exit(status) + (f" ({self.reason})" if self.reason else "")
        self.reason = ""
        self.failed = False
        if then == THEN_REMOVE:
            return False
        if then == THEN_STOP:
            self.state = State.STOPPED
        elif then == THEN_RESTART or _code(status) == EXIT_RECYCLE:
            self.state, self.restart_at = State.EXITED, now
        else:
            self._failed(ran, now, policy)
        return True

    def _failed(self, ran, now, policy):
        self.failed = True
        self.failures.append(now)
        while self.failures and now - self.failures[0] > policy.restart_window:
            self.failures.popleft()
        if len(self.failures) > policy.max_restarts:
            self.state = State.FATAL
            self.error = (f"exited {len(self.failures)} times within "
                          f"{policy.restart_window:g}s ({self.last_exit})")
            return
        self.streak += 1
        wait = backoff.delay(self.streak, base=policy.backoff_base,
                             factor=policy.backoff_factor, cap=policy.backoff_cap)
        self.state = State.EXITED if ran else State.BACKOFF
        self.restart_at = now + wait


def _code(status):
    return None if status is None else os.waitstatus_to_exitcode(status)
