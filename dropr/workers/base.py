"""The base of every supervised worker process.

Built in the supervisor without side effects; everything process-wide
(title, signals, files, queues) happens in the child's :meth:`init_process`,
whose last act is :meth:`run`. ``run()`` is a short loop around ``tick()``
plus a heartbeat; every wait inside it is bounded.

Exit codes are the protocol between a worker and the supervisor.
"""

import logging
import os
import signal
import time

import setproctitle

from dropr.ipc import Notices

EXIT_OK = 0
EXIT_BOOT_FAILED = 3  # could not start: do not respawn in a hurry
EXIT_RECYCLE = 4  # asked to be replaced (message budget or memory spent)

log = logging.getLogger(__name__)


class Worker:
    """One supervised process. Subclasses set ``kind`` and implement ``tick()``,
    which does one bounded piece of work and returns how many messages it handled."""

    kind = "worker"
    #: seconds between reports to the supervisor
    report_interval = 1.0

    def __init__(self, config, *, number=1, ppid=None, max_messages=0):
        self.config = config
        self.number = number
        self.ppid = ppid if ppid is not None else os.getpid()
        self.max_messages = max_messages
        self.handled = 0
        self.stopping = False
        self.notices = None
        self._last_report = 0.0

    @property
    def title(self):
        """What ``ps`` shows: ``dropr: sender 2``, ``dropr: reaper``."""
        name = self.kind.replace("_", "-")
        return f"dropr: {name} {self.number}" if self.kind == "sender" else f"dropr: {name}"

    @property
    def label(self):
        """A short, file-name-safe name: ``sender-2``, ``reaper``."""
        return self.title.removeprefix("dropr: ").replace(" ", "-")

    def init_process(self):
        """In the child: title, signals, resources; then run(). Never returns."""
        setproctitle.setproctitle(self.title)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.notices = Notices.open(self.config.client.spool)
        try:
            self.open()
        except Exception:
            log.exception("%s failed to start", self.title)
            os._exit(EXIT_BOOT_FAILED)
        code = self.run()
        logging.shutdown()
        os._exit(code)

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

    def report(self, force=False):
        """Send the heartbeat and counters to the supervisor (at most once a second)."""
        now = time.monotonic()
        if self.notices is None or (not force and now - self._last_report < self.report_interval):
            return
        self._last_report = now
        self.notices.report({"pid": os.getpid(), "kind": self.kind, "number": self.number,
                             "handled": self.handled, "time": time.time()})
