"""The producer API: put() spools a message and returns its id; on any error it
leaves nothing in the spool; it wakes the senders through the real SysV queue."""

import io
import os
import shutil
import subprocess
import sys

import pytest

from dropr import Client, SpoolFull, UnknownPeer, ValidationError, config
from dropr.ipc import Notices
from dropr.spool import parse
from tests.support import harness


def spool_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def client(config_path):
    return Client(config_path)


def test_put_bytes_path_and_file_object(client, tmp_path):
    src = tmp_path / "body.bin"
    src.write_bytes(os.urandom(300_000))
    ids = [client.put(b"abc", "local"), client.put(src, "local", "files", 0),
           client.put(io.BytesIO(b"xyz"), "local", priority=9)]
    queue = client.spool.dirs["queue"]
    by_id = {parse(p.name).id: p for p in queue.iterdir()}
    assert set(by_id) == set(ids)
    assert by_id[ids[0]].read_bytes() == b"abc"
    assert by_id[ids[1]].read_bytes() == src.read_bytes()
    assert parse(by_id[ids[1]].name).channel == "files" and parse(by_id[ids[1]].name).priority == 0
    assert [n.id for n in client.spool.names("queue")] == [ids[1], ids[0], ids[2]]
    assert not list(client.spool.dirs["tmp"].iterdir())


@pytest.mark.parametrize("kwargs, error, text", [
    ({"peer": "nowhere"}, UnknownPeer, "unknown peer 'nowhere'"),
    ({"peer": "local", "channel": "../etc"}, ValidationError, "bad channel"),
    ({"peer": "local", "channel": ""}, ValidationError, "bad channel"),
    ({"peer": "local", "priority": 10}, ValidationError, "out of range"),
    ({"peer": "local", "priority": "high"}, ValidationError, "priority must be"),
    ({"peer": "local", "ttl": -1}, ValidationError, "ttl must be"),
])
def test_bad_put_is_refused_and_leaves_nothing(client, tmp_path, kwargs, error, text):
    with pytest.raises(error, match=text):
        client.put(b"data", **kwargs)
    assert spool_files(tmp_path / "client") == []


def test_bad_data_type_leaves_nothing(client, tmp_path):
    with pytest.raises(ValidationError, match="data must be"):
        client.put(12345, "local")
    assert spool_files(tmp_path / "client") == []


@pytest.fixture
def small_disk(tmp_path):
    harness.require_root()
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.process
def test_full_disk_raises_spool_full_and_leaves_no_partial_file(tmp_path, small_disk):
    path = harness.write_config(tmp_path, sections={"client": {"spool": str(small_disk / "spool")}})
    client = Client(path)
    client.put(b"x" * 1000, "local")
    with pytest.raises(SpoolFull, match="is full"):
        client.put(b"y" * 1_000_000, "local")
    assert [p.name for p in client.spool.dirs["tmp"].iterdir()] == []
    assert len(list(client.spool.dirs["queue"].iterdir())) == 1
    client.put(b"z" * 1000, "local")  # still usable once the big one is refused
    harness.remove_queues(small_disk / "spool")


def test_put_wakes_senders_at_most_notify_max(config_path, tmp_path):
    notices = Notices.replace(tmp_path / "client")
    try:
        client = Client(config_path)
        for _ in range(10):
            client.put(b"m", "local")
        assert notices._wake.current_messages == config.load(config_path).client.notify_max
        assert notices.wait(0.01) is True
        assert notices._wake.current_messages == 0
        assert notices.wait(0.05) is False
    finally:
        notices.remove()


def test_put_without_daemon_needs_no_queue(client, tmp_path):
    assert Notices.open(tmp_path / "client") is None
    client.put(b"m", "local")
    assert Notices.open(tmp_path / "client") is None


def test_queue_keys_differ_per_spool(tmp_path):
    from dropr.ipc import queue_key

    a, b = tmp_path / "a", tmp_path / "b"
    keys = {queue_key(a, "wake"), queue_key(b, "wake"), queue_key(a, "report")}
    assert len(keys) == 3 and all(0 < k < 2**31 for k in keys)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_put_keeps_its_wake_queue_while_the_queue_is_full(config_path, tmp_path):
    # A full wake queue is not a missing one: reopening it per put cost 44% of put's time.
    notices = Notices.replace(tmp_path / "client")
    try:
        client = Client(config_path)
        client.put(b"m", "local")
        handle = client._notices
        for _ in range(20):
            client.put(b"m", "local")
        assert client._notices is handle
        assert notices.wait(0.01) is True  # a sender drains the burst ...
        client.put(b"m", "local")          # ... and the next put wakes it again at once
        assert notices._wake.current_messages == 1
    finally:
        notices.remove()


