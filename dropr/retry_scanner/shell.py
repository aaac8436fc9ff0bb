"""The retry-scanner worker: :class:`dropr.retry_scanner.scanner.RetryScanner` under droprd."""

import os
import time

from dropr.retry_scanner.scanner import RetryScanner
from dropr.sender import transport
from dropr.workers.base import Worker

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


class RetryScannerWorker(Worker):
    """The ``dropr: retry-scanner`` process: one scan of ``deferred/`` per
    ``[retry] interval``. Built in the supervisor; opened and run in the child."""

    kind = "retry_scanner"

    def __init__(self, config, *, clock=time.time, probe=transport.probe, **kwargs):
        super().__init__(config, **kwargs)
        self._clock = clock
        self._probe = probe
        self.scanner = None

    def open(self):
        """In the child: the scanner, waking senders through this worker's notices."""
        self.scanner = RetryScanner(self.config, notices=self.notices, clock=self._clock,
                                    probe=self._probe).open()

    def tick(self):
        """One scan, then a pause of ``[retry] interval``; returns messages moved."""
        moved = self.scanner.scan()
        pause(self, self.config.retry.interval)
        return moved

    def close(self):
        """Let go of the probes in flight."""
        if self.scanner is not None:
            self.scanner.close()
