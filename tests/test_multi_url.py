"""One peer with two receiver URLs (``urls = [...]``), each a real receiver
with a filesystem store of its own: batches go round robin, a stopped
receiver is skipped (and the same batch goes to the other at once), and the
peer is down only when neither answers."""

import pytest

from dropr import config as config_mod
from dropr.sender import transport
from dropr.client import Client
from dropr.sender.sender import Sender
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process


@pytest.fixture
def two(tmp_path):
    """(client config, [receiver a, receiver b]), neither started; stops both after."""
    receivers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        receivers.append(harness.Receiver(harness.write_config(tmp_path / name)))
    (tmp_path / "c").mkdir()
    path = harness.write_config(
        tmp_path / "c", sections={"sender": {"batch_messages": 5}},
        peers={"local": {"urls": [r.url for r in receivers], "connect_timeout": 1.0}})
    yield config_mod.load(path), receivers
    for r in receivers:
        r.stop()
    harness.remove_queues(tmp_path / "c" / "client")


def stored_ids(receiver):
    return {m.id for m in Store(receiver.config.receiver.store, fsync=False).messages("common")}


def put(config, n):
    client = Client(config)
    return {client.put(b"m%d" % i, "local") for i in range(n)}


def test_batches_go_round_robin_over_both_receivers(two):
    config, receivers = two
    for r in receivers:
        r.start()
    ids = put(config, 20)
    sender = Sender(config).open()
    try:
        while sender.run_once():
            pass
    finally:
        sender.close()
    a, b = (stored_ids(r) for r in receivers)
    assert a | b == ids and not a & b
    assert len(a) == len(b) == 10  # four batches of five, taking turns


def test_a_stopped_receiver_is_skipped_within_the_same_batch(two):
    config, (a, b) = two
    b.start()  # a is not running: its URL comes first in turn and fails
    ids = put(config, 12)
    sender = Sender(config).open()
    try:
        while sender.run_once():
            pass
        assert stored_ids(b) == ids
        assert sender.spool.counts()["deferred"] == 0
        assert sender.peers.state("local") == {}  # one receiver answers: the peer is up
        assert list(sender._transports["local"].down_urls()) == [a.url]
    finally:
        sender.close()
    assert transport.probe(config.peer("local"), timeout=1.0) == (True, "")


def test_the_peer_is_down_only_when_every_url_fails(two):
    config, (a, b) = two
    ids = put(config, 3)
    sender = Sender(config).open()
    try:
        sender.run_once()
        state = sender.peers.state("local")
        assert state.get("failures") == 1
        assert a.url in state["error"] and b.url in state["error"]
        assert sender.spool.counts()["deferred"] == 3
    finally:
        sender.close()
    ok, reason = transport.probe(config.peer("local"), timeout=1.0)
    assert not ok and a.url in reason and b.url in reason
    b.start()
    assert transport.probe(config.peer("local"), timeout=1.0) == (True, "")
    assert not stored_ids(b) & ids  # nothing was stored while both were away


@pytest.mark.parametrize("peer, message", [
    ({"url": "http://a:1", "urls": ["http://b:1"]}, "url and urls: give one of the two"),
    ({"urls": []}, "url: required"),
    ({"urls": ["ftp://a"]}, "urls: expected a list of http:// or https:// URLs"),
    ({"urls": ["http://a:1", "http://a:1/"]}, "urls: expected a list of different URLs"),
    ({"urls": ["https://a:1", "http://b:1"], "ca_file": "ca.pem"}, "ca_file: only for an https"),
])
def test_bad_urls_are_refused_naming_the_key(peer, message):
    with pytest.raises(config_mod.ConfigError, match=message.replace("(", r"\(")):
        config_mod.from_dict({"peers": {"p": peer}})


def test_url_and_urls_both_give_the_receivers_in_order():
    peers = config_mod.from_dict({"peers": {"one": {"url": "http://a:1/"},
                                            "two": {"urls": ["http://b:1", "http://c:1"]}}}).peers
    assert (peers["one"].url, peers["one"].urls) == ("http://a:1", ("http://a:1",))
    assert (peers["two"].url, peers["two"].urls) == ("http://b:1", ("http://b:1", "http://c:1"))
