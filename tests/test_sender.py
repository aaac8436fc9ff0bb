"""The Sender against the real receiver (gunicorn on loopback): where each
claimed message goes for each answer, peers marked down and up, refused
batches split, and `dropr send` stopped by SIGTERM."""

import os
import signal
import subprocess
import time

import pytest

from dropr import config as config_mod
from dropr.client import Client
from dropr.peers import Peers
from dropr.sender.sender import Sender
from dropr.spool import SpoolName
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self, now=1_900_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def env(tmp_path):
    """make(sections=None, start=True) -> (config, receiver); stops what it started."""
    started = []

    def make(sections=None, start=True):
        path = harness.write_config(tmp_path, sections=sections)
        receiver = harness.Receiver(path)
        if start:
            receiver.start()
        started.append(receiver)
        return config_mod.load(path), receiver

    yield make
    for receiver in started:
        receiver.stop()
    harness.remove_queues(tmp_path / "client")


def stored(config, channel="common"):
    """{id: body} of everything in the store's queue/ for ``channel``."""
    return {m.id: m.read() for m in Store(config.receiver.store, fsync=False).messages(channel)}


def put_many(client, bodies, **kw):
    return {client.put(body, "local", **kw): body for body in bodies}


def open_sender(config, **kw):
    return Sender(config, **kw).open()


def test_delivered_messages_are_stored_identically_and_leave_the_spool(env):
    config, _ = env()
    client = Client(config)
    sent = put_many(client, [b"", b"x", bytes(range(256)) * 40, b"last"])
    sender = open_sender(config)
    try:
        assert sender.drain() == 4
        assert sender.run_once() == 0
    finally:
        sender.close()
    assert stored(config) == sent
    assert client.spool.counts() == {"queue": 0, "active": 0, "deferred": 0, "hold": 0,
                                     "sent": 0, "dead": 0}


def test_sent_retention_keeps_acknowledged_messages_in_sent(env):
    config, _ = env({"sender": {"sent_retention": 60.0}})
    ids = put_many(Client(config), [b"a", b"b"])
    sender = open_sender(config)
    try:
        sender.drain()
    finally:
        sender.close()
    assert {n.id for n in sender.spool.names("sent")} == set(ids)


def test_message_over_the_receivers_limit_goes_dead_while_the_rest_are_stored(env):
    config, _ = env({"receiver": {"max_message_bytes": 100}})
    client = Client(config)
    small = put_many(client, [b"s" * 10, b"t" * 100])
    big = client.put(b"B" * 101, "local")
    small.update(put_many(client, [b"u"]))
    sender = open_sender(config)
    try:
        assert sender.drain() == 4
    finally:
        sender.close()
    assert stored(config) == small
    dead, = client.spool.names("dead")
    assert dead.id == big
    assert client.spool.reason(dead).startswith("rejected by peer local: ")


def test_refused_batches_are_split_until_every_good_message_is_stored(env):
    # At most 4 messages and 3,000 bytes per upload (else 413), 12 messages: the
    # halves go again at once. The one over the byte limit is refused even alone
    # and dies; the one with a channel the receiver rejects dies; the rest arrive.
    config, _ = env({"receiver": {"max_batch_messages": 4, "max_batch_bytes": 3000}})
    client = Client(config)
    good = put_many(client, [b"m%d" % i for i in range(5)])
    big = client.put(b"B" * 4000, "local")
    good.update(put_many(client, [b"n%d" % i for i in range(5)]))
    bad = SpoolName(5, "0BADCHANNEL", "local", "bad..channel")
    client.spool.put(b"bad", bad)
    sender = open_sender(config)
    try:
        assert sender.drain() == 12
    finally:
        sender.close()
    assert stored(config) == good
    dead = {n.id: client.spool.reason(n) for n in client.spool.names("dead")}
    assert dead.keys() == {big, bad.id}
    assert dead[big].startswith("refused by peer local: HTTP 413 ")
    assert dead[bad.id].startswith("rejected by peer local: bad channel")
    assert client.spool.count("deferred") == 0 and Peers(client.spool).state("local") == {}


def test_peer_down_defers_the_batch_then_holds_new_ones_until_it_is_due(env):
    clock = FakeClock()
    config, receiver = env(start=False)
    client = Client(config, clock=clock)
    first = put_many(client, [b"1", b"2", b"3"])
    sender = open_sender(config, clock=clock, boottime=clock, rand=lambda: 0.5)  # jitter 0
    try:
        assert sender.run_once() == 3
        assert {n.id: (n.attempts, n.due_ms) for n in sender.spool.names("deferred")} == {
            i: (1, int((clock.now + config.retry.base) * 1000)) for i in first}
        state = sender.peers.state("local")
        assert state["failures"] == 1 and "curl error 7" in state["error"]
        assert state["down_until"] == clock.now + config.sender.peer_backoff_base

        # While it is down, new messages are parked until down_until, no attempt counted.
        later = client.put(b"4", "local")
        assert sender.run_once() == 1
        held = [n for n in sender.spool.names("deferred") if n.id == later]
        assert [(n.attempts, n.due_ms) for n in held] == [(0, int(state["down_until"] * 1000))]

        # Past down_until, still down: one more failure, a longer pause.
        clock.now += 1.0
        requeue_all(sender)
        assert sender.run_once() == 4
        state = sender.peers.state("local")
        assert state["failures"] == 2
        assert state["down_until"] == clock.now + 2 * config.sender.peer_backoff_base

        receiver.start()
        clock.now += 1.0
        requeue_all(sender)
        assert sender.run_once() == 4
        assert sender.peers.state("local") == {}
    finally:
        sender.close()
    assert sorted(stored(config)) == sorted([*first, later])


