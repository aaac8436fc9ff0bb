"""``dropr store`` and ``dropr consume`` on the JetStream backend, run as
real commands against one JetStream server."""

import json

import pytest

from dropr import config as config_mod
from dropr.store.jetstream import JetStreamStore
from tests.support import harness
from tests.jetstream.test_store import gone


@pytest.fixture
def setup(tmp_path, single):
    """(config path, a store on the server holding three messages of "orders")."""
    path = harness.write_config(tmp_path, sections={"store": {
        "backend": "jetstream", "servers": single.urls, "replicas": 1,
        "publish_timeout": 3.0, "connect_timeout": 1.0, "ack_wait": 5.0}})
    config = config_mod.load(path)
    store = JetStreamStore(config.store, scratch=tmp_path / "scratch")
    for mid, prio, body in [("C1", 5, b"first"), ("C2", 0, b"urgent"), ("C3", 9, b"last")]:
        store.publish(store.stage("orders", mid, body, priority=prio, client="web-1"))
    yield path, store
    store.close()
    harness.remove_queues(config.client.spool)


def dropr(path, *args, **kw):
    return harness.run_dropr(path, *args, timeout=30, **kw)


def test_store_commands_list_count_cat_and_ack(setup):
    path, store = setup
    assert dropr(path, "store", "channels").stdout == b"orders\n"
    assert dropr(path, "store", "count", "orders").stdout == b"3\n"
    rows = [line.split("\t") for line in dropr(path, "store", "ls", "orders").stdout.decode().splitlines()]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("0", "C2", "6", "web-1"), ("5", "C1", "5", "web-1"), ("9", "C3", "4", "web-1")]
    assert dropr(path, "store", "cat", "orders", "C1").stdout == b"first"
    done = json.loads(dropr(path, "store", "ack", "orders", "C1").stdout)
    assert done == {"id": "C1", "status": "done"}
    harness.wait_for(lambda: store.count("orders") == 2, 10, interval=0.05, what="C1 gone")
    missing = dropr(path, "store", "cat", "orders", "C1", check=False)
    assert missing.returncode == 1 and b"C1" in missing.stderr


def test_consume_once_runs_the_command_per_message_in_priority_order(setup, tmp_path):
    path, store = setup
    out = tmp_path / "seen"
    script = f'printf "%s %s %s\\n" "$DROPR_ID" "$DROPR_PRIORITY" "$(cat)" >> {out}'
    dropr(path, "consume", "--channel", "orders", "--once", "--", "sh", "-c", script)
    assert out.read_text().splitlines() == ["C2 0 urgent", "C1 5 first", "C3 9 last"]
    gone(store, "orders")


def test_consume_buries_a_message_whose_command_keeps_failing(setup):
    path, store = setup
    for m in store.claim("orders", "t", 3):
        if m.id != "C3":
            store.ack(m)
        else:
            store.release(m)
    dropr(path, "consume", "--channel", "orders", "--once", "--max-attempts", "1",
          "--", "sh", "-c", "exit 3")
    gone(store, "orders")
    assert store.count("orders", "dead") == 1
    assert dropr(path, "store", "cat", "orders", "C3").stdout == b"last"
