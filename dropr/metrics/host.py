"""The producer host's Prometheus metrics, served by droprd on ``[metrics] bind``.

The ``dropr: metrics`` worker answers ``GET /metrics`` from a thread of its
own process and gathers, at each scrape:

- the spool: ``dropr_spool_messages{state,peer}``, ``dropr_spool_bytes{state,peer}``
  and ``dropr_spool_oldest_message_age_seconds{peer}``, from a census of the
  spool (:mod:`dropr.spool.census`) that the worker's loop takes again at most
  every ``REFRESH_FACTOR`` times the CPU time the last one took (at least
  every ``MIN_REFRESH`` s): however deep the spool, counting it takes at most
  1/REFRESH_FACTOR of one core, and a scrape never waits for it. The oldest
  age is computed at the scrape, so it grows between counts;
- the senders' results, ``dropr_sender_messages_total{peer,result}``: each
  sender process counts into files of prometheus_client's multiprocess mode
  in a folder of this supervisor's run (:mod:`dropr.sender.counts`), which the
  scrape sums (those of senders that have exited included);
- ``dropr_peer_up{peer}``: 0 while the spool holds a down marker for the peer;
- the workers, as the supervisor's status file lists them (the names
  ``droprd status`` prints): ``dropr_worker_up``, ``dropr_worker_restarts_total``,
  ``dropr_worker_heartbeat_age_seconds`` and, by psutil,
  ``dropr_worker_rss_bytes``.

prometheus_client is never imported by the supervisor: each worker process
imports it after the fork, a sender only once it has named its folder in
``PROMETHEUS_MULTIPROC_DIR``.
"""

import contextlib
import threading
import time

import psutil

from dropr.peers import Peers
from dropr.sender import counts
from dropr.spool import Spool, census
from dropr.supervisor import status

