"""The receiver in the tree lives by the tree's rules: its gunicorn workers are
recycled after max_messages_per_life requests and held to max_rss, and the
messages they answer show as the receiver's handled count in status."""

import glob
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile

import psutil
import pytest

from dropr import Client, Store, config as config_mod
from dropr.receiver import metricsfolder
from dropr.receiver.serve import settings
from dropr.receiver.shell import ReceiverWorker
from tests.support import harness


def test_gunicorn_recycles_after_max_messages_per_life_requests_with_jitter(tmp_path):
    path = harness.write_config(tmp_path, sections={"supervisor": {
        "max_messages_per_life": 1000, "recycle_jitter": 0.25}})
    chosen = settings(config_mod.load(path))
    assert (chosen["max_requests"], chosen["max_requests_jitter"]) == (1000, 250)
    path = harness.write_config(tmp_path, sections={"supervisor": {"max_messages_per_life": 0}})
    assert settings(config_mod.load(path))["max_requests"] == 0  # never


class Master:
    """Stands in for gunicorn's arbiter: its workers by pid, its log and kill_worker."""

    def __init__(self, pids):
        self.WORKERS = dict.fromkeys(pids)
        self.log = logging.getLogger("test")
        self.killed = []

    def kill_worker(self, pid, sig):
        self.killed.append((pid, sig))


@pytest.mark.process
def test_http_worker_over_max_rss_is_recycled_once_it_is_no_longer_young(tmp_path):
    fat = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        harness.wait_for(lambda: psutil.Process(fat.pid).memory_info().rss > 2 << 20, 5)
        for reset, recycled in ((3600.0, []), (0.0, [(fat.pid, signal.SIGTERM)])):
            path = harness.write_config(tmp_path, sections={"supervisor": {
                "max_rss": 1, "backoff_reset": reset}})
            worker, master = ReceiverWorker(config_mod.load(path)), Master([fat.pid])
            worker.hold_rss(master)
            worker.hold_rss(master)  # told once, not every cycle
            assert master.killed == recycled
        path = harness.write_config(tmp_path, sections={"supervisor": {
            "max_rss": 4096, "backoff_reset": 0.0}})
        worker, master = ReceiverWorker(config_mod.load(path)), Master([fat.pid])
        worker.hold_rss(master)
        assert master.killed == []
    finally:
        fat.kill()
        fat.wait()


@pytest.mark.process
def test_receiver_workers_are_recycled_and_their_messages_show_as_handled(make_tree):
    tree = make_tree({"workers": {"receiver": 1, "sender": 1}, "sender": {"batch_messages": 1},
                      "supervisor": {"max_messages_per_life": 8, "recycle_jitter": 0.0}})
    tree.start()
    receiver = tree.workers()["receiver"]["pid"]
    first = {c.pid for c in psutil.Process(receiver).children()}
    client = Client(tree.config)
    ids = {client.put(f"r{i}".encode(), "local") for i in range(40)}
    store = Store(tree.config.receiver.store)
    harness.wait_for(lambda: {m.id for m in store.messages("common")} == ids, 30,
                     what=f"delivered\n{tree.log_tail()}")
    # 40 one-message uploads over two HTTP workers of 8 requests each: neither of
    # the first two is left (a replacement may be on its way at any moment).
    harness.wait_for(lambda: len(now := {c.pid for c in psutil.Process(receiver).children()})
                     == 2 and not now & first, 10, what=f"two new HTTP workers (first {first})")
    assert tree.workers()["receiver"]["pid"] == receiver
    harness.wait_for(lambda: tree.workers()["receiver"]["handled"] >= 40, 5,
                     what=f"the receiver's handled count\n{tree.workers()['receiver']}")
    assert "Autorestarting worker after current request" in tree.log_tail(200_000)
    # The exited workers' counts are in one archive file per kind, not in two
    # files each: the metrics folder does not grow with every recycled worker.
    folder, = glob.glob(os.path.join(tempfile.gettempdir(),
                                     f"{metricsfolder.FOLDER_PREFIX}{receiver}-*"))
    harness.wait_for(lambda: len(glob.glob(os.path.join(folder, "counter_*.db"))) <= 3, 5,
                     what=f"exited workers folded: {sorted(os.listdir(folder))}")


@pytest.mark.process
def test_receiver_that_cannot_bind_turns_fatal_with_gunicorns_reason(make_tree):
    port = harness.free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen(1)
    try:
        tree = make_tree({"workers": {"receiver": 1, "sender": 0, "retry_scanner": 0,
                                      "reaper": 0}, "supervisor": {"max_restarts": 0}},
                         port=port)
        tree.start(wait=False)
        entry = tree.wait_state("receiver", "fatal", timeout=30)
        assert entry["error"].startswith(f"cannot boot: Can't connect to ('127.0.0.1', {port})")
    finally:
        taken.close()
