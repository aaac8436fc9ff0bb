"""The operator's toolbox on the JetStream store, on a real 3-node cluster:
pause and resume against claims, the channel's figures, dead letters with
their reasons and their requeue, purge, and where a message is now."""

import pytest

from dropr.errors import NotFound
from dropr.store import Failures
from tests.jetstream.test_store import store  # noqa: F401 - the fixture
from tests.support import harness

pytestmark = pytest.mark.process


def put(store, channel, message_id, body=b"x", priority=5, client="shop"):
    return store.publish(store.stage(channel, message_id, body, priority=priority,
                                     client=client))


def test_a_paused_channel_gives_nothing_to_claims_until_resumed(store):
    put(store, "ops", "m1")
    store.pause("ops")
    assert store.paused("ops") and store.claim("ops", "c", limit=10) == []
    put(store, "ops", "m2")  # uploads go on
    assert store.stats("ops")["paused"] is True and store.stats("ops")["queued"] == 2
    store.resume("ops")
    assert not store.paused("ops")
    claimed = store.claim("ops", "c", limit=10)
    assert sorted(m.id for m in claimed) == ["m1", "m2"]
    for m in claimed:
        store.ack(m)


def test_dead_letters_are_listed_with_reasons_requeued_and_purged(store):
    for mid in ("d1", "d2", "d3"):
        put(store, "dl", mid)
    for m in store.claim("dl", "c", limit=10):
        store.bury(m, Failures(attempts=2, reason=f"exit 3: {m.id}"))
    harness.wait_for(lambda: store.count("dl") == 0, 10, what="the queue empty")
    dead = store.dead_messages("dl")
    assert sorted((m.id, r) for m, r in dead) == [(f"d{i}", f"exit 3: d{i}") for i in (1, 2, 3)]
    assert store.locate("dl", "d2")["state"] == "dead"
    assert store.locate("dl", "d2")["reason"] == "exit 3: d2"
    store.requeue(next(m for m, _ in dead if m.id == "d1"))
    assert store.count("dl") == 1 and store.count("dl", "dead") == 2
    assert store.locate("dl", "d1")["state"] == "queued"
    (again,) = store.claim("dl", "c", limit=10)
    assert again.id == "d1" and store.failures(again).attempts == 0
    store.ack(again)
    assert store.purge("dl", "dead", dry_run=True) == 2
    assert store.purge("dl", "dead") == 2 and store.count("dl", "dead") == 0


def test_a_claimed_message_is_located_as_claimed_and_an_acked_one_is_gone(store):
    put(store, "tr", "t1")
    put(store, "tr", "t2")
    assert store.locate("tr", "t1")["state"] == "queued"
    (first,) = store.claim("tr", "c", limit=1)
    assert store.locate("tr", first.id)["state"] == "claimed"
    assert store.locate_anywhere(first.id)["channel"] == "tr"
    store.ack(first)
    harness.wait_for(lambda: store.count("tr") == 1, 10, what="the acked one gone")
    with pytest.raises(NotFound):
        store.locate("tr", first.id)
    stats = store.stats("tr")
    assert (stats["queued"], stats["done"], stats["dead"]) == (1, None, 0)


def test_the_operators_verbs_through_the_cli_and_a_receiver_on_jetstream(tmp_path, stream):
    import json

    keys = {**stream[1], "publish_timeout": 3.0, "connect_timeout": 1.0, "ack_wait": 5.0}
    path = harness.write_config(tmp_path, sections={"store": keys})
    receiver = harness.Receiver(path).start()
    try:
        def dropr(*args, check=True, input=None):
            return harness.run_dropr(path, *args, check=check, input=input)
        ids = [dropr("put", "--peer", "local", "--channel", "ops", input=f"m{i}".encode()
                     ).stdout.decode().strip() for i in range(3)]
        dropr("spool", "hold", ids[0])
        dropr("send", "--once")
        assert dropr("store", "pause", "ops").stdout == b"paused ops\n"
        (chan,) = [json.loads(line) for line in dropr("store", "channels", "--json").stdout.splitlines()]
        assert (chan["channel"], chan["queued"], chan["paused"]) == ("ops", 2, True)
        dropr("consume", "--channel", "ops", "--once", "--", "true")
        assert dropr("store", "count", "ops").stdout.split() == [b"2"]
        dropr("store", "resume", "ops")
        trace = json.loads(dropr("trace", ids[1], "--json").stdout)
        assert trace["spool"] is None and trace["store"]["state"] == "queued"
        trace = json.loads(dropr("trace", ids[0], "--json").stdout)
        assert trace["spool"]["state"] == "hold" and trace["store"] is None
        dropr("consume", "--channel", "ops", "--once", "--max-attempts", "1", "--batch", "10",
              "--", "false")
        dead = [json.loads(line) for line in dropr("store", "dead", "ops", "--json").stdout.splitlines()]
        assert sorted(d["id"] for d in dead) == sorted(ids[1:]) and all(d["reason"] for d in dead)
        assert dropr("store", "requeue", "ops", "--all").stdout == b"requeued 2\n"
        assert dropr("store", "purge", "ops", "--queue", "--yes").stdout == b"purged 2\n"
    finally:
        receiver.stop()
        harness.remove_queues(tmp_path / "client")
