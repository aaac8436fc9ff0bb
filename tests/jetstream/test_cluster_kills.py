"""5,000 messages, put at about 500/s through two clients and two receivers
into a 3-node JetStream cluster while first a follower and then the stream
leader are SIGKILLed and restarted: the stream ends up holding every id
exactly once, byte for byte, and a consumer reads and acks them all.

Each client side runs under droprd as deployed (a sender, the retry scanner
that brings deferred messages back, the reaper), with small backoffs so that
the batches answered 503 during an election come back within seconds."""

import hashlib
import os
import threading
import time

from dropr.client import Client
from dropr.errors import StoreUnavailable
from dropr.store import open_store
from dropr.spool import Spool
from tests.supervisor.conftest import FAST, Droprd
from tests.support import harness

TOTAL = 5000

def make_side(tmp_path, name, cluster):
    """A droprd (not started) whose peer is a receiver on the cluster."""
    sections = {k: dict(v) for k, v in FAST.items()}
    sections.update({
        "store": {"backend": "jetstream", "servers": cluster.urls, "replicas": 3,
                  "publish_timeout": 3.0, "connect_timeout": 1.0, "ack_wait": 5.0},
        "sender": {"batch_messages": 500, "wait": 0.1, "peer_backoff_base": 0.2,
                   "peer_backoff_cap": 1.0},
        "workers": {"sender": 1, "retry_scanner": 1, "reaper": 1, "receiver": 0}})
    (tmp_path / name).mkdir()
    port = harness.free_port()
    path = harness.write_config(tmp_path / name, port=port, sections=sections)
    return Droprd(path, port=port, sections=sections)


def waiting(config):
    counts = Spool(config.client.spool, fsync=False).create().counts()
    return sum(counts[s] for s in ("queue", "active", "deferred", "dead"))


def spool_empty(config):
    return waiting(config) == 0


def stream_ids(store):
    found = {}
    for channel in store.channels():
        for m in store.messages(channel):
            assert m.id not in found, f"{m.id} stored twice"
            found[m.id] = hashlib.sha256(m.body).hexdigest()
    return found


def consumer_states(cluster):
    """What the stream and its consumers say, for a failure's message."""
    import asyncio

    import nats

    async def ask():
        nc = await nats.connect(cluster.urls)
        js = nc.jetstream(timeout=5)
        out = []
        try:
            info = await js.stream_info("DROPR", subjects_filter=">")
            out.append(f"stream: {info.state.messages} msgs, first {info.state.first_seq}, "
                       f"last {info.state.last_seq}, subjects {info.state.subjects}, "
                       f"leader {info.cluster.leader}")
            for c in await js.consumers_info("DROPR"):
                if c.num_pending or c.num_ack_pending or c.num_waiting:
                    out.append(f"{c.name}: pending {c.num_pending} ack_pending "
                               f"{c.num_ack_pending} redelivered {c.num_redelivered} "
                               f"delivered {c.delivered.stream_seq} ack_floor "
                               f"{c.ack_floor.stream_seq} waiting {c.num_waiting} "
                               f"leader {c.cluster and c.cluster.leader}")
        except Exception as e:  # noqa: BLE001 - a diagnostic, whatever it finds
            out.append(f"could not ask: {e!r}")
        finally:
            await nc.close()
        return "; ".join(out)
    return asyncio.run(ask())


def test_five_thousand_messages_survive_a_follower_and_a_leader_kill(tmp_path, cluster):
    sides = [make_side(tmp_path, name, cluster) for name in ("a", "b")]
    receivers = [harness.Receiver(side.config_path).start() for side in sides]
    expected, failed, stop = {}, [], threading.Event()
    try:
        for side in sides:
            side.start()
        clients = [Client(side.config) for side in sides]
        store = open_store(sides[0].config)

        def produce():  # ~500 puts/s, so that both kills land while messages flow
            try:
                for i in range(TOTAL):
                    if stop.is_set():
                        return
                    body = os.urandom(200 + i % 1000)
                    mid = clients[i % 2].put(body, "local", channel=f"ch{i % 3}",
                                             priority=i % 10)
                    expected[mid] = hashlib.sha256(body).hexdigest()
                    if i % 10 == 9:
                        time.sleep(0.02)
            except BaseException as e:  # noqa: BLE001 - reported by the test thread
                failed.append(e)
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()

        def put_at_least(n):
            return lambda: failed or len(expected) >= n
        harness.wait_for(put_at_least(1000), 60, what="1,000 put")
        leader = harness.wait_for(lambda: cluster.stream_leader("DROPR"), 30, what="a leader")
        follower = next(n for n in cluster.nodes if n.name != leader)
        follower.kill()
        harness.wait_for(put_at_least(2000), 60, what="2,000 put")
        follower.start()
        leader_node = cluster.node(harness.wait_for(lambda: cluster.stream_leader("DROPR"),
                                                    30, what="a leader"))
        assert len(expected) < 4000, "the producer ran ahead of the kills"
        leader_node.kill()
        harness.wait_for(put_at_least(4000), 60, what="4,000 put")
        leader_node.start()
        producer.join(60)
        assert not failed and len(expected) == TOTAL, failed
        for side in sides:
            harness.wait_for(lambda: spool_empty(side.config), 120, interval=0.2,
                             what="every message acknowledged")
        harness.wait_for(lambda: (info := cluster.settled("DROPR")) and
                         info.state.messages == TOTAL, 60, interval=0.2,
                         what="every replica current, holding every message")
        found = stream_ids(store)
        missing, extra = expected.keys() - found.keys(), found.keys() - expected.keys()
        changed = [k for k in expected.keys() & found.keys() if found[k] != expected[k]]
        assert not (missing or extra or changed), (
            f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} unexpected, "
            f"{len(changed)} with other bytes")
        seen = set()
        store.open_work("check")

        def consumed():  # a consumer's leader may still be electing: claim again
            try:
                for c in range(3):
                    while batch := store.claim(f"ch{c}", "check", 500):
                        for m in batch:
                            seen.add(m.id)
                            store.ack(m)
                return sum(store.count(f"ch{c}") for c in range(3)) == 0
            except StoreUnavailable:
                return False
        try:
            harness.wait_for(consumed, 60, interval=0.5, what="every message consumed")
        except AssertionError as e:
            raise AssertionError(f"{e}; {len(seen)} consumed; {consumer_states(cluster)}") from None
        assert seen == set(expected)
        store.close()
    finally:
        stop.set()
        killed = [pid for side in sides for pid in side.cleanup()]
        for r in receivers:
            r.stop()
    assert not killed, f"droprd left processes running: {killed}"
