"""The sender worker: one :class:`dropr.sender.Sender` under the supervisor."""

from dropr.workers.base import Worker


class SenderWorker(Worker):
    """Claims batches from queue/ and delivers them; between batches it waits
    for a producer's wake-up notice. Runs in a ``dropr: sender N`` process."""

    kind = "sender"

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.sender = None

    def open(self):
        """Make the Sender: spool tree, recovery of orphaned claims, its active dir."""
        from dropr.sender.sender import Sender

        counts = None
        if self.config.metrics.bind:  # counted for the metrics worker's scrapes
            from dropr.sender.counts import SenderCounts, counts_folder

            counts = SenderCounts(counts_folder(self.config, self.ppid))
        self.sender = Sender(self.config, name=self.name, notices=self.notices, counts=counts)
        self.sender.open()

    def tick(self):
        """One step (claim a batch and put it on the wire in its peers' lanes);
        when nothing was due and nothing is on the wire, wait for a wake-up. A
        step waits at most ``[sender] wait`` for an upload, so heartbeats and
        stop checks stay bounded however long a peer takes to answer."""
        moved = self.sender.step()
        if moved == 0 and not self.sender.busy and not self.stopping:
            self.sender.wait()
        return moved

    def close(self):
        """Finish and settle the upload in flight, return unfinished claims to
        queue/ and release the active dir."""
        if self.sender is not None:
            self.sender.close()
            self.sender = None
