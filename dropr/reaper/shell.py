"""The reaper worker: :class:`dropr.reaper.Reaper` under droprd."""

import time

from dropr.reaper.reaper import Reaper
from dropr.workers.base import Worker, pause


class ReaperWorker(Worker):
    """The ``dropr: reaper`` process: one clean-up pass per ``[reaper] interval``.
    Built in the supervisor; opened and run in the child."""

    kind = "reaper"

    def __init__(self, config, *, clock=time.time, **kwargs):
        super().__init__(config, **kwargs)
        self._clock = clock
        self.reaper = None

    def open(self):
        """In the child: the reaper, waking senders through this worker's notices."""
        self.reaper = Reaper(self.config, notices=self.notices, clock=self._clock).open()

    def tick(self):
        """One pass, then a pause of ``[reaper] interval``; returns the messages
        given back to ``queue/`` (files merely removed are not messages handled)."""
        recovered = self.reaper.reap().recovered
        pause(self, self.config.reaper.interval)
        return recovered
