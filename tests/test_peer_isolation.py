"""One peer's trouble holds back no other peer's messages, nor the good
messages of the same peer: a hung peer, a peer that is down, and a message
on a channel the token may not write, against the real receiver."""

import threading
import time

import pytest

from dropr import config as config_mod
from dropr.client import Client
from dropr.peers import Peers
from dropr.sender.sender import Sender
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process


@pytest.fixture
def two_peers(tmp_path):
    """make(sections=None, hung=None) -> config with peers ``local`` (a real
    receiver) and ``hung`` (``hung``'s keys, default a port that never answers)."""
    started = []

    def make(sections=None, hung=None, local=None):
        port = harness.free_port()
        peers = {"local": {"url": f"http://127.0.0.1:{port}", **(local or {})},
                 "hung": {"url": listener, "connect_timeout": 1.0, "timeout": 4.0,
                          **(hung or {})}}
        path = harness.write_config(tmp_path, port=port, peers=peers, sections=sections)
        receiver = harness.Receiver(path)
        started.append(receiver)
        receiver.start()
        return config_mod.load(path)

    with harness.hung_listener() as listener:
        yield make
        for receiver in started:
            receiver.stop()
    harness.remove_queues(tmp_path / "client")


def stored(config, channel="common"):
    return {m.id for m in Store(config.receiver.store, fsync=False).messages(channel)}


def test_a_hung_peer_does_not_delay_the_messages_of_a_healthy_one(two_peers):
    config = two_peers()
    client = Client(config)
    for i in range(5):
        client.put(b"h%d" % i, "hung")
    healthy = {client.put(b"g%d" % i, "local") for i in range(5)}
    sender = Sender(config).open()
    started = time.monotonic()
    try:
        while stored(config) != healthy and time.monotonic() - started < 10:
            sender.step()
        took = time.monotonic() - started
        assert stored(config) == healthy
        # The hung upload times out after 4 s; the healthy peer must not wait for it.
        assert took < 2.0, f"healthy messages waited {took:.1f} s behind a hung peer"
    finally:
        sender.close()
    assert {n.peer for n in client.spool.names("deferred")} == {"hung"}
    assert client.spool.count("deferred") == 5 and client.spool.count("active") == 0


def test_a_message_on_a_forbidden_channel_does_not_hold_back_the_others(two_peers, tmp_path):
    token = tmp_path / "c1.token"
    token.write_text("secret-token-for-c1\n")
    config = two_peers(
        {"receiver.clients.c1": {"token_file": str(token), "channels": ["ok"]}},
        local={"token_file": str(token)})
    client = Client(config)
    refused = client.put(b"poison", "local", channel="okk")
    good = {client.put(b"g%d" % i, "local", channel="ok") for i in range(20)}
    sender = Sender(config).open()
    try:
        assert sender.drain() == 21
    finally:
        sender.close()
    assert stored(config, "ok") == good
    deferred, = client.spool.names("deferred")
    assert deferred.id == refused and deferred.attempts == 1
    assert Peers(client.spool).state("local") == {}  # its other channels are fine: not down


def test_a_hung_peer_s_probe_does_not_hold_up_the_retry_scan(two_peers):
    # The hung peer's probe takes its connect_timeout (3 s); the healthy peer's
    # due message must go back to queue/ in the same scan, at once.
    from dropr.retry_scanner.scanner import RetryScanner

    config = two_peers(hung={"connect_timeout": 3.0})
    client = Client(config)
    due = client.put(b"m", "local")
    name, = client.spool.names("queue")
    client.spool.to_deferred(client.spool.dirs["queue"] / str(name), name, due_ms=1)
    Peers(client.spool).mark_down("hung", until=time.time(), failures=1, error="timeout")
    scanner = RetryScanner(config).open()
    try:
        started = time.monotonic()
        assert scanner.scan() == 1
        assert time.monotonic() - started < 1.5
        assert [n.id for n in client.spool.names("queue")] == [due]
        harness.wait_for(lambda: scanner.scan() >= 0 and "curl error 28" in
                         Peers(client.spool).state("hung").get("error", ""), 10,
                         what="the hung probe's timeout recorded")
        assert Peers(client.spool).state("hung")["failures"] == 2
    finally:
        scanner.close()


def test_a_sender_may_stay_silent_while_it_fails_over_across_every_url(tmp_path):
    # Stopping, it finishes the upload on the wire, which may try all 3 URLs.
    from dropr.workers import kinds

    urls = [f"http://127.0.0.1:{harness.free_port()}" for _ in range(3)]
    config = config_mod.load(harness.write_config(tmp_path, peers={
        "p": {"urls": urls, "connect_timeout": 1.0, "timeout": 10.0}}))
    assert kinds.kind("sender").silence_limit(config) >= 3 * (1.0 + 10.0)


def test_a_message_put_while_a_hung_upload_is_in_flight_goes_at_once(two_peers, tmp_path):
    from dropr.ipc import Notices

    config = two_peers({"sender": {"wait": 5.0}})
    notices = Notices.replace(config.client.spool)
    client = Client(config)
    client.put(b"h", "hung")
    sender = Sender(config, notices=notices).open()
    try:
        assert sender.step() == 1 and sender.busy  # on the wire to the hung peer
        put = {}
        # Put while the sender waits for the hung lane (up to its 4 s timeout).
        timer = threading.Timer(0.3, lambda: put.update(
            id=client.put(b"g", "local"), at=time.monotonic()))
        timer.start()
        deadline = time.monotonic() + 5
        while not (put and put["id"] in stored(config)) and time.monotonic() < deadline:
            sender.step()
        timer.join()
        took = time.monotonic() - put["at"]
        assert put["id"] in stored(config) and took < 2.0, f"took {took:.1f} s"
    finally:
        sender.close()
        notices.remove()


def test_a_down_peer_s_backlog_stays_deferred_while_its_probe_fails(two_peers):
    # Nothing listens on the peer's port: each probe fails, so its 50 due
    # messages must stay in deferred/, not be requeued to be held again.
    from dropr.retry_scanner.scanner import RetryScanner

    config = two_peers(hung={"url": f"http://127.0.0.1:{harness.free_port()}"})
    client = Client(config)
    for i in range(50):
        client.put(b"d%d" % i, "hung")
    for name in client.spool.names("queue"):
        client.spool.to_deferred(client.spool.dirs["queue"] / str(name), name, due_ms=1)
    Peers(client.spool).mark_down("hung", until=time.time(), failures=1, error="refused")
    scanner = RetryScanner(config).open()
    try:
        assert scanner.scan() == 0
    finally:
        scanner.close()
    assert client.spool.count("deferred") == 50 and client.spool.count("queue") == 0
    assert Peers(client.spool).state("hung")["failures"] == 2
