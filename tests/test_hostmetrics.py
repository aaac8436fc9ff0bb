"""The pacing of the spool census behind droprd's metrics (dropr/metrics/host.py),
with fake clocks."""

from dropr import config as config_mod
from dropr.metrics import host as hostmetrics
from dropr.client import Client
from tests.support import harness


def make(tmp_path, clocks):
    config = config_mod.load(harness.write_config(tmp_path))
    metrics = hostmetrics.HostMetrics(config, supervisor_pid=1, clock=lambda: 5_000_000_000.0,
                                      monotonic=lambda: clocks["wall"],
                                      cpu=lambda: clocks["cpu"])
    return config, metrics


def test_a_census_waits_twenty_times_its_cpu_time_and_twice_its_duration(tmp_path, monkeypatch):
    clocks = {"wall": 100.0, "cpu": 0.0}
    _, metrics = make(tmp_path, clocks)

    def slow_take(spool, progress=None):  # what a deep spool costs
        clocks["wall"] += 10.0
        clocks["cpu"] += 2.0
        return real_take(spool, progress=progress)
    real_take = hostmetrics.census.take
    monkeypatch.setattr(hostmetrics.census, "take", slow_take)
    assert metrics.refresh() == 40.0  # 20 x 2 s of CPU
    clocks["wall"] += 39.0
    assert metrics.refresh() == 1.0 and clocks["cpu"] == 2.0  # not yet: not counted again
    assert metrics.refresh(at_scrape=True) == hostmetrics.MIN_REFRESH  # too slow for a scrape
    clocks["wall"] += 1.0
    metrics.refresh()
    assert clocks["cpu"] == 4.0  # counted again


def test_a_quick_census_is_taken_again_at_the_scrape(tmp_path):
    clocks = {"wall": 100.0, "cpu": 0.0}
    config, metrics = make(tmp_path, clocks)
    metrics.refresh()
    Client(config.path).put(b"x", "local", "c")
    names = {f.name: f for f in metrics.collect()}
    [sample] = [s for s in names["dropr_spool_messages"].samples
                if s.labels == {"state": "queue", "peer": "local"}]
    assert sample.value == 1
