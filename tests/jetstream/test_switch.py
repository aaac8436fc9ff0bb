"""The switch of a running deployment from the filesystem store to JetStream
that docs/backends.md describes: droprd runs the receiver in its tree, a
reload with a new [store] section sends later messages to the stream, and
what the filesystem store already held stays readable there."""

from dropr import Store
from dropr import config as config_mod
from dropr.client import Client
from dropr.store import open_store
from dropr.spool import Spool
from tests.supervisor.conftest import make_tree  # noqa: F401 - the fixture
from tests.support import harness

SENDS = {"sender": {"wait": 0.1}, "workers": {"receiver": 1, "sender": 1}}


def delivered(tree):
    counts = Spool(tree.config.client.spool, fsync=False).counts()
    return not any(counts[s] for s in ("queue", "active", "deferred", "dead"))


def test_a_reload_with_a_new_store_section_switches_the_receiver_to_jetstream(make_tree,
                                                                              single):
    tree = make_tree(SENDS)
    tree.start()
    client = Client(tree.config)
    before = {client.put(f"before {i}".encode(), "local") for i in range(20)}
    files = Store(tree.config.receiver.store, fsync=False)
    harness.wait_for(lambda: delivered(tree) and files.count("common") == 20, 20,
                     what=f"delivery to files\n{tree.log_tail()}")

    old = tree.workers()["receiver"]["pid"]
    tree.rewrite({"store": {"backend": "jetstream", "servers": single.urls, "replicas": 1}})
    assert tree.run("reload").returncode == 0
    harness.wait_for(lambda: (w := tree.workers().get("receiver")) and w["pid"] != old and
                     w["state"] == "running", 30, what=f"a new receiver\n{tree.log_tail()}")
    stream = open_store(config_mod.load(tree.config_path))
    try:
        after = {client.put(f"after {i}".encode(), "local") for i in range(20)}
        harness.wait_for(lambda: delivered(tree) and stream.count("common") == 20, 30,
                         interval=0.1, what=f"delivery to JetStream\n{tree.log_tail()}")
        assert {m.id for m in stream.messages("common")} == after
        assert {m.id for m in files.messages("common")} == before  # still there to drain
    finally:
        stream.close()
