"""The legacy-spool worker: :class:`dropr.legacy.takeover.Takeover` under droprd."""

import logging

from dropr.legacy.takeover import PhpWakeups, Takeover
from dropr.workers.base import Worker

log = logging.getLogger(__name__)


class LegacySpoolWorker(Worker):
    """The ``dropr: legacy-spool`` process: moves the messages of the PHP
    dropr client spool at ``[legacy] spool`` into ours as soon as a PHP
    producer's wake-up arrives (and at least every ``[sender] wait``), and
    wakes our senders. Built in the supervisor; opened and run in the child."""

    kind = "legacy_spool"

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.takeover = None
        self.wakeups = None

    def open(self):
        """In the child: our spool, and the PHP client's wake-up queue."""
        self.takeover = Takeover(self.config).open()
        self.wakeups = PhpWakeups(self.config.legacy.spool)

    def tick(self):
        """One pass over the PHP spool, then a wait for its next wake-up."""
        moved = self.takeover.pass_once()
        self.note = "; ".join(f"{n} message(s) left in the PHP spool: {why}"
                              for why, n in sorted(self.takeover.left.items()))
        if moved and self.notices is not None:
            self.notices.wake(max(1, self.config.client.notify_max))
        if not moved:
            self.wakeups.wait(min(self.config.sender.wait, 1.0))
        return moved
