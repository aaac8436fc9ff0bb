"""The retry-scanner worker: :class:`dropr.retry_scanner.scanner.RetryScanner` under droprd."""

import time

from dropr.retry_scanner.scanner import RetryScanner
from dropr.sender import transport
from dropr.workers.base import Worker, pause

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
