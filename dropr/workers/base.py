"""The base of every supervised worker process.

Built in the supervisor without side effects; everything process-wide
(title, signals, files, queues) happens in the child's :meth:`init_process`,
whose last act is :meth:`run`. ``run()`` is a short loop around ``tick()``
plus a heartbeat; every wait inside it is bounded.

Exit codes are the protocol between a worker and the supervisor.

A worker must not outlive its supervisor: the child asks the kernel for a
signal when its parent dies (``PR_SET_PDEATHSIG``, by default SIGKILL, which
loses nothing because every message is always in exactly one directory), and
``run()`` also checks ``getppid()`` each cycle, for systems without prctl.
"""

import ctypes
import ctypes.util
import logging
import os
import signal
import time

import setproctitle

from dropr.ipc import Notices
from dropr.workers import kinds

EXIT_OK = 0
EXIT_BOOT_FAILED = 3  # could not start: do not respawn in a hurry
EXIT_RECYCLE = 4  # asked to be replaced (message budget or memory spent)

PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


#: Longest uninterrupted sleep between ticks: bounds how late a stop request,
#: a vanished supervisor or a due heartbeat is noticed.
PAUSE_STEP = 0.05


def pause(worker, seconds, *, clock=time.monotonic):
    """Sleep ``seconds`` in short steps, ending early when ``worker`` is told to
    stop or its supervisor is gone, and keeping its heartbeat going meanwhile
    (an interval longer than the heartbeat timeout must not look like a hang)."""
    deadline = clock() + seconds
    while not worker.stopping and os.getppid() == worker.ppid:
        left = deadline - clock()
        if left <= 0:
            return
        time.sleep(min(PAUSE_STEP, left))
        worker.report()


def set_parent_death_signal(sig):
    """Ask Linux to send ``sig`` to this process when its parent dies; False
    where prctl is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Worker:
    """One supervised process. Subclasses set ``kind`` (a key of
    :mod:`dropr.workers.kinds`) and implement ``tick()``, which does one
    bounded piece of work and returns how many messages it handled."""

    kind = "worker"
    #: seconds between reports to the supervisor
    report_interval = kinds.REPORT_INTERVAL
    #: what the kernel sends this worker when the supervisor dies
    parent_death_signal = signal.SIGKILL
    #: report once open() succeeded (the supervisor then shows it as running);
    #: a kind that is only ready later reports from its own loop instead
    report_on_boot = True

    def __init__(self, config, *, number=1, ppid=None, max_messages=0):
        self.config = config
        self.number = number
        self.ppid = ppid if ppid is not None else os.getpid()
        self.max_messages = max_messages
        self.handled = 0
        self.note = ""  # a short word for the operator, shown by droprd status
        self.stopping = False
        self.notices = None
        self._last_report = 0.0

    @property
    def title(self):
        """What ``ps`` shows: ``dropr: sender 2``, ``dropr: reaper``."""
        return kinds.kind(self.kind).title(self.number)

    @property
    def name(self):
        """The worker's name, as ``ps`` shows it after ``dropr: ``: ``sender 2``, ``reaper``."""
        return kinds.kind(self.kind).name_of(self.number)

    def init_process(self):
        """In the child: title, signals, resources; then run(). Never returns."""
        set_parent_death_signal(self.parent_death_signal)
        if os.getppid() != self.ppid:
            os._exit(EXIT_OK)  # the supervisor died before the kernel could be told
        setproctitle.setproctitle(self.title)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.notices = Notices.open(self.config.client.spool)
        try:
            self._crash_if_asked()
            self.open()
        except Exception as e:
            log.exception("%s failed to start", self.title)
            self.report_boot_error(str(e) or type(e).__name__)
            logging.shutdown()
            os._exit(EXIT_BOOT_FAILED)
        if self.report_on_boot:
            self.report(force=True)
        code = self.run()
        logging.shutdown()
        os._exit(code)

    def _crash_if_asked(self):
        crash = self.config.supervisor.test_crash
        if crash and kinds.canonical_name(crash) in (self.kind, self.name):
            raise RuntimeError(f"[supervisor] test_crash = {crash!r}: failing at start on purpose")

    def _handle_stop(self, signum, frame):
        self.stopping = True

    def open(self):
        """Acquire what the worker needs (called in the child before run())."""

    def close(self):
        """Release it again (called in the child when run() ends)."""

    def tick(self):
        """One bounded piece of work; returns how many messages it handled."""
        raise NotImplementedError

    def run(self):
        """Tick until told to stop, orphaned, or due for recycling; returns the exit code."""
        code = EXIT_OK
        try:
            while not self.stopping:
                if os.getppid() != self.ppid:
                    log.warning("%s: supervisor is gone, exiting", self.title)
                    break
                self.handled += self.tick() or 0
                self.report()
                if self.max_messages and self.handled >= self.max_messages:
                    code = EXIT_RECYCLE
                    break
        finally:
            self.close()
            self.report(force=True)
        return code

    def report_boot_error(self, text):
        """Tell the supervisor why this worker cannot boot (just before it
        exits with EXIT_BOOT_FAILED); status shows it."""
        if self.notices is not None:
            self.notices.report({"pid": os.getpid(), "kind": self.kind, "number": self.number,
                                 "error": text[:500], "time": time.time()})

    def report(self, force=False):
        """Send the heartbeat and counters to the supervisor (at most once a second)."""
        now = time.monotonic()
        if self.notices is None or (not force and now - self._last_report < self.report_interval):
            return
        self._last_report = now
        self.notices.report({"pid": os.getpid(), "kind": self.kind, "number": self.number,
                             "handled": self.handled, "time": time.time(), "note": self.note})
