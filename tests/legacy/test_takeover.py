"""droprd takes over a PHP dropr client spool: messages written the original
way (by PHP, where it is installed) move into our queue/ and are delivered;
a crash at each step of a move delivers each message exactly once; an
unknown PHP peer URL leaves the message where it is; a PHP producer's
wake-up reaches the takeover worker at once."""

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dropr import config as config_mod
from dropr.faults import CRASH_POINTS
from dropr.legacy.takeover import Takeover, ftok, parse_php_name, php_queue_key
from dropr.spool import Spool
from dropr.store import Store
from tests.supervisor.conftest import make_tree  # noqa: F401 - the fixture
from tests.support import harness

PHP = Path(__file__).parent / "php"
PHP_URL = "http://old-receiver.example/server/server.php"
needs_php = pytest.mark.skipif(shutil.which("php") is None,
                               reason="needs php (Debian packages php-cli, php-curl)")
LEGACY = [p for p in CRASH_POINTS if p.startswith("legacy.")]


def php_file(spool, body, *, channel="orders", priority=3, url=PHP_URL, stamp="1796024531-1"):
    """A message as dropr_Client_Storage_Filesystem::saveMessage() leaves it in proc/."""
    name = "_".join((str(priority), stamp, base64.b64encode(f"HttpUpload;{url}".encode()).decode(),
                     base64.b64encode(channel.encode()).decode()))
    for sub in ("in", "proc", "sent"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    (spool / "in" / name).write_bytes(body)
    os.rename(spool / "in" / name, spool / "proc" / name)
    return name


def setup(tmp_path, port=None, **workers):
    php = tmp_path / "php-spool"
    path = harness.write_config(tmp_path, port=port, sections={
        "legacy": {"spool": str(php)}, "legacy.peers": {f'"{PHP_URL}"': "local"},
        "workers": {"sender": 1, "legacy_spool": 1, **workers},
        "client": {"fsync": True}})
    return config_mod.load(path), php


def test_a_php_spool_file_moves_into_our_queue_with_its_metadata(tmp_path):
    config, php = setup(tmp_path)
    name = php_file(php, b"from php\x00\xff", priority=2, channel="orders")
    takeover = Takeover(config, hostname="web-1").open()
    assert takeover.pass_once() == 1
    assert os.listdir(php / "proc") == []
    (queued,) = Spool(config.client.spool).names("queue")
    assert (queued.priority, queued.peer, queued.channel) == (2, "local", "orders")
    assert queued.id.startswith("php-")
    body = (Path(config.client.spool) / "queue" / str(queued)).read_bytes()
    assert body == b"from php\x00\xff"
    assert parse_php_name(name) == (2, PHP_URL, "orders")
    harness.remove_queues(config.client.spool)


def test_an_unknown_peer_url_or_a_bad_channel_leaves_the_message_and_says_so(tmp_path, caplog):
    config, php = setup(tmp_path)
    stranger = php_file(php, b"x", url="http://elsewhere/server.php", stamp="1-1")
    bad = php_file(php, b"y", channel="a/b", stamp="1-2")
    takeover = Takeover(config).open()
    assert takeover.pass_once() == 0
    assert sorted(os.listdir(php / "proc")) == sorted([stranger, bad])
    assert "http://elsewhere/server.php is not in [legacy] peers" in caplog.text
    assert Spool(config.client.spool).names("queue") == []
    harness.remove_queues(config.client.spool)


@pytest.mark.process
def test_the_queue_key_is_the_one_php_derives(tmp_path):
    spool = tmp_path / "php-spool"
    spool.mkdir()
    key = php_queue_key(spool)
    assert 0 < key < 2 ** 32
    import hashlib
    path = "/tmp/droprIpc/" + hashlib.sha1(str(spool.resolve()).encode()).hexdigest()
    assert key == ftok(path, ord("*"))
    if shutil.which("php"):
        result = subprocess.run(["php", "-r", f'echo ftok("{path}", "*");'],
                                capture_output=True, text=True, timeout=30)
        assert int(result.stdout) == key


@pytest.mark.process
@pytest.mark.parametrize("point", LEGACY)
def test_a_crash_at_each_step_of_a_move_delivers_each_message_once(tmp_path, point):
    config, php = setup(tmp_path)
    bodies = {php_file(php, f"body {i}".encode(), stamp=f"1796024531-{i}"): f"body {i}".encode()
              for i in range(3)}
    code = ("import sys\nfrom dropr import config\nfrom dropr.legacy.takeover import Takeover\n"
            "Takeover(config.load(sys.argv[1]), hostname='web-1').open().pass_once()\n")
    env = {**os.environ, "DROPR_CRASH_AT": point, "DROPR_CRASH_AFTER": "2"}
    killed = subprocess.run([sys.executable, "-c", code, str(config.path)], env=env,
                            capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    receiver = harness.Receiver(config.path).start()
    try:
        # The worst order: what was queued is delivered, then the pass copies again.
        harness.run_dropr(config.path, "send", "--once")
        assert Takeover(config, hostname="web-1").open().pass_once() >= 1
        harness.run_dropr(config.path, "send", "--once")
    finally:
        receiver.stop()
    assert os.listdir(php / "proc") == []
    store = Store(config.receiver.store, fsync=False)
    stored = store.messages("orders")
    assert sorted(m.read() for m in stored) == sorted(bodies.values())  # each exactly once
    assert Spool(config.client.spool).counts()["queue"] == 0
    harness.remove_queues(config.client.spool)


@pytest.mark.process
@needs_php
def test_droprd_delivers_what_a_php_producer_queues_on_its_wakeup(tmp_path, make_tree):
    php = tmp_path / "php-spool"
    php.mkdir()
    tree = make_tree({"legacy": {"spool": str(php)}, "legacy.peers": {f'"{PHP_URL}"': "local"},
                      "workers": {"sender": 1, "legacy_spool": 1, "receiver": 1},
                      "sender": {"wait": 5.0}})
    tree.start()
    assert "legacy-spool" in tree.workers()
    store = Store(tree.config.receiver.store, fsync=False)
    time.sleep(0.5)  # the worker is in its long wait now: only a wake-up ends it early
    started = time.monotonic()
    result = subprocess.run(["php", str(PHP / "spool.php"), str(php), PHP_URL, "orders", "4",
                             "queued by PHP"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    harness.wait_for(lambda: store.count("orders") == 1, 10, what="the PHP message stored")
    took = time.monotonic() - started
    (message,) = store.messages("orders")
    assert message.read() == b"queued by PHP" and message.priority == 4
    assert os.listdir(php / "proc") == []
    assert took < 1.0, f"{took:.3f} s from the PHP put to stored"


@pytest.mark.process
def test_droprd_status_says_what_stays_in_the_php_spool(tmp_path, make_tree):
    php = tmp_path / "php-spool"
    php_file(php, b"x", url="http://elsewhere/server.php")
    tree = make_tree({"legacy": {"spool": str(php)}, "legacy.peers": {f'"{PHP_URL}"': "local"},
                      "workers": {"sender": 1, "legacy_spool": 1}})
    tree.start()
    entry = harness.wait_for(lambda: (w := tree.workers().get("legacy-spool")) and w["note"] and w,
                             10, what="the legacy-spool worker's note")
    assert "1 message(s) left in the PHP spool" in entry["note"]
    assert "http://elsewhere/server.php is not in [legacy] peers" in entry["note"]
    assert "legacy-spool: 1 message(s) left" in tree.run("status").stdout
