"""GET /metrics: the receiver's Prometheus metrics, summed over its workers.

Every receiver worker process counts what it does itself. Under gunicorn,
prometheus_client runs in its multiprocess mode: each worker keeps its
counts in files in the run's folder (:mod:`dropr.receiver.metricsfolder`,
which the master makes before it forks and tidies as workers exit), and a
scrape answered by any worker sums them all, those of workers that have
exited included. Without that folder (one process, e.g. falcon's
TestClient) the counts live in a plain registry of the app.

Labels take few values on purpose: a client cannot make new series by
sending new channels, paths or methods.
"""

import contextlib
import fcntl
import json
import os
import re
import time

import falcon

from dropr.errors import ConfigError, DroprError
from dropr.receiver.metricsfolder import ENV_VAR, folder_lock
from dropr.results import DUPLICATE, REJECTED, STORED

PREFIX = "dropr_receiver_"
#: Seconds; a big batch with fsync can take many seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Refusal reasons shown as 0 before the first refusal (the codes of
#: dropr.receiver.errors); other codes appear when they first happen.
KNOWN_REASONS = ("invalid", "malformed", "too_large", "length_required",
                 "unsupported_media_type", "store_full")
UNMATCHED = "unmatched"  # the route label of a request for an unknown path
CALLS_ROUTE = "/v1/channels/{channel}/calls"
_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")
_METHODS = frozenset(falcon.COMBINED_METHODS)


def _prometheus():
    # Imported on first use, in the worker process: prometheus_client picks
    # its single- or multi-process mode once, when it is first imported, from
    # ENV_VAR, which the gunicorn master sets only when it is ready to fork.
    import prometheus_client
    import prometheus_client.multiprocess
    import prometheus_client.values

    return prometheus_client


def _multiprocess(prom):
    """True in multiprocess mode; ``ConfigError`` if prometheus_client was
    imported before ENV_VAR was set (its counts would not be summed)."""
    wanted = ENV_VAR in os.environ
    if wanted != prom.values.ValueClass._multiprocess:
        raise ConfigError(f"prometheus_client was imported before {ENV_VAR} was "
                          f"{'set' if wanted else 'unset'}: metrics would not add up")
    return wanted


