"""droprd's Prometheus metrics of the producer host, against a real tree:
``droprd`` with its senders and a metrics worker, a real receiver, real
spool files (see dropr/metrics/host.py)."""

import os
import re
import shutil
import signal
import subprocess

import pytest

from dropr.client import Client
from tests.supervisor.conftest import deadline_wait
from tests.support import harness

pytestmark = pytest.mark.process

_SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})?\s+(\S+)$')


def scrape(port):
    """{(name, frozenset of label pairs): value} of GET /metrics; {} if nothing answers."""
    code, body = harness.http_get(f"http://127.0.0.1:{port}/metrics")
    if code != 200:
        return {}
    samples = {}
    for line in body.decode().splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            samples[m.group(1), labels] = float(m.group(3))
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def metrics_tree(make_tree, **sections):
    port = harness.free_port()
    tree = make_tree({"workers": {"sender": 1}, "metrics": {"bind": f"127.0.0.1:{port}"},
                      **sections})
    return tree, port


def test_metrics_follow_a_peer_down_then_up_and_count_a_killed_sender(make_tree):
    tree, port = metrics_tree(make_tree)
    tree.start()
    client = Client(tree.config_path)
    for i in range(20):
        client.put(f"m{i}".encode(), "local", "metrics")
    # The peer does not answer: all 20 wait, the oldest grows older, the peer is down.
    down = harness.wait_for(
        lambda: (s := scrape(port)) and value(s, "dropr_peer_up", peer="local") == 0
        and value(s, "dropr_spool_oldest_message_age_seconds", peer="local") >= 1.0 and s, 20)
    waiting = sum(value(down, "dropr_spool_messages", state=st, peer="local")
                  for st in ("queue", "active", "deferred"))
    assert waiting == 20
    assert value(down, "dropr_spool_bytes", state="deferred", peer="local") > 0
    assert value(down, "dropr_sender_messages_total", peer="local", result="stored") == 0
    assert value(down, "dropr_sender_messages_total", peer="local", result="deferred") >= 1
    assert value(down, "dropr_spool_messages", state="sent", peer="local") == 0

    receiver = harness.Receiver(tree.config_path).start()
    try:
        # The spool's figures come from a census that is recounted less often
        # under load than the senders' counts: wait for one scrape in which
        # both say that all 20 went.
        up = harness.wait_for(
            lambda: (s := scrape(port)) and
            value(s, "dropr_sender_messages_total", peer="local", result="stored") == 20
            and value(s, "dropr_spool_oldest_message_age_seconds", peer="local") == 0 and s, 30)
    finally:
        receiver.stop()
    assert value(up, "dropr_spool_oldest_message_age_seconds", peer="local") == 0
    assert value(up, "dropr_peer_up", peer="local") == 1
    assert sum(value(up, "dropr_spool_messages", state=st, peer="local")
               for st in ("queue", "active", "deferred")) == 0
    for worker in ("sender 1", "retry-scanner", "reaper", "metrics"):
        assert value(up, "dropr_worker_up", worker=worker) == 1
        assert value(up, "dropr_worker_rss_bytes", worker=worker) > 1 << 20
        assert 0 <= value(up, "dropr_worker_heartbeat_age_seconds", worker=worker) < 10
    assert value(up, "dropr_worker_restarts_total", worker="sender 1") == 0

    os.kill(tree.workers()["sender 1"]["pid"], signal.SIGKILL)
    harness.wait_for(lambda: value(scrape(port), "dropr_worker_restarts_total",
                                   worker="sender 1") == 1, 15)
    # The dead sender's counts stay in the total.
    assert value(scrape(port), "dropr_sender_messages_total", peer="local", result="stored") == 20


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Prometheus) is not installed")
def test_metrics_pass_prometheus_lint(make_tree):
    tree, port = metrics_tree(make_tree)
    tree.start()
    Client(tree.config_path).put(b"x", "local", "metrics")
    code, body = harness.wait_for(lambda: (a := harness.http_get(
        f"http://127.0.0.1:{port}/metrics"))[0] == 200 and a, 10)
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_metrics_worker_runs_only_while_bind_is_set(make_tree):
    tree = make_tree({"workers": {"sender": 1}})
    tree.start()
    assert "metrics" not in tree.workers()


def test_metrics_address_in_use_fails_the_boot(make_tree):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        tree = make_tree({"workers": {"sender": 1, "retry_scanner": 0, "reaper": 0},
                          "metrics": {"bind": f"127.0.0.1:{taken.getsockname()[1]}"},
                          "supervisor": {"max_restarts": 1}})
        tree.start(wait=False)
        entry = tree.wait_state("metrics", "fatal", timeout=20)
    assert entry["restarts"] >= 1
    assert "Address already in use" in tree.log_tail(20000)


def test_scrape_does_not_wait_for_a_census(make_tree, tmp_path):
    """The census is taken in the worker's loop; a scrape reads the last one."""
    tree, port = metrics_tree(make_tree)
    tree.start()
    assert deadline_wait(lambda: scrape(port), 5) < 5
