"""Poison and expiry: a message the receiver rejects for good, or one that
expires, goes to dead/ with its reason; `dropr spool dead` lists them and
`dropr spool requeue ID|--all` sends them again. Real receiver, real
`dropr send --once`, real files."""

import time

import pytest

from dropr import Client
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process


def dead_listing(config_path):
    out = harness.run_dropr(config_path, "spool", "dead").stdout.decode()
    return [line.split("\t") for line in out.splitlines()]


def test_rejected_message_goes_to_dead_with_its_reason_and_requeue_sends_it(tmp_path):
    small = harness.write_config(tmp_path, sections={"receiver": {"max_message_bytes": 100}})
    receiver = harness.Receiver(small).start()
    try:
        client = Client(small)
        big = client.put(b"x" * 1000, "local", "files")
        fine = client.put(b"small", "local", "files")
        harness.run_dropr(small, "send", "--once")
        ((mid, peer, channel, reason),) = dead_listing(small)
        assert (mid, peer, channel) == (big, "local", "files")
        assert "rejected by peer local" in reason and "limit of 100 bytes" in reason
        store = Store(client.config.receiver.store, fsync=False)
        assert [m.id for m in store.messages("files")] == [fine]
    finally:
        receiver.stop()
    # The operator raises the limit, then sends the message again.
    port = int(client.config.receiver.bind.rpartition(":")[2])
    large = harness.write_config(tmp_path, port=port,
                                 sections={"receiver": {"max_message_bytes": 10_000}})
    receiver = harness.Receiver(large).start()
    try:
        assert harness.run_dropr(large, "spool", "requeue", big).stdout.decode().split() == [big]
        assert dead_listing(large) == [] and not list(client.spool.dirs["dead"].iterdir())
        harness.run_dropr(large, "send", "--once")
        assert store.get("files", big).read() == b"x" * 1000
    finally:
        receiver.stop()
        harness.remove_queues(tmp_path / "client")


def test_expired_message_goes_to_dead_unsent_and_requeue_drops_its_expiry(config_path, receiver):
    client = Client(config_path)
    gone = client.put(b"too late", "local", ttl=0.05)
    harness.wait_for(lambda: time.time() * 1000 > client.spool.names("queue")[0].expires_ms,
                     5, what="the ttl to run out")
    harness.run_dropr(config_path, "send", "--once")
    store = Store(client.config.receiver.store, fsync=False)
    assert store.count("common") == 0
    assert dead_listing(config_path) == [[gone, "local", "common", "expired"]]
    harness.run_dropr(config_path, "spool", "requeue", "--all")
    (name,) = client.spool.names("queue")
    assert (name.id, name.expires_ms, name.attempts) == (gone, 0, 0)
    harness.run_dropr(config_path, "send", "--once")
    assert store.get("common", gone).read() == b"too late"


@pytest.mark.parametrize("args, code, text", [
    (["requeue"], 2, "give one message ID or --all"),
    (["requeue", "X", "--all"], 2, "give one message ID or --all"),
    (["requeue", "NOPE"], 1, "no dead message NOPE"),
    (["requeue", "--all"], 1, "no dead messages"),
])
def test_requeue_without_a_dead_message_is_a_clear_error(config_path, args, code, text):
    result = harness.run_dropr(config_path, "spool", *args, check=False)
    assert result.returncode == code and text in result.stderr.decode()
