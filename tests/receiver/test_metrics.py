"""GET /metrics and GET /v1/ready: counts through falcon's TestClient, then
summed over real gunicorn workers and under droprd; readiness against real
faults (a store that cannot be written, a disk under the floor)."""

import fcntl
import glob
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request

import psutil
import pytest
from falcon import testing
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from dropr import config as config_mod
from dropr.errors import ConfigError
from dropr.ids import IdGenerator
from dropr.receiver import create_app, metrics, metricsfolder
from dropr.store import Store
from tests.receiver.forms import CONTENT_TYPE, batch
from tests.support import harness

LOOPBACK = {"remote_addr": "127.0.0.1"}  # a receiver without tokens serves loopback only
MESSAGES = "/v1/channels/{channel}/messages"


def samples(text):
    """{(sample name, sorted label pairs): value} of a Prometheus text answer."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text, name, **labels):
    return samples(text).get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def make_app(tmp_path):
    """``make_app(**receiver_keys)`` -> (TestClient, Store, Config) on a store under tmp_path."""
    def make(**receiver):
        config = config_mod.load(harness.write_config(tmp_path, sections={"receiver": receiver}))
        store = Store(config.receiver.store, fsync=False)
        return testing.TestClient(create_app(config, store=store)), store, config
    return make


def post(client, channel, body, **headers):
    return client.simulate_post(f"/v1/channels/{channel}/messages", body=body,
                                headers=headers, **LOOPBACK)


# -- counting (one process) ----------------------------------------------------

def test_uploads_are_counted_by_outcome(make_app):
    client, _, _ = make_app(max_message_bytes=10)
    assert post(client, "orders", b"hello", **{"Idempotency-Key": "m1"}).status_code == 201
    assert post(client, "orders", b"hello", **{"Idempotency-Key": "m1"}).status_code == 200
    assert post(client, "orders", b"1234567").status_code == 201
    assert post(client, "bad..channel", b"x").status_code == 400
    assert post(client, "orders", b"x" * 11).status_code == 413
    body, _ = batch([("b1", "orders", 5, b"abcd"), ("b2", "orders", 42, b"never")])
    answer = client.simulate_post("/v1/batch", body=body, headers={"Content-Type": CONTENT_TYPE},
                                  **LOOPBACK)
    assert [r["status"] for r in answer.json["results"].values()] == ["stored", "rejected"]
    client.simulate_get("/v1/no-such-thing", **LOOPBACK)  # a GET answered 404 is no refusal

    text = client.simulate_get("/metrics", **LOOPBACK).text
    assert value(text, "dropr_receiver_messages_stored_total") == 3
    assert value(text, "dropr_receiver_bytes_stored_total") == 5 + 7 + 4
    assert value(text, "dropr_receiver_duplicates_total") == 1
    assert value(text, "dropr_receiver_messages_rejected_total") == 1
    refusals = {dict(labels)["reason"]: v for (name, labels), v in samples(text).items()
                if name == "dropr_receiver_refusals_total"}
    assert {r: v for r, v in refusals.items() if v} == {"invalid": 1, "too_large": 1}
    assert value(text, "dropr_receiver_request_duration_seconds_count",
                 method="POST", route=MESSAGES) == 5
    assert value(text, "dropr_receiver_request_duration_seconds_count",
                 method="GET", route="unmatched") == 1


def test_metrics_answer_is_the_prometheus_text_format(make_app):
    client, _, _ = make_app()
    answer = client.simulate_get("/metrics", **LOOPBACK)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert all(name.startswith("dropr_receiver_") for name, _ in samples(answer.text))


def test_store_free_bytes_are_read_at_each_scrape(make_app):
    client, store, _ = make_app(min_free_bytes=12345)
    text = client.simulate_get("/metrics", **LOOPBACK).text
    st = os.statvfs(store.root)
    free = st.f_bavail * st.f_frsize  # others write on this disk meanwhile: allow 64 MiB
    assert abs(value(text, "dropr_receiver_store_free_bytes") - free) < 64 << 20
    assert value(text, "dropr_receiver_store_min_free_bytes") == 12345


def test_store_free_inodes_are_read_at_each_scrape(make_app):
    client, store, _ = make_app(min_free_inodes=4321)
    text = client.simulate_get("/metrics", **LOOPBACK).text
    free = os.statvfs(store.root).f_favail  # others make files meanwhile: allow some
    assert abs(value(text, "dropr_receiver_store_free_inodes") - free) < 100_000
    assert value(text, "dropr_receiver_store_min_free_inodes") == 4321


def test_store_depth_and_oldest_age_per_channel(make_app):
    client, store, _ = make_app()
    old, new = IdGenerator(clock=lambda: 1_000_000.0), IdGenerator(clock=lambda: 2_000_000.0)
    for message_id in (new(), old(), new()):
        store.put("orders", message_id, b"x", priority=5, client="t")
    store.put("events", new(), b"y", priority=0, client="t")
    store.put("legacy", "php-4711", b"z", priority=5, client="t")  # an id dropr did not make
    os.utime(store.root / "queue" / "legacy" / "5.t@php-4711", (1_500_000.0, 1_500_000.0))
    now = time.time()
    text = client.simulate_get("/metrics", **LOOPBACK).text
    assert value(text, "dropr_receiver_store_messages", channel="orders") == 3
    assert value(text, "dropr_receiver_store_messages", channel="events") == 1
    assert value(text, "dropr_receiver_store_oldest_message_age_seconds",
                 channel="orders") == pytest.approx(now - 1_000_000.0, abs=30)
    assert value(text, "dropr_receiver_store_oldest_message_age_seconds",
                 channel="events") == pytest.approx(now - 2_000_000.0, abs=30)
    assert value(text, "dropr_receiver_store_oldest_message_age_seconds",
                 channel="legacy") == pytest.approx(now - 1_500_000.0, abs=30)


def test_store_depth_is_counted_again_only_when_due(tmp_path):
    store, ticks = Store(tmp_path / "store", fsync=False), [100.0]
    depth = metrics.StoreDepth(store, monotonic=lambda: ticks[0])
    assert depth.depths() == {}
    store.put("orders", IdGenerator()(), b"x", priority=5, client="t")
    assert depth.depths() == {}  # the last count is fresh for MIN_REFRESH s
    ticks[0] += metrics.StoreDepth.MIN_REFRESH
    assert depth.depths()["orders"][0] == 1
    [message] = store.claim("orders", "c1")
    store.ack(message)
    ticks[0] += metrics.StoreDepth.MIN_REFRESH
    assert depth.depths()["orders"] == (0, None)  # an empty channel: 0 waiting, no age


def test_metrics_refuse_to_start_if_prometheus_client_chose_single_process(make_app,
                                                                            monkeypatch, tmp_path):
    # This test process imported prometheus_client without the variable: a
    # worker in that state would count alone, unseen by the other workers.
    monkeypatch.setenv(metricsfolder.ENV_VAR, str(tmp_path))
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        metrics.Metrics(Store(tmp_path / "store", fsync=False))


@pytest.mark.process
def test_folders_of_masters_that_are_gone_are_removed(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"{metricsfolder.FOLDER_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{metricsfolder.FOLDER_PREFIX}{os.getpid()}-def"
    other = tmp_path / "something-else"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    assert metricsfolder.remove_stale_folders(tmp_path) == 1
    assert not stale.exists() and live.exists() and other.exists()


# -- readiness ---------------------------------------------------------------------

def test_ready_when_the_store_is_writable_and_above_the_floor(make_app):
    client, store, _ = make_app(min_free_bytes=1024)
    answer = client.simulate_get("/v1/ready")
    assert answer.status_code == 200
    assert answer.json["status"] == "ready" and answer.json["min_free_bytes"] == 1024
    assert answer.json["free_bytes"] > 1024
    assert os.listdir(store.root / "tmp") == []  # the probe leaves nothing behind


def test_not_ready_while_the_store_cannot_be_written(make_app):
    client, store, _ = make_app()
    tmp = store.root / "tmp"
    tmp.rmdir()
    tmp.write_bytes(b"")  # a file where the store's tmp/ folder should be: even root cannot write
    answer = client.simulate_get("/v1/ready")
    assert answer.status_code == 503
    assert answer.json["error"]["code"] == "not_ready"
    assert "not writable" in answer.json["error"]["message"]
    assert client.simulate_get("/v1/health").status_code == 200  # alive, not ready
    tmp.unlink()
    tmp.mkdir()
    assert client.simulate_get("/v1/ready").status_code == 200


def test_not_ready_below_min_free_bytes(make_app):
    client, _, _ = make_app(min_free_bytes=1 << 60)
    answer = client.simulate_get("/v1/ready")
    assert answer.status_code == 503
    assert answer.json["error"]["code"] == "not_ready"
    assert "min_free_bytes" in answer.json["error"]["message"]


# -- real processes --------------------------------------------------------------

def http_post(url, body):
    """(status, JSON answer) of a POST on a connection of its own."""
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def scrape(url):
    status, body = harness.http_get(url + "/metrics", timeout=10)
    assert status == 200, body
    return body.decode()


def folder_of(master_pid):
    """The metrics folder of the receiver whose gunicorn master is ``master_pid``."""
    found = glob.glob(os.path.join(tempfile.gettempdir(),
                                   f"{metricsfolder.FOLDER_PREFIX}{master_pid}-*"))
    return found[0] if len(found) == 1 else None


def stored_by(folder, pid):
    """Messages counted as stored by worker ``pid`` alone, from its own file."""
    return stored_by_file(os.path.join(folder, f"counter_{pid}.db"))


def stored_by_file(path):
    for metric in MultiProcessCollector.merge([path]):
        for s in metric.samples:
            if s.name == "dropr_receiver_messages_stored_total":
                return s.value
    return 0


def test_an_exited_worker_s_counts_are_folded_into_the_archive_but_not_a_live_one_s(tmp_path):
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    def write(name, values):
        d = MmapedDict(str(tmp_path / name))
        for key, value in values.items():
            d.write_value(key, value, 0.0)
        d.close()

    stored = mmap_key("dropr_receiver_messages_stored_total", "dropr_receiver_messages_stored_total",
                      [], [], "stored")
    bucket = mmap_key("dropr_receiver_request_seconds", "dropr_receiver_request_seconds_bucket",
                      ["le"], ["0.1"], "latency")
    write("counter_11.db", {stored: 3.0})
    write("histogram_11.db", {bucket: 3.0})
    write("counter_12.db", {stored: 4.0})
    write("counter_archive.db", {stored: 10.0})
    before = sorted((m.name, s.value) for m in MultiProcessCollector.merge(
        [str(p) for p in tmp_path.glob("*.db")]) for s in m.samples)
    metricsfolder.fold(str(tmp_path), live=[12])
    metricsfolder.fold(str(tmp_path), live=[12])  # nothing more to fold
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_12.db", "counter_archive.db", "histogram_archive.db"]
    assert stored_by_file(str(tmp_path / "counter_archive.db")) == 13
    after = sorted((m.name, s.value) for m in MultiProcessCollector.merge(
        [str(p) for p in tmp_path.glob("*.db")]) for s in m.samples)
    assert after == before


def test_a_fold_that_cannot_have_the_lock_is_left_to_the_next(tmp_path):
    from prometheus_client.mmap_dict import MmapedDict

    d = MmapedDict(str(tmp_path / "counter_11.db"))
    d.write_value('["a", "a", {}, "h"]', 1.0, 0.0)
    d.close()
    with metricsfolder.folder_lock(str(tmp_path), fcntl.LOCK_SH):  # a scrape under way
        started = time.monotonic()
        metricsfolder.fold(str(tmp_path))
        assert time.monotonic() - started < metricsfolder.FOLD_WAIT + 1
        assert (tmp_path / "counter_11.db").exists()
    metricsfolder.fold(str(tmp_path))
    assert not (tmp_path / "counter_11.db").exists()


def workers_of(master_pid, count=2):
    return harness.wait_for(
        lambda: (kids := [c.pid for c in psutil.Process(master_pid).children()])
        and len(kids) == count and kids, 15, what=f"{count} gunicorn workers")


def pause(pid):
    os.kill(pid, signal.SIGSTOP)
    harness.wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 5,
                     what=f"worker {pid} stopped")


@pytest.mark.process
def test_counts_are_summed_over_the_workers_and_outlive_them(receiver):
    master = receiver.proc.pid
    first, second = workers_of(master)
    url = receiver.url + "/v1/channels/summed/messages"
    # While one worker is paused, the other accepts every connection.
    for paused, count in ((first, 3), (second, 2)):
        pause(paused)
        try:
            for _ in range(count):
                assert http_post(url, b"0123456789")[0] == 201
        finally:
            os.kill(paused, signal.SIGCONT)
    folder = folder_of(master)
    assert (stored_by(folder, second), stored_by(folder, first)) == (3, 2)
    text = scrape(receiver.url)
    assert value(text, "dropr_receiver_messages_stored_total") == 5
    assert value(text, "dropr_receiver_bytes_stored_total") == 50

    os.kill(first, signal.SIGKILL)  # gunicorn replaces it; what it counted stays
    harness.wait_for(lambda: first not in workers_of(master), 15, what="a new worker")
    assert value(scrape(receiver.url), "dropr_receiver_messages_stored_total") == 5
    # ... in the archive, not in files of its own: the folder does not grow
    # with every worker that exits.
    harness.wait_for(lambda: not os.path.exists(os.path.join(folder, f"counter_{first}.db")),
                     5, what="the exited worker's counts folded into the archive")
    assert not os.path.exists(os.path.join(folder, f"histogram_{first}.db"))
    assert stored_by_file(os.path.join(folder, "counter_archive.db")) == 2
    receiver.stop()
    assert folder_of(master) is None


@pytest.fixture
def small_mount(tmp_path):
    """A 16 MiB tmpfs under tmp_path (root only), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.process