class Metrics:
    """The receiver's counters, request latency histogram and store gauges;
    also the Falcon middleware that times requests and counts refusals.
    Built by ``create_app`` in each receiver worker process, one per process."""

    def __init__(self, store, *, min_free_bytes=0, min_free_inodes=0, timer=time.perf_counter):
        prom = _prometheus()
        self._prom = prom
        self.multiprocess = _multiprocess(prom)
        self._timer = timer
        self._space = StoreSpace(store, min_free_bytes, min_free_inodes)
        self._depth = StoreDepth(store)
        self._registry = None
        if not self.multiprocess:
            self._registry = prom.CollectorRegistry()
            self._registry.register(self._space)
            self._registry.register(self._depth)
        self._make(prom, self._registry)

    def _make(self, prom, registry):
        def counter(name, doc, labels=()):
            return prom.Counter(PREFIX + name, doc, labels, registry=registry)
        self.stored = counter("messages_stored", "Messages stored (answered stored).")
        self.bytes = counter("bytes_stored", "Body bytes of the messages stored.")
        self.duplicates = counter("duplicates", "Messages answered duplicate (already stored).")
        self.rejected = counter("messages_rejected",
                                "Messages of a batch rejected for good (answered rejected).")
        self.refusals = counter("refusals", "Upload requests (POST) answered with an error, "
                                "by the error code of the answer.", ("reason",))
        for reason in KNOWN_REASONS:
            self.refusals.labels(reason)
        self.calls = counter("calls", "Direct messages (calls), by channel and result: ok, "
                             "failed, timeout, busy, too_large.", ("channel", "result"))
        self.call_duration = prom.Histogram(
            PREFIX + "call_duration_seconds", "Seconds a call took, by channel: from the "
            "request to the responder's answer.", ("channel",), buckets=LATENCY_BUCKETS,
            registry=registry)
        self.latency = prom.Histogram(
            PREFIX + "request_duration_seconds", "Seconds from request to answer, by route.",
            ("method", "route"), buckets=LATENCY_BUCKETS, registry=registry)
        self._latency_of = {}  # (method, route) -> its histogram, found once

    # -- counting -------------------------------------------------------------

    def published(self, status, size):
        """Count one message that the store answered ``status`` for."""
        if status == STORED:
            self.stored.inc()
            self.bytes.inc(size)
        elif status == DUPLICATE:
            self.duplicates.inc()

    def published_many(self, statuses, sizes):
        """Count the messages of a batch at once: one update per counter, not
        one per message (each costs a lock and a system call in multiprocess mode)."""
        stored = [size for status, size in zip(statuses, sizes) if status == STORED]
        if stored:
            self.stored.inc(len(stored))
            self.bytes.inc(sum(stored))
        duplicates = statuses.count(DUPLICATE)
        if duplicates:
            self.duplicates.inc(duplicates)

    def called(self, channel, result, seconds):
        """Count one call of a channel that has a responder (so the channel
        label takes only the values the config names)."""
        self.calls.labels(channel, result).inc()
        self.call_duration.labels(channel).observe(max(0.0, seconds))

    def process_request(self, req, resp):
        """Falcon middleware: note when the request came in."""
        req.context.metrics_started = self._timer()

    def process_response(self, req, resp, resource, req_succeeded):
        """Falcon middleware: time the request; count a refused upload, and the
        messages a batch rejected."""
        started = req.context.get("metrics_started")
        method = req.method if req.method in _METHODS else "other"
        route = req.uri_template or UNMATCHED
        if started is not None:
            latency = self._latency_of.get((method, route))
            if latency is None:  # a few methods times a few routes: few entries
                latency = self._latency_of[method, route] = self.latency.labels(method, route)
            latency.observe(max(0.0, self._timer() - started))
        if method != "POST" or route == CALLS_ROUTE:
            return  # calls are counted by dropr_receiver_calls_total
        status = resp.status_code
        if status >= 400:
            self.refusals.labels(_reason(resp.media, status)).inc()
        elif isinstance(resp.media, dict) and isinstance(resp.media.get("results"), dict):
            rejected = sum(1 for r in resp.media["results"].values()
                           if isinstance(r, dict) and r.get("status") == REJECTED)
            if rejected:
                self.rejected.inc(rejected)

    # -- exposition -----------------------------------------------------------

    def render(self):
        """The metrics in the Prometheus text format (bytes): in multiprocess
        mode, summed over every worker of this run."""
        registry = self._registry
        if registry is not None:
            return self._prom.generate_latest(registry)
        registry = self._prom.CollectorRegistry()
        self._prom.multiprocess.MultiProcessCollector(registry)
        registry.register(self._space)
        registry.register(self._depth)
        with folder_lock(os.environ[ENV_VAR], fcntl.LOCK_SH):  # no fold halfway
            return self._prom.generate_latest(registry)


def _reason(media, status):
    """The error code of an error answer (its HTTP status if it has none)."""
    with contextlib.suppress(AttributeError, TypeError):
        code = media["error"]["code"]
        if isinstance(code, str) and _CODE.match(code):
            return code
    return str(status)


class StoreSpace:
    """A Prometheus collector: the store's free bytes, read at each scrape,
    and the floor below which the receiver is not ready. Runs in receiver
    worker processes."""

    def __init__(self, store, min_free_bytes, min_free_inodes=0):
        self.store = store
        self.min_free_bytes = min_free_bytes
        self.min_free_inodes = min_free_inodes

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(PREFIX + "store_free_bytes",
                                "Bytes free on the store's filesystem.",
                                value=self.store.free_bytes())
        yield GaugeMetricFamily(PREFIX + "store_min_free_bytes",
                                "[receiver] min_free_bytes: below it /v1/ready answers 503.",
                                value=self.min_free_bytes)
        inodes = self.store.free_inodes()
        if inodes is not None:  # not on a filesystem that does not count them
            yield GaugeMetricFamily(PREFIX + "store_free_inodes",
                                    "Inodes free on the store's filesystem.", value=inodes)
        yield GaugeMetricFamily(PREFIX + "store_min_free_inodes",
                                "[receiver] min_free_inodes: below it /v1/ready answers 503.",
                                value=self.min_free_inodes)


