"""Backpressure: spool limits ([client] max_messages, max_bytes, put_timeout),
a full client disk under a running droprd, and a full store disk that the
senders wait out. Disks are small tmpfs mounts (the tests run as root)."""

import os
import subprocess

import pytest

from dropr import Client, QueueFull, SpoolFull, ValidationError
from dropr.client import Backlog
from dropr.peers import Peers
from dropr.spool import Spool
from dropr.store import Store
from tests.supervisor.conftest import FAST, Droprd
from tests.support import harness


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def limited(tmp_path, **client):
    return harness.write_config(tmp_path, sections={"client": client})


def files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_put_at_max_messages_raises_queue_full_and_leaves_nothing(tmp_path):
    client = Client(limited(tmp_path, max_messages=3))
    ids = [client.put(b"m", "local") for _ in range(3)]
    with pytest.raises(QueueFull, match=r"at its limit: it holds 3 messages \(max_messages = 3\)"):
        client.put(b"one too many", "local")
    assert sorted(n.id for n in client.spool.names("queue")) == sorted(ids)
    assert files(client.spool.dirs["tmp"]) == []
    harness.remove_queues(tmp_path / "client")


def test_deferred_messages_count_toward_the_limit(tmp_path):
    client = Client(limited(tmp_path, max_messages=2))
    client.put(b"a", "local")
    client.put(b"b", "local")
    active = client.spool.open_active("t")
    (name, path, _), = client.spool.claim(active, limit=1, max_bytes=1 << 20)
    client.spool.to_deferred(path, name, due_ms=1)
    assert client.spool.backlog() == (2, 0)
    with pytest.raises(QueueFull):
        Client(client.config).put(b"c", "local")
    active.close()
    harness.remove_queues(tmp_path / "client")


def test_put_at_max_bytes_raises_queue_full(tmp_path):
    client = Client(limited(tmp_path, max_bytes=1000))
    client.put(b"x" * 600, "local")
    client.put(b"y" * 600, "local")  # admitted: the backlog was under the limit before it
    with pytest.raises(QueueFull, match=r"1200 bytes \(max_bytes = 1000\)"):
        client.put(b"z", "local")
    assert client.spool.backlog(with_bytes=True) == (2, 1200)
    harness.remove_queues(tmp_path / "client")


def test_a_refusal_is_judged_on_a_fresh_count(tmp_path):
    """A sender that drained the queue a moment ago must not cause a refusal."""
    clock = FakeTime()
    client = Client(limited(tmp_path, max_messages=2), monotonic=clock.monotonic,
                    sleep=clock.sleep)
    client.put(b"a", "local")
    client.put(b"b", "local")
    active = client.spool.open_active("t")
    client.spool.claim(active, limit=10, max_bytes=1 << 20)  # a sender took both
    client.put(b"c", "local")  # the cached count says full; a recount says room
    assert clock.slept == [] and client.spool.backlog() == (1, 0)
    active.close()
    harness.remove_queues(tmp_path / "client")


def test_admissions_reuse_a_recent_count():
    counted = []

    class Counting:
        def backlog(self, *, with_bytes):
            counted.append(with_bytes)
            return 0, 0
    clock = FakeTime()
    backlog = Backlog(Counting(), max_messages=100, max_bytes=0, recount=0.5,
                      clock=clock.monotonic)
    for _ in range(10):
        assert backlog.has_room()
        backlog.added(1)
    assert counted == [False]
    clock.now += 0.5
    assert backlog.has_room() and counted == [False, False]


def test_put_with_timeout_waits_then_raises_queue_full(tmp_path):
    clock = FakeTime()
    client = Client(limited(tmp_path, max_messages=1), monotonic=clock.monotonic,
                    sleep=clock.sleep)
    client.put(b"a", "local")
    with pytest.raises(QueueFull):
        client.put(b"b", "local", timeout=0.3)
    assert sum(clock.slept) == pytest.approx(0.3) and max(clock.slept) <= 0.05
    assert files(client.spool.dirs["tmp"]) == [] and client.spool.backlog() == (1, 0)
    harness.remove_queues(tmp_path / "client")


