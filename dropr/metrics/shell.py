"""The metrics worker: serves the producer host's Prometheus metrics
(:mod:`dropr.metrics.host`) on ``[metrics] bind``; droprd runs it while that
is set."""

from dropr.metrics import host
from dropr.sender import counts
from dropr.workers.base import Worker, pause


class MetricsWorker(Worker):
    """The ``dropr: metrics`` process: an HTTP server thread answers scrapes;
    the loop keeps the spool's census fresh. Built in the supervisor; opened
    and run in the child. A taken address fails its boot."""

    kind = "metrics"

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.metrics = None
        self.server = None

    def open(self):
        """In the child: clear the count folders of dead supervisors, make this
        one's, take the first census, then listen."""
        counts.remove_stale_folders(self.config, self.ppid)
        counts.counts_folder(self.config, self.ppid).mkdir(parents=True, exist_ok=True)
        self.metrics = host.HostMetrics(self.config, supervisor_pid=self.ppid)
        self.metrics.refresh(progress=self.report)
        self.server = host.serve(self.config.metrics.bind, self.metrics)

    def tick(self):
        """Renew the census when it is due, fold the count files of exited
        senders, then wait (at most a second). A census of a deep spool takes
        seconds: it keeps the heartbeat going."""
        wait = self.metrics.refresh(progress=self.report)
        self.metrics.fold_counts()
        pause(self, min(host.MIN_REFRESH, wait))
        return 0

    def close(self):
        """Stop listening."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