class StoreDepth:
    """A Prometheus collector: per channel, the messages waiting for a consumer
    and the age of the oldest (from its id: since its producer made it).
    Counted again at most every REFRESH_FACTOR times what the last count took
    (at least every MIN_REFRESH s), so a deep store is not listed at every
    scrape; at most MAX_CHANNELS channels (by name) are shown. Runs in
    receiver worker processes, each with its own last count."""

    REFRESH_FACTOR = 20
    MIN_REFRESH = 1.0
    MAX_CHANNELS = 1000

    def __init__(self, store, *, clock=time.time, monotonic=time.monotonic):
        self.store = store
        self._clock, self._monotonic = clock, monotonic
        self._depths, self._due = {}, 0.0
        self._paused = None  # the channels paused at the last count; None: not known

    def depths(self):
        """{channel: (waiting, oldest made ms or None)}, counted again when due
        (with the channels paused then)."""
        began = self._monotonic()
        if began >= self._due:
            self._depths = self.store.depths()
            try:
                self._paused = self.store.paused_channels()
            except (DroprError, AttributeError):
                self._paused = None  # e.g. no right to read the pause bucket: no gauge
            done = self._monotonic()
            self._due = done + max(self.MIN_REFRESH, self.REFRESH_FACTOR * (done - began))
        return self._depths

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        try:
            depths = self.depths()
        except DroprError:
            return  # the store does not answer: /v1/ready says so; no stale figures
        waiting = GaugeMetricFamily(PREFIX + "store_messages", "Messages waiting for a "
                                    "consumer in the store, by channel.", labels=("channel",))
        oldest = GaugeMetricFamily(
            PREFIX + "store_oldest_message_age_seconds", "Age of the oldest message waiting "
            "in the store (since its producer made it), by channel; 0 when none waits.",
            labels=("channel",))
        paused = GaugeMetricFamily(
            PREFIX + "store_paused", "1 while consumers of the channel are paused "
            "(dropr store pause), else 0.", labels=("channel",))
        now = self._clock()
        for channel in sorted(depths)[:self.MAX_CHANNELS]:
            count, made_ms = depths[channel]
            waiting.add_metric((channel,), count)
            age = max(0.0, now - made_ms / 1000.0) if count and made_ms else 0.0
            oldest.add_metric((channel,), age)
            if self._paused is not None:
                paused.add_metric((channel,), 1.0 if channel in self._paused else 0.0)
        yield waiting
        yield oldest
        if self._paused is not None:
            yield paused


class CountingStore:
    """The store as the receiver's resources use it, counting each message
    that is published into :class:`Metrics`; everything else goes straight to
    the store. Runs in receiver worker processes."""

    def __init__(self, store, metrics):
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name):
        return getattr(self._store, name)

    def put(self, channel, message_id, body, *, priority, client, limit=None, sync_dir=True,
            legacy_id=None):
        """:meth:`dropr.store.Store.put`, counted."""
        staged = self._store.stage(channel, message_id, body, priority=priority,
                                   client=client, limit=limit, legacy_id=legacy_id)
        return self.publish(staged, sync_dir=sync_dir)

    def publish_many(self, staged):
        """:meth:`dropr.store.Store.publish_many`, counted."""
        sizes = [s.size for s in staged]
        statuses = self._store.publish_many(staged)
        self._metrics.published_many(statuses, sizes)
        return statuses

    def publish(self, staged, *, sync_dir=True, fresh=False):
        """:meth:`dropr.store.Store.publish`, counted."""
        status = self._store.publish(staged, sync_dir=sync_dir, fresh=fresh)
        self._metrics.published(status, staged.size)
        return status


class MetricsResource:
    """GET /metrics: the Prometheus text format. Runs in receiver worker processes."""

    def __init__(self, metrics):
        self.metrics = metrics

    def on_get(self, req, resp):
        resp.data = self.metrics.render()
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"


#: The counters whose sum is the receiver's "handled" in ``droprd status``.
HANDLED = tuple(PREFIX + name for name in ("messages_stored", "duplicates", "messages_rejected"))


def handled():
    """In the gunicorn master: the messages this run's workers answered, those
    that exited included (see :func:`handled_in`)."""
    folder = os.environ.get(ENV_VAR)
    if not folder:
        return 0
    with folder_lock(folder, fcntl.LOCK_SH):
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as it:
            return sum(handled_in(e.path) for e in it
                       if e.name.startswith("counter_") and e.name.endswith(".db"))
    return 0


def handled_in(path):
    """The messages answered (stored, duplicate, rejected) as counted in one
    worker's counter file."""
    from prometheus_client.mmap_dict import MmapedDict

    try:
        values = MmapedDict.read_all_values_from_file(path)
        return int(sum(value for key, value, _, _ in values
                       if json.loads(key)[0] in HANDLED))
    except (FileNotFoundError, RuntimeError):
        return 0
