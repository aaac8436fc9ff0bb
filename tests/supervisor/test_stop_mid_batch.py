"""``droprd stop`` while a large batch is on the wire to a slow receiver: the
batch either completes (the sender had time to finish it) or returns to
``queue/`` (it was killed at ``stop_timeout``); nothing is lost, nothing is
stored twice once the tree runs again. A real tree, a real receiver behind a
proxy that slows the upload down (bench/faultproxy.py)."""

import importlib.util
from pathlib import Path

import pytest

from dropr.client import Client
from dropr.spool import Spool
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process

_spec = importlib.util.spec_from_file_location(
    "faultproxy", Path(__file__).resolve().parents[2] / "bench" / "faultproxy.py")
faultproxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(faultproxy)

MESSAGES, SIZE = 100, 16 << 10
RATE = 400 << 10  # bytes/s: the batch (1.6 MiB) takes about 4 s on the wire


@pytest.fixture
def proxy():
    port = harness.free_port()
    p = faultproxy.FaultProxy(port).start()
    p.receiver_port = port
    yield p
    p.close()


def stored_ids(store):
    return [m.id for ch in store.channels() for m in store.messages(ch)]


@pytest.mark.parametrize("stop_timeout, outcome", [(30.0, "completes"), (0.5, "returns")])
def test_stop_while_a_batch_uploads_completes_or_returns_it(make_tree, proxy, stop_timeout,
                                                             outcome):
    tree = make_tree(
        {"workers": {"sender": 1, "retry_scanner": 1, "reaper": 1},
         "sender": {"batch_messages": MESSAGES, "batch_bytes": 64 << 20},
         "supervisor": {"stop_timeout": stop_timeout, "kill_timeout": 1.0}},
        port=proxy.receiver_port,
        peers={"local": {"url": f"http://127.0.0.1:{proxy.port}", "timeout": 60.0}})
    spool = Spool(tree.config.client.spool, fsync=False)
    store = Store(tree.config.receiver.store, fsync=False)
    client = Client(tree.config_path)
    put = [client.put(bytes([i]) * SIZE, "local", "big") for i in range(MESSAGES)]
    receiver = harness.Receiver(tree.config_path).start()
    try:
        proxy.rate = RATE
        tree.start()
        # The whole batch is claimed and the receiver is reading its body.
        harness.wait_for(lambda: spool.count("active") == MESSAGES, 15, what="batch claimed")
        harness.wait_for(lambda: any((store.root / "tmp").iterdir()), 15, what="body arriving")
        assert tree.run("stop", timeout=60).returncode == 0, tree.log_tail()

        assert spool.count("active") == 0
        queued = [n.id for n in spool.names("queue")] + [n.id for n in spool.names("deferred")]
        stored = stored_ids(store)
        if outcome == "completes":
            assert sorted(stored) == sorted(put) and queued == []
        else:
            assert sorted(queued) == sorted(put), "the killed batch went back to queue/"
        assert set(stored) | set(queued) == set(put)  # nothing lost

        proxy.rate = None
        tree.start()
        harness.wait_for(lambda: len(stored_ids(store)) == MESSAGES and
                         spool.backlog()[0] == 0 and spool.count("active") == 0, 30,
                         what="every message stored")
    finally:
        receiver.stop()
    stored = stored_ids(store)
    assert sorted(stored) == sorted(put)  # each once: nothing doubled
    assert {m.id: m.read() for m in store.messages("big")} == {
        mid: bytes([i]) * SIZE for i, mid in enumerate(put)}