def test_put_timeout_from_the_config_is_the_default(tmp_path):
    clock = FakeTime()
    client = Client(limited(tmp_path, max_messages=1, put_timeout=0.2),
                    monotonic=clock.monotonic, sleep=clock.sleep)
    client.put(b"a", "local")
    with pytest.raises(QueueFull):
        client.put(b"b", "local")
    assert sum(clock.slept) == pytest.approx(0.2)
    with pytest.raises(QueueFull):
        client.put(b"b", "local", timeout=0)  # per call: do not wait at all
    assert sum(clock.slept) == pytest.approx(0.2)
    harness.remove_queues(tmp_path / "client")


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), "1", True])
def test_bad_put_timeout_is_refused(tmp_path, timeout):
    client = Client(limited(tmp_path))
    with pytest.raises(ValidationError, match="timeout must be"):
        client.put(b"a", "local", timeout=timeout)
    assert client.spool.backlog() == (0, 0)
    harness.remove_queues(tmp_path / "client")


@pytest.mark.process
def test_blocked_put_goes_through_once_a_sender_makes_room(tmp_path):
    path = limited(tmp_path, max_messages=2)
    receiver = harness.Receiver(path).start()
    try:
        client = Client(path)
        client.put(b"a", "local")
        client.put(b"b", "local")
        sender = subprocess.Popen([*harness.DROPR, "--config", str(path), "send", "--once"])
        third = client.put(b"c", "local", timeout=60)
        assert sender.wait(60) == 0
        assert [n.id for n in client.spool.names("queue")] in ([third], [])
    finally:
        receiver.stop()
        harness.remove_queues(tmp_path / "client")


@pytest.mark.process
def test_dropr_put_at_the_limit_exits_1_with_a_clear_error(tmp_path):
    path = limited(tmp_path, max_messages=1)
    harness.run_dropr(path, "put", "--peer", "local", input=b"a")
    result = harness.run_dropr(path, "put", "--peer", "local", "--timeout", "0.1",
                               input=b"b", check=False)
    assert result.returncode == 1
    assert b"at its limit" in result.stderr and b"max_messages = 1" in result.stderr
    harness.remove_queues(tmp_path / "client")


# -- full disks ---------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs disks under tmp_path: ``tmpfs(name, size)``; unmounted after."""
    harness.require_root()
    mounts = []

    def mount(name, size):
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True)
        mounts.append(path)
        return path
    yield mount
    for path in mounts:
        if subprocess.run(["umount", str(path)]).returncode:
            subprocess.run(["umount", "-l", str(path)])


