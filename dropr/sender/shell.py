"""The sender worker: one :class:`dropr.sender.Sender` under the supervisor."""

from dropr.workers.base import Worker

# Slack on top of the longest upload, for claiming and moving a batch's files.
_MARGIN = 10.0


class SenderWorker(Worker):
    """Claims batches from queue/ and delivers them; between batches it waits
    for a producer's wake-up notice. Runs in a ``dropr: sender N`` process."""

    kind = "sender"

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.sender = None

    @classmethod
    def max_silence(cls, config):
        """A sender's loop waits at most ``[sender] wait`` for an upload, but when
        it stops or is recycled it finishes the uploads on the wire: one per
        peer at once, each of which may try every URL of its peer for up to
        connect_timeout + timeout. Allow the slowest peer that long."""
        uploads = [len(p.urls or (p.url,)) * (p.connect_timeout + p.timeout)
                   for p in config.peers.values()]
        return max(uploads, default=0.0) + config.sender.wait + _MARGIN

    def open(self):
        """Make the Sender: spool tree, recovery of orphaned claims, its active dir."""
        from dropr.sender.sender import Sender

        counts = None
        if self.config.metrics.bind:  # counted for the metrics worker's scrapes
            from dropr.sender.counts import SenderCounts, counts_folder

            counts = SenderCounts(counts_folder(self.config, self.ppid))
        self.sender = Sender(self.config, label=self.label, notices=self.notices, counts=counts)
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
