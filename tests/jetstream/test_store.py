"""The JetStream store on a real 3-node cluster: publish, duplicates, 503
while the cluster is down, consumers in priority order, ack and bury, and the
receiver's HTTP answers on top of it (falcon's TestClient)."""

import asyncio
import collections

import pytest
from falcon import testing

from dropr import config as config_mod
from dropr.errors import StoreUnavailable, TooLarge
from dropr.ids import IdGenerator
from dropr.receiver import create_app
from dropr.store import Failures
from dropr.store.jetstream import JetStreamStore
from tests.jetstream.conftest import manage
from tests.support import harness
from tests.receiver.forms import CONTENT_TYPE, batch


def js_config(tmp_path, cluster, **store):
    keys = {"backend": "jetstream", "servers": cluster.urls, "replicas": 3,
            "publish_timeout": 3.0, "connect_timeout": 1.0, "ack_wait": 5.0, **store}
    return config_mod.load(harness.write_config(tmp_path, sections={"store": keys}))


def _open(tmp_path, config):
    return JetStreamStore(config.store, scratch=tmp_path / "scratch", clock=lambda: 1700000000.0)


@pytest.fixture
def store(tmp_path, stream):
    """A store on a stream of its own on the shared cluster."""
    cluster, keys = stream
    s = _open(tmp_path, js_config(tmp_path, cluster, **keys))
    yield s
    s.close()


@pytest.fixture
def own_store(tmp_path, cluster):
    """A store on a cluster of its own, for a test that stops it."""
    s = _open(tmp_path, js_config(tmp_path, cluster))
    yield s
    s.close()


def gone(store, channel):
    """Wait until ``channel`` holds no message: in a cluster the stream drops
    an acknowledged message a moment after the ack is answered."""
    harness.wait_for(lambda: store.count(channel) == 0, 10, interval=0.05,
                     what=f"{channel} empty")


def stage(store, mid, body=b"x", *, channel="orders", priority=5):
    return store.stage(channel, mid, body, priority=priority, client="web-1")


def test_publish_stores_then_answers_duplicate_for_the_same_id(store):
    assert store.publish(stage(store, "ID1", b"hello")) == "stored"
    assert store.publish(stage(store, "ID1", b"other")) == "duplicate"
    [m] = store.messages("orders")
    assert (m.id, m.body, m.client, m.priority, m.received_at) == (
        "ID1", b"hello", "web-1", 5, 1700000000.0)
    assert store.count("orders") == 1 and store.channels() == ["orders"]


def test_publish_many_keeps_every_ack_in_flight_and_answers_in_order(store):
    store.publish(stage(store, "M0003"))
    staged = collections.deque(stage(store, f"M{i:04d}", bytes([i % 256]) * 1024)
                               for i in range(1000))
    statuses = store.publish_many(staged)
    assert not staged  # nothing is left for the caller to discard
    assert statuses[3] == "duplicate"
    assert statuses.count("stored") == 999
    assert store.count("orders") == 1000


def test_a_deleted_stream_is_unavailable_once_then_made_again(store, stream):
    cluster, keys = stream
    assert store.publish(stage(store, "A1")) == "stored"
    manage(cluster, lambda js: js.delete_stream(keys["stream"]))
    with pytest.raises(StoreUnavailable, match="no responders|503"):
        store.publish_many(collections.deque([stage(store, "A2")]))
    assert store.publish(stage(store, "A2")) == "stored"
    assert [m.id for m in store.messages("orders")] == ["A2"]


def test_an_error_ack_from_the_stream_is_store_unavailable(store, stream):
    import nats.js.api as api

    cluster, keys = stream
    assert store.publish(stage(store, "B1")) == "stored"

    async def cap(js):
        config = (await js.stream_info(keys["stream"])).config
        config.max_msgs, config.discard = 1, api.DiscardPolicy.NEW
        await js.update_stream(config)
    manage(cluster, cap)
    with pytest.raises(StoreUnavailable, match="refused"):
        store.publish_many(collections.deque([stage(store, "B2"), stage(store, "B3")]))
    assert [m.id for m in store.messages("orders")] == ["B1"]


def test_a_body_over_the_servers_max_payload_is_too_large(store):
    with pytest.raises(TooLarge):
        stage(store, "BIG", b"x" * (1 << 20))  # nats-server's default max_payload is 1 MiB


