"""`dropr bench` end to end with tiny sizes: it starts its own receiver, tree
and producers on the current directory's filesystem, runs every scenario once
and prints one table (its shape is checked here, not its speeds)."""

import json
import re
import subprocess
import sys
import time

import psutil
import pytest

from dropr.bench import cluster, procs, report
from dropr.errors import BenchError
from dropr.spool import Spool

pytestmark = pytest.mark.timeout(180)

TINY = ["--fs", "here", "--runs", "1", "--quick", "--messages", "200", "--waiting", "2000",
        "--large-mib", "4", "--fsync", "off"]
COLUMNS = ["figure", "fsync", "value", "limit", "of limit", "target", "met?"]


def _bench(cwd, *args, timeout=150):
    return subprocess.run([sys.executable, "-m", "dropr.cli", "bench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _rows(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


@pytest.mark.process
def test_bench_runs_every_scenario_and_prints_one_table(tmp_path):
    result = _bench(tmp_path, *TINY, "--json", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^filesystem: \S+", result.stdout, re.M)  # it says what it measured
    assert re.search(r"^machine: \d+ CPUs", result.stdout, re.M)
    rows = _rows(result.stdout)
    assert rows[0] == COLUMNS
    body = rows[2:]
    figures = set(report.FIGURES) - report.FSYNC_ONLY
    if cluster.missing():  # no nats-py or nats-server here: the JetStream rows are left out
        figures -= {"js_drain", "js_drain2"}
        assert f"note: jetstream: skipped, {cluster.missing()}" in result.stdout
    else:
        assert "jetstream: skipped" not in result.stdout
    labels = {"{} ({})".format(*report.FIGURES[f][:2]) for f in figures}
    assert {r[0] for r in body} == labels  # every figure once, fsync off only
    assert all(r[1] == "off" and len(r) == len(COLUMNS) for r in body)
    assert all(r[6] in ("yes", "NO", "-") for r in body)
    assert "\x1b[Kwaiting fsync off run 1/1" in result.stderr  # the live progress line
    data = json.loads((tmp_path / "out.json").read_text())
    assert {r["figure"] for r in data["results"]} == figures
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # its work folder is gone


@pytest.mark.process
def test_bench_refuses_an_unknown_scenario_and_runs_nothing(tmp_path):
    result = _bench(tmp_path, "--only", "put,nosuch", timeout=30)
    assert result.returncode == 2
    assert "unknown scenario 'nosuch'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_medians_fractions_and_targets():
    samples = {("drain", False): [(30_000, 60_000), (10_000, 50_000), (25_000, 40_000)],
               ("lat_p50", True): [(4.0, 1.0)]}
    drain, lat = report.summarize(samples)
    assert (drain["value"], drain["limit"], drain["fraction"]) == (25_000, 50_000, 0.5)
    assert drain["target"] == ">= 0.5 of limit" and drain["met"] is True  # 25,000 of 50,000
    assert lat["fraction"] == 0.25 and lat["met"] is False  # p50 over 2 ms
    assert "| e2e drain" in report.table([drain, lat])


@pytest.mark.process
def test_probes_wait_for_each_other_and_one_that_fails_is_told(tmp_path):
    config = procs.write_config(tmp_path / "c", fsync=False)
    ready = time.time()
    results = procs.probes(*[("put", config.path, 50, 16, procs.GO)] * 2)
    # Released together once both had imported and opened their client.
    starts = sorted(r["started"] for r in results)
    assert ready < starts[0] and starts[1] - starts[0] < 0.5
    assert Spool(config.client.spool, fsync=False).counts()["queue"] == 100
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(BenchError, match=r"(?s)probe put failed: .*nosuch.toml: config file not"):
        procs.probes(("put", config.path, 50, 16, procs.GO),
                     ("put", tmp_path / "nosuch.toml", 50, 16, procs.GO))
    # The one that was ready and waiting is not left behind.
    assert {p.pid for p in psutil.Process().children()} == before
