"""End to end, real processes: producers put into the client spool (Python,
`dropr put`, a shell script), `dropr send --once` uploads to the receiver under
gunicorn, and the server store holds every message exactly once, byte for byte."""

import hashlib
import os
import shutil
import subprocess
import time

import pytest

from dropr import config as config_mod
from dropr.client import Client
from dropr.peers import Peers
from dropr.spool import Spool
from dropr.store import Store
from dropr.sender.transport import Transport
from tests.support import harness

pytestmark = pytest.mark.process

MiB = 1024 * 1024


def load(config_path):
    return config_mod.load(config_path)


def store_of(config):
    return Store(config.receiver.store, fsync=False)


def digests_in_store(config):
    """{id: sha256} over every channel's queue/, failing on an id stored twice."""
    store, found = store_of(config), {}
    for channel in store.channels():
        for message in store.messages(channel):
            assert message.id not in found, f"{message.id} stored twice"
            with message.open() as f:
                found[message.id] = hashlib.file_digest(f, "sha256").hexdigest()
    return found


def send_once(config_path):
    return harness.run_dropr(config_path, "send", "--once", timeout=120)


def spool_empty(spool):
    return spool.counts() == {"queue": 0, "active": 0, "deferred": 0, "hold": 0, "sent": 0,
                              "dead": 0}


def test_thousand_mixed_messages_arrive_byte_identical_exactly_once(config_path, receiver):
    config = load(config_path)
    client = Client(config)
    sizes = [0, 1, 1024] * 333 + [5 * MiB] * 3  # 1,002 messages, 15 MiB of them large
    expected = {}
    for i, size in enumerate(sizes):
        body = os.urandom(size)
        message_id = client.put(body, "local", channel=f"ch{i % 3}", priority=i % 10)
        expected[message_id] = hashlib.sha256(body).hexdigest()
    send_once(config_path)
    assert digests_in_store(config) == expected
    assert spool_empty(client.spool)


def test_messages_wait_in_deferred_while_the_receiver_is_down_then_all_arrive(config_path):
    config = load(config_path)
    client = Client(config)
    expected = {client.put(b"m%d" % i, "local"): b"m%d" % i for i in range(40)}
    send_once(config_path)  # nobody listens: the sender must not fail, nor lose anything
    spool = client.spool
    assert spool.count("deferred") == 40 and spool.count("queue") == 0
    down = Peers(spool).state("local")
    assert down["failures"] == 1 and down["down_until"] > 0

    receiver = harness.Receiver(config_path).start()
    try:
        harness.wait_for(lambda: time.time() > down["down_until"], 5, what="peer pause over")
        for name in spool.names("deferred"):  # what the retry scanner does when they are due
            spool.requeue("deferred", name, due_ms=0)
        send_once(config_path)
    finally:
        receiver.stop()
    assert {m.id: m.read() for m in store_of(config).messages("common")} == expected
    assert spool_empty(spool) and Peers(spool).state("local") == {}


def test_message_sent_again_after_a_lost_answer_is_stored_once(tmp_path, receiver):
    config_path = harness.write_config(tmp_path, port=int(receiver.url.rsplit(":", 1)[1]),
                                       sections={"sender": {"sent_retention": 3600.0}})
    config = load(config_path)
    client = Client(config)
    message_id = client.put(b"exactly once", "local")
    send_once(config_path)
    spool = client.spool
    name, = spool.names("sent")
    # The sender never saw the answer: the file is back in queue/ and goes again.
    shutil.copy(spool.dirs["sent"] / str(name), spool.dirs["queue"] / str(name))
    send_once(config_path)
    assert spool.count("dead") == 0 and spool.count("deferred") == 0 and spool.count("queue") == 0
    assert [m.read() for m in store_of(config).messages("common")] == [b"exactly once"]

    # And the answer to the repeated upload says so.
    path = spool.dirs["sent"] / str(name)
    transport = Transport(config.peer("local"), client="test")
    try:
        results = transport.send([(name, path, path.stat().st_size)])
    finally:
        transport.close()
    assert results == {message_id: {"status": "duplicate"}}


SHELL_PRODUCER = r"""
set -eu
id="SH$(date +%s%N)"
name="5.$id.local.common"
printf 'enqueued by a shell script\n' > "$SPOOL/tmp/$name"
mv "$SPOOL/tmp/$name" "$SPOOL/queue/$name"
echo "$id"
"""


def test_message_enqueued_by_a_shell_script_is_delivered(config_path, receiver):
    config = load(config_path)
    Spool(config.client.spool).create()
    env = dict(os.environ, SPOOL=str(config.client.spool))
    out = subprocess.run(["bash", "-c", SHELL_PRODUCER], env=env, check=True,
                         capture_output=True, timeout=10)
    message_id = out.stdout.decode().strip()
    send_once(config_path)
    message = store_of(config).get("common", message_id)
    assert message.read() == b"enqueued by a shell script\n"


def test_dropr_put_send_and_store_cat_give_back_the_same_bytes(config_path, receiver):
    body = bytes(range(256)) * 9 + b"\x00\r\n"
    message_id = harness.run_dropr(config_path, "put", "--peer", "local", "--channel", "cli",
                                   input=body).stdout.decode().strip()
    send_once(config_path)
    cat = harness.run_dropr(config_path, "store", "cat", "cli", message_id)
    assert cat.stdout == body