def test_put_finds_the_queue_of_a_restarted_daemon_within_a_quarter_second(config_path, tmp_path):
    clock = Clock()
    client = Client(config_path, monotonic=clock)
    old = Notices.replace(tmp_path / "client")
    try:
        client.put(b"m", "local")
        assert old._wake.current_messages == 1
        new = Notices.replace(tmp_path / "client")  # droprd restarted: old queue removed
        client.put(b"m", "local")                   # finds the old one gone
        client.put(b"m", "local")                   # too soon to look again
        assert new._wake.current_messages == 0
        clock.now += 0.3
        client.put(b"m", "local")
        assert new._wake.current_messages == 1
    finally:
        Notices.replace(tmp_path / "client").remove()


def test_put_without_daemon_looks_for_the_queue_at_most_every_quarter_second(config_path, tmp_path):
    clock = Clock()
    client = Client(config_path, monotonic=clock)
    client.put(b"m", "local")  # no queue: looked once
    notices = Notices.replace(tmp_path / "client")
    try:
        for _ in range(5):
            client.put(b"m", "local")
        assert notices._wake.current_messages == 0
        clock.now += 0.3
        client.put(b"m", "local")
        assert notices._wake.current_messages == 1
    finally:
        notices.remove()


def test_put_many_spools_every_body_in_order_with_one_set_of_options(client, tmp_path):
    src = tmp_path / "body.bin"
    src.write_bytes(os.urandom(100_000))
    bodies = [b"abc", src, io.BytesIO(b"xyz"), b""]
    ids = client.put_many(bodies, peer="local", channel="bulk", priority=2, ttl=60)
    assert len(set(ids)) == 4 and ids == sorted(ids)  # ids sort by time: the order given
    by_id = {parse(p.name).id: p for p in client.spool.dirs["queue"].iterdir()}
    assert [by_id[i].read_bytes() for i in ids] == [b"abc", src.read_bytes(), b"xyz", b""]
    names = [parse(by_id[i].name) for i in ids]
    assert {(n.peer, n.channel, n.priority) for n in names} == {("local", "bulk", 2)}
    assert all(n.expires_ms > 0 for n in names)
    assert os.listdir(client.spool.dirs["tmp"]) == []
    assert client.put_many([], peer="local") == []


def test_put_many_refused_leaves_nothing(client, tmp_path):
    with pytest.raises(ValidationError, match="data must be"):
        client.put_many([b"good", b"good", 12345], peer="local")
    with pytest.raises(UnknownPeer):
        client.put_many([b"x"], peer="nowhere")
    with pytest.raises(FileNotFoundError):
        client.put_many([b"x", tmp_path / "missing"], peer="local")
    assert spool_files(tmp_path / "client") == []


@pytest.mark.process
def test_put_many_on_a_full_disk_raises_spool_full_and_takes_back_the_batch(tmp_path, small_disk):
    path = harness.write_config(tmp_path, sections={"client": {"spool": str(small_disk / "spool")}})
    client = Client(path)
    with pytest.raises(SpoolFull, match="is full"):
        client.put_many([b"x" * 50_000] * 10, peer="local")
    assert spool_files(small_disk / "spool") == []
    assert len(client.put_many([b"y" * 1000] * 3, peer="local")) == 3
    harness.remove_queues(small_disk / "spool")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (Debian package strace)")
@pytest.mark.process
def test_put_many_with_fsync_flushes_once_for_the_batch(tmp_path):
    # One syncfs for the batch (and one fsync of queue/), not an fsync per message.
    path = harness.write_config(tmp_path, sections={"client": {"fsync": True, "notify_max": 0}})
    code = ("import os, sys\nfrom dropr import Client\n"
            "c = Client(sys.argv[1]); c.put(b'warm', peer='local')\n"
            "os.write(1, b'BATCH')\n"
            "c.put_many([b'x' * 1000] * 50, peer='local')\n")
    result = subprocess.run(["strace", "-f", "-e", "trace=fsync,fdatasync,syncfs,write",
                             sys.executable, "-c", code, str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    trace = result.stderr.split('"BATCH"', 1)[1]
    calls = [line.split("(", 1)[0].rsplit(" ", 1)[-1] for line in trace.splitlines()
             if "(" in line]
    assert (calls.count("syncfs"), calls.count("fsync"), calls.count("fdatasync")) == (1, 1, 0)