def test_not_ready_on_a_read_only_store_until_it_is_writable_again(tmp_path, small_mount):
    path = harness.write_config(tmp_path, sections={"receiver": {
        "store": str(small_mount / "store"), "min_free_bytes": 1 << 20, "workers": 1}})
    receiver = harness.Receiver(path).start()
    try:
        assert harness.http_get(receiver.url + "/v1/ready")[0] == 200
        subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
        status, body = harness.http_get(receiver.url + "/v1/ready")
        assert status == 503 and b"Read-only file system" in body
        assert harness.http_get(receiver.url + "/v1/health")[0] == 200
        subprocess.run(["mount", "-o", "remount,rw", str(small_mount)], check=True)
        assert harness.http_get(receiver.url + "/v1/ready")[0] == 200
    finally:
        receiver.stop()
        harness.remove_queues(tmp_path / "client")


@pytest.mark.process
def test_metrics_add_up_under_droprd(tmp_path):
    from tests.supervisor.conftest import FAST, Droprd

    port = harness.free_port()
    sections = {**FAST, "workers": {"sender": 0, "retry_scanner": 0, "reaper": 0,
                                    "receiver": 1}}
    tree = Droprd(harness.write_config(tmp_path, port=port, sections=sections),
                  port=port, sections=sections)
    url = f"http://127.0.0.1:{port}"
    try:
        tree.start()
        harness.wait_for(lambda: harness.http_get(url + "/v1/ready")[0] == 200, 15,
                         what="receiver ready")
        for _ in range(4):
            assert http_post(url + "/v1/channels/tree/messages", b"abc")[0] == 201
        assert value(scrape(url), "dropr_receiver_messages_stored_total") == 4
        master = tree.workers()["receiver"]["pid"]
        assert folder_of(master) is not None
    finally:
        killed = tree.cleanup()
    assert not killed
    assert folder_of(master) is None


def test_a_paused_channel_shows_in_the_metrics(make_app):
    client, store, _ = make_app()
    store.put("orders", "o-1", b"x", priority=5, client="t")
    store.put("events", "e-1", b"y", priority=5, client="t")
    store.pause("orders")
    text = client.simulate_get("/metrics", **LOOPBACK).text
    assert value(text, "dropr_receiver_store_paused", channel="orders") == 1
    assert value(text, "dropr_receiver_store_paused", channel="events") == 0