#: A census is taken again at most every REFRESH_FACTOR times the CPU time the
#: last one took, and no sooner than IDLE_FACTOR times its duration (a cold
#: cache makes it wait for the disk, not the CPU) ...
REFRESH_FACTOR = 20
IDLE_FACTOR = 2
#: ... and at least every MIN_REFRESH seconds.
MIN_REFRESH = 1.0
#: A census that took at most this long (s) is taken again at each scrape
#: (when due), so that a small spool's figures agree with the senders' counts.
SCRAPE_CENSUS_MAX = 0.1
class HostMetrics:
    """The collector behind ``GET /metrics`` of the ``dropr: metrics`` worker;
    :meth:`refresh` runs in the worker's loop, :meth:`collect` in the HTTP
    server's threads. ``supervisor_pid`` names the senders' count folder."""

    def __init__(self, config, *, supervisor_pid, clock=time.time, monotonic=time.monotonic,
                 cpu=time.thread_time):
        self.config = config
        self.spool = Spool(config.client.spool, fsync=False)
        self.peers = Peers(self.spool)
        self.folder = counts.counts_folder(config, supervisor_pid)
        self._clock, self._monotonic, self._cpu = clock, monotonic, cpu
        self.census = None
        self._lock = threading.Lock()
        self._counts_lock = threading.Lock()  # a fold of the senders' files is not summed
        self.cost = 0.0
        self.next_census = 0.0

    def refresh(self, progress=None, *, at_scrape=False):
        """Take a new census if the last one is due for renewal (calling
        ``progress()`` now and then meanwhile); returns the seconds until the
        next one is. ``at_scrape``: only if the last one took at most
        SCRAPE_CENSUS_MAX s, so that a scrape of a small spool sees it as it
        is and one of a deep spool does not wait. Never two at once."""
        if (at_scrape and self.cost > SCRAPE_CENSUS_MAX) or not self._lock.acquire(False):
            return MIN_REFRESH
        try:
            now, cpu = self._monotonic(), self._cpu()
            if now >= self.next_census:
                # One assignment: a scrape meanwhile sees the old census or the new.
                self.census = census.take(self.spool, progress=progress)
                done = self._monotonic()
                self.cost = done - now
                wait = max(REFRESH_FACTOR * (self._cpu() - cpu), IDLE_FACTOR * self.cost)
                self.next_census = done + wait
            return max(0.0, self.next_census - self._monotonic())
        finally:
            self._lock.release()

    def fold_counts(self):
        """Fold the exited senders' count files into one (see
        :func:`dropr.sender.counts.compact`); in the worker's loop."""
        with self._counts_lock:
            return counts.compact(self.folder)

    def collect(self):
        """The metric families of one scrape. The senders' counts are read
        before the spool is counted: a sender counts a message once it has
        moved it, so no count is ahead of the census."""
        sent = self._sender_messages()
        self.refresh(at_scrape=True)
        yield from self._spool()
        yield sent
        yield self._peers_up()
        yield from self._workers()

    # -- the spool ------------------------------------------------------------

    def _peers(self):
        found = self.census.peers if self.census is not None else set()
        return sorted(set(self.config.peers) | found)

    def _spool(self):
        from prometheus_client.core import GaugeMetricFamily

        messages = GaugeMetricFamily("dropr_spool_messages", "Messages in the client spool, "
                                     "by state (its directory) and peer.", labels=("state", "peer"))
        size = GaugeMetricFamily("dropr_spool_bytes", "Bytes of the messages in the client "
                                 "spool, by state (its directory) and peer.", labels=("state", "peer"))
        oldest = GaugeMetricFamily(
            "dropr_spool_oldest_message_age_seconds", "Age of the oldest message not yet "
            "delivered (in queue, active or deferred), by peer; 0 when none waits.",
            labels=("peer",))
        took = GaugeMetricFamily("dropr_spool_census_seconds",
                                 "Seconds the last count of the spool took.", value=self.cost)
        got, now = self.census, self._clock()
        for peer in self._peers():
            for state in census.STATES:
                messages.add_metric((state, peer), got.counts[state].get(peer, 0) if got else 0)
                size.add_metric((state, peer), got.sizes[state].get(peer, 0) if got else 0)
            oldest.add_metric((peer,), got.oldest_age(peer, now) if got else 0.0)
        return messages, size, oldest, took

    def _sender_messages(self):
        from prometheus_client.core import CounterMetricFamily

        totals = {(peer, result): 0.0 for peer in self.config.peers
                  for result in counts.RESULTS}
        with self._counts_lock:
            counted = counts.totals(self.folder)
        for (peer, result), value in counted.items():
            totals[peer, result] = totals.get((peer, result), 0.0) + value
        family = CounterMetricFamily(counts.NAME, counts.DOC,
                                     labels=("peer", "result"))
        for labels, value in sorted(totals.items()):
            family.add_metric(labels, value)
        return family

    def _peers_up(self):
        from prometheus_client.core import GaugeMetricFamily

        down = set(self.peers.down())
        family = GaugeMetricFamily("dropr_peer_up", "1 when the peer answers, 0 while it "
                                   "is marked down.", labels=("peer",))
        for peer in self._peers():
            family.add_metric((peer,), 0 if peer in down else 1)
        return family

    # -- the workers ----------------------------------------------------------

    def _workers(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        doc = status.read(self.config.supervisor.status_file) or {}
        up = GaugeMetricFamily("dropr_worker_up", "1 while the worker runs (state running).",
                               labels=("worker",))
        restarts = CounterMetricFamily("dropr_worker_restarts", "Times the supervisor "
                                       "started the worker again.", labels=("worker",))
        rss = GaugeMetricFamily("dropr_worker_rss_bytes", "Resident memory of the worker "
                                "process (0 when it has none).", labels=("worker",))
        age = GaugeMetricFamily("dropr_worker_heartbeat_age_seconds", "Seconds since the "
                                "worker last reported to the supervisor.", labels=("worker",))
        now = self._clock()
        for entry in doc.get("workers", []):
            name = (entry.get("name"),)
            up.add_metric(name, 1 if entry.get("state") == "running" else 0)
            restarts.add_metric(name, entry.get("restarts") or 0)
            rss.add_metric(name, _rss(entry.get("pid")))
            if entry.get("heartbeat"):
                age.add_metric(name, max(0.0, now - entry["heartbeat"]))
        return up, restarts, rss, age


def _rss(pid):
    with contextlib.suppress(psutil.Error, TypeError, ValueError):
        return psutil.Process(pid).memory_info().rss
    return 0


def serve(bind, collector):
    """Serve ``collector`` on ``bind`` (HOST:PORT) from a daemon thread; returns
    the server (``shutdown()`` ends it). OSError if the address is taken."""
    from prometheus_client import CollectorRegistry, start_http_server

    host, _, port = bind.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return server
