"""The producer API: put() spools a message and returns its id; on any error it
leaves nothing in the spool; it wakes the senders through the real SysV queue."""

import io
import os
import subprocess

import pytest

from dropr import Client, SpoolFull, UnknownPeer, ValidationError, config
from dropr.ipc import Notices
from dropr.spool import parse
from tests import harness


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
