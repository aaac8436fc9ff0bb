"""How a peer marked down comes back: readiness probes, backoff kept across
probes, the whole backlog at once when a sender gets through first, and
waits that a wall clock stepped back cannot stretch. Real receiver, real
sender and retry scanner, in this process."""

import json
import time

import pytest

from dropr import config as config_mod
from dropr.client import Client
from dropr.retry_scanner.scanner import RetryScanner
from dropr.sender.sender import Sender
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process

GOOD_TOKEN = "good-token-0123456789abcdef"


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def peer(tmp_path):
    """make(sections=None, local=None, start=True) -> (config, receiver)."""
    started = []

    def make(sections=None, local=None, start=True):
        port = harness.free_port()
        peers = {"local": {"url": f"http://127.0.0.1:{port}", **(local or {})}}
        path = harness.write_config(tmp_path, port=port, peers=peers, sections=sections)
        receiver = harness.Receiver(path)
        started.append(receiver)
        if start:
            receiver.start()
        return config_mod.load(path), receiver

    yield make
    for receiver in started:
        receiver.stop()
    harness.remove_queues(tmp_path / "client")


def stored(config, channel="common"):
    return {m.id for m in Store(config.receiver.store, fsync=False).messages(channel)}


def run_for(seconds, sender, scanner):
    """Drive a sender and a retry scanner as droprd would, for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        scanner.scan()
        sender.drain()
        time.sleep(0.05)


def test_a_live_receiver_that_cannot_store_is_not_retried_every_second(peer):
    # Alive (/v1/health answers) but its store is below min_free_bytes: 507 to
    # every upload, 503 on /v1/ready. The probe must see it is not ready.
    config, _ = peer({"receiver": {"min_free_bytes": 2**62}})
    ids = [Client(config).put(b"m%d" % i, "local") for i in range(3)]
    sender, scanner = Sender(config).open(), RetryScanner(config).open()
    try:
        run_for(3.0, sender, scanner)
    finally:
        sender.close()
    attempts = {n.id: n.attempts for n in sender.spool.names("deferred")}
    assert attempts == {i: 1 for i in ids}  # tried once, then left alone
    state = sender.peers.state("local")
    assert state["failures"] >= 3 and "not_ready" in state["error"]


def test_a_ready_receiver_that_refuses_uploads_is_retried_with_a_growing_pause(peer, tmp_path):
    # /v1/ready answers, every upload gets 401: each probe may let one batch
    # try, but the peer's failure count (so its pause) must keep growing.
    token = tmp_path / "good.token"
    token.write_text(GOOD_TOKEN)
    config, _ = peer({"receiver.clients.c1": {"token_file": str(token)}},
                     local={"token": "wrong-token-0123456789abcdef"})
    Client(config).put(b"m", "local")
    sender, scanner = Sender(config).open(), RetryScanner(config).open()
    try:
        run_for(3.0, sender, scanner)
    finally:
        sender.close()
    state = sender.peers.state("local")
    assert state["failures"] >= 3 and "HTTP 401" in state["error"]
    name, = sender.spool.names("deferred") or sender.spool.names("queue")
    assert name.attempts <= state["failures"]


def test_a_sender_first_through_after_an_outage_brings_all_deferred_at_once(peer):
    # Each deferred message's own backoff is 60 s; the peer comes back, and a
    # sender (not the probe) gets a new message through first.
    config, receiver = peer({"retry": {"base": 60.0, "cap": 60.0}}, start=False)
    client = Client(config)
    early = [client.put(b"e%d" % i, "local") for i in range(5)]
    sender, scanner = Sender(config).open(), RetryScanner(config).open()
    try:
        sender.drain()
        assert sender.spool.count("deferred") == 5 and sender.peers.down() == ["local"]
        receiver.start()
        harness.wait_for(lambda: sender.peers.pause(
            sender.peers.state("local"), cap=60) == 0, 5, what="peer pause over")
        late = client.put(b"late", "local")
        sender.drain()
        assert stored(config) == {late} and sender.peers.down() == []
        assert scanner.scan() == 5
        sender.drain()
    finally:
        sender.close()
    assert stored(config) == {late, *early}


def test_a_wall_clock_stepped_back_does_not_stretch_a_peer_pause(peer):
    config, _ = peer()
    wall, boot = Clock(time.time()), Clock(1000.0)
    client = Client(config, clock=wall)
    sender = Sender(config, clock=wall, boottime=boot).open()
    try:
        sender.peers.mark_down("local", pause=1.0, failures=1, error="refused")
        wall.now -= 3600  # the clock is stepped back an hour; 2 s pass
        boot.now += 2
        urgent = client.put(b"urgent", "local", priority=0)
        assert sender.run_once() == 1
    finally:
        sender.close()
    assert stored(config) == {urgent}


def test_a_marker_from_another_boot_holds_no_longer_than_the_backoff_cap(peer):
    # A marker with only a wall time (another boot, or an older dropr) that
    # lies an hour ahead, as after a clock stepped back.
    config, _ = peer({"sender": {"peer_backoff_cap": 5.0}})
    client = Client(config)
    now = time.time()
    (client.spool.peers_dir / "local").write_text(json.dumps(
        {"down_until": now + 3600, "failures": 3, "error": "refused"}))
    urgent = client.put(b"urgent", "local", priority=0)
    sender = Sender(config).open()
    try:
        assert sender.run_once() == 1
    finally:
        sender.close()
    held, = sender.spool.names("deferred")
    assert held.id == urgent and held.due_ms <= (now + 5.0 + 1) * 1000


def test_a_due_time_far_beyond_any_backoff_is_taken_as_due(peer):
    # Deferred before the clock was stepped back an hour: due "in an hour".
    config, _ = peer(start=False)
    client = Client(config)
    mid = client.put(b"m", "local")
    name, = client.spool.names("queue")
    client.spool.to_deferred(client.spool.dirs["queue"] / str(name), name,
                             due_ms=int((time.time() + 3600) * 1000))
    assert RetryScanner(config).open().scan() == 1
    assert [n.id for n in client.spool.names("queue")] == [mid]