def fill(directory):
    """Take every free byte of the disk under ``directory`` with a ballast file."""
    ballast = directory / "ballast"
    with open(ballast, "ab", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return ballast


@pytest.fixture
def tree(tmp_path):
    """make(sections) -> a Droprd (senders, retry scanner, reaper; no receiver)."""
    trees = []

    def make(sections):
        merged = {k: dict(v) for k, v in FAST.items()}
        for section, values in sections.items():
            merged.setdefault(section, {}).update(values)
        port = harness.free_port()
        path = harness.write_config(tmp_path, port=port, sections=merged)
        trees.append(Droprd(path, port=port, sections=merged))
        return trees[-1]
    yield make
    for t in trees:
        assert not t.cleanup(), t.log_tail()


@pytest.mark.process
def test_full_client_disk_refuses_put_and_the_daemon_keeps_running(tmp_path, tmpfs, tree):
    disk = tmpfs("client-disk", "1m")
    droprd = tree({"client": {"spool": str(disk / "spool")}})
    droprd.start()
    receiver = harness.Receiver(droprd.config_path).start()
    try:
        client = Client(droprd.config_path)
        ballast = fill(disk)
        for _ in range(3):
            with pytest.raises(SpoolFull, match="is full"):
                client.put(os.urandom(50_000), "local")
        assert files(client.spool.dirs["tmp"]) == [] and client.spool.backlog() == (0, 0)
        assert droprd.run("status").returncode == 0
        assert all(w["state"] == "running" for w in droprd.workers().values())
        ballast.unlink()
        message_id = client.put(b"after the disk had room again", "local")
        store = Store(droprd.config.receiver.store, fsync=False)
        harness.wait_for(lambda: store.count("common") == 1, 15, what="delivery")
        assert store.get("common", message_id).read() == b"after the disk had room again"
    finally:
        receiver.stop()


@pytest.mark.process
def test_full_store_disk_answers_507_senders_defer_then_everything_flows(tmp_path, tmpfs, tree):
    disk = tmpfs("store-disk", "4m")
    droprd = tree({"receiver": {"store": str(disk / "store"), "min_free_bytes": 0}})
    receiver = harness.Receiver(droprd.config_path).start()
    try:
        ballast = fill(disk)
        status, body = post_message(droprd.config, b"refused")
        assert status == 507 and b"store_full" in body
        droprd.start()
        client = Client(droprd.config_path)
        ids = {client.put(os.urandom(1000), "local") for _ in range(20)}
        spool = Spool(droprd.config.client.spool)
        harness.wait_for(lambda: spool.count("deferred") > 0 or Peers(spool).down(), 15,
                         what="senders to defer")
        store = Store(droprd.config.receiver.store, fsync=False)
        assert store.count("common") == 0 and os.listdir(disk / "store" / "tmp") == []
        ballast.unlink()
        harness.wait_for(lambda: store.count("common") == 20, 30, what="all 20 stored")
        assert {m.id for m in store.messages("common")} == ids
        assert spool.counts()["dead"] == 0
    finally:
        receiver.stop()


def post_message(config, body):
    import urllib.request

    request = urllib.request.Request(config.peers["local"].url + "/v1/channels/common/messages",
                                     data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.process
def test_sender_on_a_full_client_disk_defers_instead_of_crashing(tmp_path, tmpfs):
    """Found by the chaos run: marking a peer down wrote a file, and ENOSPC
    there crashed the sender, over and over, until the supervisor gave up."""
    from dropr.sender.sender import Sender

    disk = tmpfs("client-disk", "1m")
    path = harness.write_config(tmp_path, sections={"client": {"spool": str(disk / "spool")}})
    client = Client(path)
    client.put(b"for a peer that is down", "local")  # nobody listens on its port
    ballast = fill(disk)
    sender = Sender(client.config).open()
    try:
        assert sender.run_once() == 1
    finally:
        sender.close()
    assert client.spool.count("deferred") == 1 and client.spool.count("active") == 0
    assert [p.name for p in client.spool.dirs["tmp"].iterdir()] == []
    ballast.unlink()
    harness.remove_queues(disk / "spool")


@pytest.mark.process
def test_expired_message_on_a_full_client_disk_waits_for_room_to_go_to_dead(tmp_path, tmpfs):
    """No room for the reason: the message stays in deferred/ (no crash), and
    goes to dead/ with its reason once there is room."""
    import time

    from dropr.retry_scanner.scanner import RetryScanner
    from dropr.sender.sender import Sender

    disk = tmpfs("client-disk", "1m")
    path = harness.write_config(tmp_path, sections={"client": {"spool": str(disk / "spool")}})
    client = Client(path)
    client.put(b"short-lived", "local", ttl=1)
    later = lambda: time.time() + 60  # noqa: E731 - a clock past the expiry
    ballast = fill(disk)
    sender = Sender(client.config, clock=later).open()
    try:
        assert sender.run_once() == 1
    finally:
        sender.close()
    (name,) = client.spool.names("deferred")
    assert name.attempts == 0 and client.spool.count("dead") == 0
    scanner = RetryScanner(client.config, clock=later).open()
    assert scanner.scan() == 0 and client.spool.names("deferred") == [name]
    ballast.unlink()
    assert scanner.scan() == 1
    assert client.spool.names("dead") == [name] and client.spool.reason(name) == "expired\n"
    harness.remove_queues(disk / "spool")
