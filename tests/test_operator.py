"""The operator's toolbox through the real CLI, a real receiver and real
consumers: JSON listings that parse line by line, hold and release, purge,
pause and resume, dead letters and their requeue, and trace across a producer
and its receiver for a message in each state. (The files backend; the
JetStream one in tests/jetstream/test_operator.py.)"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dropr import Client, config as config_mod
from dropr.retry_scanner.scanner import RetryScanner
from dropr.spool import Spool
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process

SPOOL_FIELDS = {"id", "state", "peer", "channel", "priority", "size", "attempts", "queued_at",
                "next_attempt", "expires", "reason"}


def dropr(path, *args, input=None, check=True):
    return harness.run_dropr(path, *args, input=input, check=check)


def lines(result):
    return [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]


@pytest.fixture
def setup(tmp_path):
    path = harness.write_config(tmp_path, sections={"retry": {"base": 60.0, "cap": 60.0}})
    receiver = harness.Receiver(path).start()
    yield path, receiver
    receiver.stop()
    harness.remove_queues(tmp_path / "client")


def put(path, n, channel="ops", **kw):
    client = Client(path)
    return [client.put(f"m{i}".encode(), "local", channel, **kw) for i in range(n)]


def test_spool_ls_and_count_json_parse_line_by_line(setup):
    path, _ = setup
    ids = put(path, 3)
    rows = lines(dropr(path, "spool", "ls", "--json"))
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(set(r) == SPOOL_FIELDS and r["state"] == "queue" and r["size"] == 2 for r in rows)
    assert all(abs(r["queued_at"] - time.time()) < 60 and r["next_attempt"] is None for r in rows)
    (counts,) = lines(dropr(path, "spool", "count", "--json"))
    assert counts["queue"] == 3 and counts["hold"] == 0
    assert lines(dropr(path, "spool", "ls", "hold", "--json")) == []


def test_hold_keeps_messages_from_every_sender_and_release_sends_them(setup):
    path, _ = setup
    a = put(path, 2, channel="a")
    b = put(path, 2, channel="b", ttl=0.5)
    assert dropr(path, "spool", "hold", "--channel", "b").stdout == b"held 2\n"
    assert dropr(path, "spool", "hold", a[0]).stdout == b"held 1\n"
    time.sleep(0.6)  # b's messages expire while held
    dropr(path, "send", "--once")
    RetryScanner(config_mod.load(path), clock=lambda: time.time() + 86400).open().scan()
    store = Store(config_mod.load(path).receiver.store, fsync=False)
    assert store.count("a") == 1 and store.count("b") == 0
    held = lines(dropr(path, "spool", "ls", "hold", "--json"))
    assert sorted(r["id"] for r in held) == sorted([a[0], *b])
    assert dropr(path, "spool", "release", "--all").stdout == b"released 3\n"
    dropr(path, "send", "--once")
    assert store.count("a") == 2
    # Released as they were: the expired ones are given up as expired, not sent.
    dead = lines(dropr(path, "spool", "ls", "dead", "--json"))
    assert sorted(r["id"] for r in dead) == sorted(b) and all(r["reason"] for r in dead)


def test_hold_and_release_keep_id_metadata_and_attempts(setup, tmp_path):
    path, _ = setup
    spool = Spool(config_mod.load(path).client.spool, fsync=False)
    (mid,) = put(path, 1, priority=2)
    (name,) = spool.names("queue")
    deferred = spool.to_deferred(spool.dirs["queue"] / str(name), name, due_ms=10**15)
    assert dropr(path, "spool", "hold", mid).stdout == b"held 1\n"
    (held,) = spool.names("hold")
    assert held == deferred
    dropr(path, "spool", "release", "--peer", "local")
    (back,) = spool.names("queue")
    assert (back.id, back.priority, back.attempts, back.due_ms) == (mid, 2, 1, 0)


def test_selectors_are_required_and_exclusive(setup):
    path, _ = setup
    assert dropr(path, "spool", "hold", check=False).returncode == 2
    assert dropr(path, "spool", "hold", "X1", "--all", check=False).returncode == 2


def test_purge_needs_yes_or_dry_run_and_removes_only_what_it_selects(setup):
    path, _ = setup
    put(path, 2, channel="a")
    put(path, 1, channel="b")
    refused = dropr(path, "spool", "purge", "queue", check=False)
    assert refused.returncode == 2 and b"--yes" in refused.stderr
    assert dropr(path, "spool", "purge", "queue", "--dry-run").stdout == b"would purge 3\n"
    assert dropr(path, "spool", "purge", "queue", "--older-than", "3600", "--yes").stdout \
        == b"purged 0\n"
    assert dropr(path, "spool", "purge", "queue", "--channel", "a", "--yes").stdout == b"purged 2\n"
    assert [r["channel"] for r in lines(dropr(path, "spool", "ls", "--json"))] == ["b"]
    assert dropr(path, "spool", "purge", "active", "--yes", check=False).returncode == 2


def consume(path, channel, command, *extra):
    return dropr(path, "consume", "--channel", channel, "--once", *extra, "--", *command)


def test_a_paused_channel_gives_nothing_to_consumers_until_resumed(setup, tmp_path):
    path, _ = setup
    put(path, 2)
    assert dropr(path, "store", "pause", "ops").stdout == b"paused ops\n"
    put(path, 1)
    dropr(path, "send", "--once")  # uploads keep arriving while paused
    consume(path, "ops", ["true"])
    store = Store(config_mod.load(path).receiver.store, fsync=False)
    assert store.count("ops") == 3
    channels = lines(dropr(path, "store", "channels", "--json"))
    assert channels == [{"channel": "ops", "queued": 3, "claimed": 0, "done": 0, "dead": 0,
                         "oldest_age": channels[0]["oldest_age"], "paused": True}]
    assert channels[0]["oldest_age"] >= 0
    # The pause is a file: it lasts across every process's restart.
    assert Store(config_mod.load(path).receiver.store).paused("ops")
    dropr(path, "store", "resume", "ops")
    consume(path, "ops", ["true"], "--batch", "10")
    assert store.count("ops") == 0 and store.count("ops", "done") == 3


def test_dead_letters_are_listed_with_reasons_and_requeued_with_attempts_reset(setup):
    path, _ = setup
    ids = put(path, 2)
    dropr(path, "send", "--once")
    consume(path, "ops", ["sh", "-c", "echo broken >&2; exit 3"], "--max-attempts", "1",
            "--batch", "10")
    dead = lines(dropr(path, "store", "dead", "ops", "--json"))
    assert sorted(d["id"] for d in dead) == sorted(ids)
    assert all("broken" in d["reason"] or "exit" in d["reason"] for d in dead)
    assert dropr(path, "store", "requeue", "ops", ids[0]).stdout == b"requeued 1\n"
    store = Store(config_mod.load(path).receiver.store, fsync=False)
    assert store.count("ops") == 1 and store.count("ops", "dead") == 1
    (message,) = store.messages("ops")
    assert store.failures(message).attempts == 0
    assert dropr(path, "store", "requeue", "ops", "NOSUCH", check=False).returncode == 1
    assert dropr(path, "store", "requeue", "ops", "--all").stdout == b"requeued 1\n"
    assert dropr(path, "store", "purge", "ops", "--queue", check=False).returncode == 2
    assert dropr(path, "store", "purge", "ops", "--queue", "--yes").stdout == b"purged 2\n"


def trace(path, mid, *extra):
    result = dropr(path, "trace", mid, "--json", *extra, check=False)
    return result.returncode, json.loads(result.stdout)


def test_trace_follows_a_message_through_every_state(setup, tmp_path):
    path, receiver = setup
    config = config_mod.load(path)
    held, sent, acked, failed, claimed = put(path, 5)
    dropr(path, "spool", "hold", held)
    code, t = trace(path, held)
    assert code == 0 and t["spool"]["state"] == "hold" and t["store"] is None
    dropr(path, "send", "--once")
    code, t = trace(path, sent)
    assert code == 0 and t["spool"] is None  # sent and forgotten here ([sender] sent_retention 0)
    assert t["store"]["state"] == "queued" and t["store"]["client"] == "local"
    store = Store(config.receiver.store, fsync=False)
    for message in store.messages("ops"):
        if message.id == acked:
            store.ack(message)
        elif message.id == failed:
            from dropr.store import Failures
            store.bury(message, Failures(attempts=3, reason="exit 3: no such order"))
    work = store.open_work("picker")
    assert any(m.id == claimed for m in store.claim("ops", "picker", limit=10))
    assert trace(path, acked)[1]["store"]["state"] == "acked"
    t = trace(path, failed)[1]
    assert t["store"]["state"] == "dead" and t["store"]["reason"] == "exit 3: no such order"
    t = trace(path, claimed, "--channel", "ops")[1]
    assert (t["store"]["state"], t["store"]["consumer"]) == ("claimed", "picker")
    work.close()
    assert trace(path, "01NOSUCHMESSAGE0000000000X")[0] == 1
    human = dropr(path, "trace", sent).stdout.decode()
    assert "receiver: " in human and "state claimed, " in human and "consumer picker" in human


def test_a_client_sees_only_its_own_messages(tmp_path):
    sections = {"receiver.clients.shop-a": {"token": "token-of-shop-a-0123456789"},
                "receiver.clients.shop-b": {"token": "token-of-shop-b-0123456789"}}
    path = harness.write_config(tmp_path, sections=sections)
    receiver = harness.Receiver(path).start()
    try:
        import urllib.request
        request = urllib.request.Request(receiver.url + "/v1/channels/c/messages", data=b"x",
                                         headers={"Authorization": "Bearer token-of-shop-a-0123456789",
                                                  "Idempotency-Key": "order-1"})
        urllib.request.urlopen(request, timeout=10).read()
        for token, status in (("token-of-shop-a-0123456789", 200), ("token-of-shop-b-0123456789", 404)):
            for url in ("/v1/channels/c/messages/order-1", "/v1/messages/order-1"):
                get = urllib.request.Request(receiver.url + url,
                                             headers={"Authorization": f"Bearer {token}"})
                try:
                    with urllib.request.urlopen(get, timeout=10) as r:
                        got = r.status, json.load(r)
                except urllib.error.HTTPError as e:
                    got = e.code, json.load(e)
                assert got[0] == status, (url, got)
                if status == 200:
                    assert got[1]["state"] == "queued" and "body" not in got[1]
    finally:
        receiver.stop()
        harness.remove_queues(tmp_path / "client")


def crash(path, point, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPR_CRASH")}
    env["DROPR_CRASH_AT"] = point
    env["DROPR_CRASH_AFTER"] = "2"
    result = subprocess.run([*harness.DROPR, "--config", str(path), *args], env=env,
                            capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()


@pytest.mark.parametrize("point", ["hold.after_move", "release.after_move"])
def test_a_crash_in_hold_or_release_leaves_each_message_in_one_place(setup, point):
    path, _ = setup
    ids = put(path, 3)
    spool = Spool(config_mod.load(path).client.spool, fsync=False)
    if point == "release.after_move":
        dropr(path, "spool", "hold", "--all")
    crash(path, point, "spool", "hold" if point == "hold.after_move" else "release", "--all")
    where = [r["state"] for r in lines(dropr(path, "spool", "ls", "--json"))]
    assert sorted(where) == ["hold", "hold", "queue"] if point == "hold.after_move" else \
        sorted(where) == ["hold", "queue", "queue"]
    dropr(path, "spool", "release", "--all")
    dropr(path, "send", "--once")
    store = Store(config_mod.load(path).receiver.store, fsync=False)
    assert sorted(m.id for m in store.messages("ops")) == sorted(ids)
    assert spool.counts()["hold"] == 0


def test_a_crash_in_store_requeue_leaves_the_message_queued_once(setup):
    path, _ = setup
    put(path, 2)
    dropr(path, "send", "--once")
    consume(path, "ops", ["false"], "--max-attempts", "1", "--batch", "10")
    crash(path, "store.after_requeue", "store", "requeue", "ops", "--all")
    store = Store(config_mod.load(path).receiver.store, fsync=False)
    assert store.count("ops") + store.count("ops", "dead") == 2
    assert store.count("ops") >= 1
    dropr(path, "store", "requeue", "ops", "--all")
    assert store.count("ops") == 2 and store.count("ops", "dead") == 0
    assert sys.platform.startswith("linux")