def requeue_all(sender):
    for name in sender.spool.names("deferred"):
        sender.spool.requeue("deferred", name, due_ms=0)


def test_expired_message_goes_dead_and_is_never_sent(env):
    clock = FakeClock()
    config, _ = env()
    client = Client(config, clock=clock)
    expiring = client.put(b"old news", "local", ttl=5)
    fresh = put_many(client, [b"fresh"], ttl=60)
    clock.now += 10
    sender = open_sender(config, clock=clock)
    try:
        assert sender.drain() == 2
    finally:
        sender.close()
    assert stored(config) == fresh
    dead, = client.spool.names("dead")
    assert dead.id == expiring and client.spool.reason(dead) == "expired\n"


def test_message_for_a_peer_no_longer_configured_goes_dead(env):
    config, _ = env()
    client = Client(config)
    gone = SpoolName(5, "0GONE", "retired", "common")
    client.spool.put(b"x", gone)
    sender = open_sender(config)
    try:
        assert sender.drain() == 1
    finally:
        sender.close()
    assert client.spool.reason(gone) == "unknown peer retired\n"
    assert stored(config) == {}


def test_claimed_file_that_vanished_does_not_hold_up_the_rest(env):
    config, _ = env()
    client = Client(config)
    sent = put_many(client, [b"a", b"b", b"c"])
    sender = open_sender(config)
    try:
        claimed = sender.spool.claim(sender._active, limit=10, max_bytes=10**6)
        os.unlink(claimed[1][1])  # e.g. removed by hand from active/
        del sent[claimed[1][0].id]
        sender._deliver("local", claimed)
    finally:
        sender.close()
    assert stored(config) == sent
    assert sender.spool.count("active") == 0 and sender.spool.count("queue") == 0
    assert sender.peers.state("local") == {}


def test_close_returns_claimed_messages_to_the_queue(env):
    config, _ = env(start=False)
    client = Client(config)
    ids = put_many(client, [b"a", b"b", b"c"])
    sender = open_sender(config)
    sender.spool.claim(sender._active, limit=2, max_bytes=10**6)
    assert client.spool.count("active") == 2
    sender.close()
    assert client.spool.count("active") == 0
    assert {n.id for n in client.spool.names("queue")} == set(ids)
    assert client.spool.recover_orphans() == 0  # the lock is released: nothing left to recover


def test_dropr_send_delivers_until_sigterm_then_exits_cleanly(env):
    config, _ = env({"sender": {"wait": 0.05}})
    client = Client(config)
    proc = subprocess.Popen([*harness.DROPR, "--config", str(config.path), "send"],
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        sent = put_many(client, [b"one", b"two"])
        harness.wait_for(lambda: len(stored(config)) == 2, 10, what="delivery")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.stderr.read().decode()
    finally:
        harness.with_group(proc.pid, signal.SIGKILL)
        proc.wait()
    assert stored(config) == sent
    assert client.spool.count("active") == 0 and client.spool.count("queue") == 0


def test_step_claims_the_next_batch_while_one_is_on_the_wire_and_flush_settles_it(env):
    config, _ = env({"sender": {"batch_messages": 2}})
    client = Client(config)
    sent = put_many(client, [b"a", b"b", b"c"])
    sender = open_sender(config)
    try:
        assert sender.step() == 2  # on the wire in the peer's lane, not waited for
        assert sender.step() == 1  # claimed behind it in the same lane
        assert client.spool.count("queue") == 0
        sender.flush()  # finishes the uploads in flight and settles them
    finally:
        sender.close()
    assert stored(config) == sent
    assert client.spool.count("active") == 0 and client.spool.count("queue") == 0


def test_a_sender_whose_every_lane_is_full_does_not_list_the_queue(tmp_path):
    # Two batches wait in the only peer's lane: a claim could only skip every
    # message, walking the whole listing and listing queue/ again for nothing.
    with harness.hung_listener() as url:
        path = harness.write_config(tmp_path, sections={"sender": {"batch_messages": 2}},
                                    peers={"local": {"url": url, "timeout": 3.0}})
        config = config_mod.load(path)
        client = Client(config)
        for i in range(10):
            client.put(b"m%d" % i, "local")
        sender = open_sender(config)
        try:
            assert sender.step() == 2 and sender.step() == 2
            listing = sender.spool._listing
            assert sender.step() == 0
            assert sender.spool._listing is listing
            assert client.spool.count("queue") == 6
        finally:
            sender.close()
        harness.remove_queues(tmp_path / "client")


def test_while_every_peer_is_in_its_pause_nothing_is_claimed_and_the_sender_sleeps(tmp_path):
    # A claim would only park each message in deferred/ until the pause ends,
    # one wake-up at a time, taking the CPU from the producers putting them.
    path = harness.write_config(tmp_path, sections={"sender": {"wait": 5.0}},
                                peers={"local": {"url": f"http://127.0.0.1:{harness.free_port()}"}})
    config = config_mod.load(path)
    client = Client(config)
    sender = open_sender(config)
    try:
        sender.peers.mark_down("local", pause=0.5, failures=1, error="refused")
        for i in range(3):
            client.put(b"m%d" % i, "local")
        assert sender.step() == 0
        assert (client.spool.count("queue"), client.spool.count("deferred")) == (3, 0)
        started = time.monotonic()
        assert sender.wait() is False
        assert 0.3 < time.monotonic() - started < 2.0  # the pause, not [sender] wait
        harness.wait_for(lambda: sender.peers.before_send("local", cap=60)[1] == 0, timeout=5)
        assert sender.step() == 3  # the pause is over: tried again
        sender.flush()
        assert client.spool.count("deferred") == 3  # still down
    finally:
        sender.close()
        harness.remove_queues(tmp_path / "client")