def test_consumers_claim_priority_zero_first_and_ack_removes(store):
    for i, prio in enumerate([9, 5, 0, 5, 0]):
        store.publish(stage(store, f"P{i}", priority=prio))
    work = store.open_work("c1")
    claimed = store.claim("orders", "c1", 10)
    assert [m.id for m in claimed] == ["P2", "P4", "P1", "P3", "P0"]
    for m in claimed[:2]:
        store.ack(m)
    assert store.unclaim(work) == 3  # the rest given back at once
    again = store.claim("orders", "c1", 10)
    assert [m.id for m in again] == ["P1", "P3", "P0"]
    assert store.failures(again[0]).attempts == 1
    for m in again:
        store.ack(m)
    gone(store, "orders")


def test_retry_waits_and_bury_moves_to_dead_with_its_reason(store):
    store.publish(stage(store, "R1", b"body"))
    [m] = store.claim("orders", "c1")
    store.retry(m, Failures(1, 1700000000.0 + 1.0, "exit status 1"))
    [m] = harness.wait_for(lambda: store.claim("orders", "c1"), 30, what="redelivery")
    store.bury(m, Failures(2, 0.0, "exit status 1\nlast lines"))
    gone(store, "orders")
    assert store.count("orders", "dead") == 1
    assert store.get("orders", "R1").body == b"body"


def test_admin_ack_deletes_a_waiting_message(store):
    store.publish(stage(store, "A1"))
    store.ack(store.get("orders", "A1"))
    gone(store, "orders")


def test_a_stopped_cluster_is_store_unavailable_and_nothing_is_answered_stored(own_store,
                                                                                 cluster):
    own_store.publish(stage(own_store, "UP1"))
    cluster.stop()
    with pytest.raises(StoreUnavailable):
        own_store.publish(stage(own_store, "DOWN1"))
    # Closed, the store leaves nothing waiting on its loop (the client, having
    # closed itself, left its subscriptions' tasks there).
    own_store.close()
    assert not asyncio.all_tasks(own_store._loop.loop)


def test_receiver_answers_503_while_the_cluster_is_down_then_stores(tmp_path, cluster):
    config = js_config(tmp_path, cluster)
    client = testing.TestClient(create_app(config))
    body, _ = batch([("B1", "orders", 1, b"one"), ("B2", "orders", 2, b"two")])
    headers = {"Content-Type": CONTENT_TYPE}
    ok = client.simulate_post("/v1/batch", body=body, headers=headers)
    assert ok.status_code == 200, ok.text
    assert {k: v["status"] for k, v in ok.json["results"].items()} == {
        "B1": "stored", "B2": "stored"}
    assert client.simulate_get("/v1/ready").status_code == 200
    again = client.simulate_post("/v1/batch", body=body, headers=headers)
    assert {v["status"] for v in again.json["results"].values()} == {"duplicate"}
    for node in cluster.nodes:
        node.kill()
    down = client.simulate_post("/v1/batch", body=body, headers=headers)
    assert down.status_code == 503 and down.json["error"]["code"] == "store_unavailable"
    assert client.simulate_get("/v1/ready").status_code == 503


def test_one_client_cannot_pre_empt_anothers_message_id(store):
    assert store.publish(store.stage("orders", "order-1", b"a", priority=5,
                                     client="shop-a")) == "stored"
    assert store.publish(store.stage("orders", "order-1", b"b", priority=5,
                                     client="shop-b")) == "stored"
    # A re-send by the same client is still a duplicate.
    assert store.publish(store.stage("orders", "order-1", b"a", priority=5,
                                     client="shop-a")) == "duplicate"
    got = {m.client: (m.id, m.body) for m in store.messages("orders")}
    assert got == {"shop-a": ("order-1", b"a"), "shop-b": ("order-1", b"b")}
    assert store.get("orders", "order-1", client="shop-b").body == b"b"


def test_depths_count_each_channel_and_date_its_oldest_message(store):
    ids = {name: IdGenerator(clock=lambda t=t: t)() for name, t in
           (("old", 1_000_000.0), ("new", 2_000_000.0), ("events", 1_500_000.0))}
    store.publish(stage(store, ids["new"], priority=0))
    store.publish(stage(store, ids["old"], priority=9))
    store.publish(stage(store, ids["events"], channel="events"))
    assert store.depths() == {"orders": (2, 1_000_000_000), "events": (1, 1_500_000_000)}
