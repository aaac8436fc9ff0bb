"""droprd for real: the supervisor, its workers, gunicorn, SysV queues and files."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest

from dropr import Client, Store
from dropr.spool import Spool
from tests.supervisor.conftest import DROPRD, alive, deadline_wait, queues_exist
from tests.support import harness

pytestmark = pytest.mark.process

TREE_TITLES = ["dropr: supervisor", "dropr: sender 1", "dropr: sender 2",
               "dropr: retry-scanner", "dropr: reaper", "dropr: receiver"]


def titles():
    """pid -> command line, as ``ps`` shows them."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {int(pid): args for pid, _, args in (line.strip().partition(" ")
                                                 for line in out.splitlines())}


def tree_titles(tree, prefix):
    """The titles, as ``ps`` shows them, of the supervisor's children that start
    with ``prefix`` (other trees may run on the host at the same time)."""
    shown = titles()
    children = psutil.Process(tree.pid).children()
    return sorted(shown[c.pid] for c in children
                  if c.pid in shown and shown[c.pid].startswith(prefix))


def put(tree, count, tag="m"):
    client = Client(tree.config)
    return {client.put(f"{tag}{i}".encode(), "local") for i in range(count)}


def stored_ids(tree):
    return [m.id for m in Store(tree.config.receiver.store).messages("common")]


def wait_delivered(tree, ids, timeout=20.0):
    """Wait until the store holds exactly ``ids`` and the spool has nothing left."""
    spool = Spool(tree.config.client.spool)

    def done():
        counts = spool.counts()
        return len(stored_ids(tree)) >= len(ids) and not any(
            counts[s] for s in ("queue", "active", "deferred", "dead"))
    harness.wait_for(done, timeout, interval=0.05, what=f"delivery\n{tree.log_tail()}")
    stored = stored_ids(tree)
    assert len(stored) == len(set(stored)) and set(stored) == ids


class Blackhole:
    """A port that takes connections and never answers: a sender holds its batch."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)

    def close(self):
        """Closing resets the waiting connections: the senders get an error at once."""
        self.sock.close()


@harness.needs('ps')
def test_start_titles_status_and_second_start(make_tree):
    tree = make_tree({"workers": {"receiver": 1}})
    tree.start()
    supervisor = tree.pid
    workers = tree.workers()
    shown = titles()
    assert shown[supervisor] == "dropr: supervisor"
    assert sorted(shown[w["pid"]] for w in workers.values()) == sorted(TREE_TITLES[1:])
    result = tree.run("status", "--json")
    assert result.returncode == 0, result.stderr
    listed = {w["name"]: w for w in json.loads(result.stdout)["workers"]}
    assert {n: w["pid"] for n, w in listed.items()} == {n: w["pid"] for n, w in workers.items()}
    assert all(w["state"] == "running" and w["rss"] > 0 for w in listed.values())
    table = tree.run("status").stdout
    assert "sender 2" in table and "spool: queue 0" in table

    again = tree.run("start")
    assert again.returncode == 1
    assert f"already running (pid {supervisor}" in again.stderr
    assert tree.pid == supervisor and alive(supervisor)


def test_stop_leaves_no_process_pidfile_or_queue(make_tree):
    tree = make_tree({"workers": {"receiver": 1}})
    tree.start()
    ids = put(tree, 20)
    wait_delivered(tree, ids)
    # remembers the supervisor, the workers and gunicorn's workers
    harness.wait_for(lambda: tree.status() and len(tree.seen) == 8, 5, what="8 processes")
    spool = tree.config.client.spool
    assert sorted(queues_exist(spool)) == ["report", "wake"]
    result = tree.run("stop")
    assert result.returncode == 0 and "stopped" in result.stdout
    assert tree.leftovers() == []
    assert not tree.config.supervisor.pidfile.exists()
    assert not tree.config.supervisor.status_file.exists()
    assert queues_exist(spool) == []
    assert tree.run("status").returncode == 3
    assert tree.run("status", "--json").stdout.strip() == '{"running": false}'
    again = tree.run("stop")
    assert again.returncode == 0 and "not running" in again.stdout


def test_killed_sender_is_replaced_and_its_batch_delivered_once(make_tree):
    port = harness.free_port()
    tree = make_tree({"sender": {"batch_messages": 100}}, port=port,
                     peers={"local": {"url": f"http://127.0.0.1:{port}", "timeout": 30.0}})
    hole = Blackhole(port)
    receiver = harness.Receiver(tree.config_path)
    try:
        ids = put(tree, 1000)
        tree.start()
        spool = Spool(tree.config.client.spool)
        # Each of the two senders holds the batch on the wire and the next one it claimed.
        harness.wait_for(lambda: spool.count("active") == 400, 10, what="four batches held")
        victim = tree.workers()["sender 1"]["pid"]
        os.kill(victim, signal.SIGKILL)

        def replaced():
            entry = tree.workers()["sender 1"]
            return entry["pid"] != victim and entry["state"] == "running"
        assert deadline_wait(replaced, 2.0) < 2.0
        assert tree.workers()["sender 1"]["last_exit"] == "signal 9"
        hole.close()
        receiver.start()
        wait_delivered(tree, ids)
    finally:
        hole.close()
        receiver.stop()


def test_killed_supervisor_takes_every_worker_with_it(make_tree):
    tree = make_tree({"workers": {"receiver": 1}})
    tree.start()
    # 5 workers and the receiver's 2 HTTP workers
    harness.wait_for(lambda: tree.status() and len(tree.seen) == 8, 5, what="8 processes")
    workers = [pid for pid in tree.seen if pid != tree.pid]
    os.kill(tree.pid, signal.SIGKILL)
    assert deadline_wait(lambda: not any(alive(p) for p in workers), 2.0) < 2.0
    ids = put(tree, 50)  # spooled while nothing runs
    tree.start()
    wait_delivered(tree, ids)


def test_killed_supervisor_in_flight_batches_delivered_after_start(make_tree):
    port = harness.free_port()
    tree = make_tree({"sender": {"batch_messages": 50}}, port=port,
                     peers={"local": {"url": f"http://127.0.0.1:{port}", "timeout": 30.0}})
    hole = Blackhole(port)
    receiver = harness.Receiver(tree.config_path)
    try:
        ids = put(tree, 300)
        tree.start()
        spool = Spool(tree.config.client.spool)
        # Each of the two senders holds the batch on the wire and the next one it claimed.
        harness.wait_for(lambda: spool.count("active") == 200, 10, what="four batches held")
        tree.status()
        os.kill(tree.pid, signal.SIGKILL)
        assert deadline_wait(lambda: not tree.leftovers(), 2.0) < 2.0
        hole.close()
        receiver.start()
        tree.start()
        wait_delivered(tree, ids)
    finally:
        hole.close()
        receiver.stop()


def test_worker_crashing_at_start_turns_fatal_while_the_rest_deliver(make_tree):
    tree = make_tree({"workers": {"receiver": 1},
                      "supervisor": {"test_crash": "reaper", "max_restarts": 2}})
    tree.start(wait=False)
    fatal = tree.wait_state("reaper", "fatal")
    assert fatal["restarts"] == 2 and "exit 3" in fatal["error"]
    assert "test_crash = 'reaper': failing at start on purpose" in fatal["error"]
    assert "reaper: cannot boot: [supervisor] test_crash" in tree.run("status").stdout
    ids = put(tree, 30)
    wait_delivered(tree, ids)
    harness.wait_for(lambda: all(w["state"] == "running" for n, w in tree.workers().items()
                                 if n != "reaper"), 10, what="the other workers running")

    result = tree.run("restart", "reaper")
    assert result.returncode == 0, result.stderr
    harness.wait_for(lambda: tree.workers()["reaper"]["restarts"] > 2, 5, what="revived")
    assert tree.wait_state("reaper", "fatal")["restarts"] == 5

    tree.rewrite({"supervisor": {"test_crash": ""}})
    assert tree.run("reload").returncode == 0
    assert tree.run("restart", "reaper").returncode == 0
    tree.wait_state("reaper", "running")
    assert tree.run("restart", "nobody").returncode == 2


def test_restart_takes_a_worker_by_its_name_however_it_is_typed(make_tree):
    tree = make_tree({"workers": {"sender": 2, "retry_scanner": 0, "reaper": 0}})
    tree.start()
    spellings = (["sender 1"], ["sender", "1"], ["sender-1"])  # as ps shows it, words, older
    for restarts, words in enumerate(spellings, 1):
        result = tree.run("restart", *words)
        assert result.returncode == 0 and "restarting sender 1" in result.stdout, result.stderr
        harness.wait_for(lambda: (w := tree.workers()["sender 1"])["restarts"] == restarts
                         and w["state"] == "running", 10, what=f"restart by {words}")
    assert tree.workers()["sender 2"]["restarts"] == 0
    result = tree.run("restart", "sender", "3")
    assert result.returncode == 2 and "no worker named 'sender 3'" in result.stderr


@harness.needs('ps')
def test_reload_changes_sender_count_and_loses_nothing(make_tree):
    tree = make_tree({"workers": {"receiver": 1}})
    tree.start()
    ids, stop = set(), threading.Event()

    def producer():
        client = Client(tree.config)
        while not stop.is_set():
            ids.add(client.put(b"during reload", "local"))
            stop.wait(0.005)
    thread = threading.Thread(target=producer)
    thread.start()
    try:
        for count in (4, 1):
            tree.rewrite({"workers": {"sender": count}})
            result = tree.run("reload")
            assert result.returncode == 0, result.stderr
            workers = tree.wait_running(count + 3)
            senders = sorted(n for n in workers if n.startswith("sender"))
            assert senders == [f"sender {n}" for n in range(1, count + 1)]
            harness.wait_for(lambda: len(tree_titles(tree, "dropr: sender ")) == count, 5,
                             what=f"{count} sender processes")
        harness.wait_for(lambda: len(ids) >= 100, 10, what="100 puts")
    finally:
        stop.set()
        thread.join()
    wait_delivered(tree, ids)


def test_bad_config_reload_is_refused_and_the_tree_keeps_running(make_tree):
    tree = make_tree()
    tree.start()
    before = {n: w["pid"] for n, w in tree.workers().items()}
    good = tree.config_path.read_text()
    tree.config_path.write_text(good.replace("[workers]", "").replace(
        "[supervisor]", "[workers]\nsender = 'two'\n[supervisor]"))
    result = tree.run("reload")
    assert result.returncode == 1 and "[workers] sender" in result.stderr
    os.kill(tree.pid, signal.SIGHUP)  # sent directly, past the command's own check
    harness.wait_for(lambda: (tree.status() or {}).get("generation") == 1, 5)
    assert tree.status()["reload"]["ok"] is False
    assert {n: w["pid"] for n, w in tree.workers().items()} == before
    tree.config_path.write_text(good)


def test_silent_worker_is_killed_and_replaced(make_tree):
    tree = make_tree({"supervisor": {"heartbeat_timeout": 1.0, "kill_timeout": 0.5}})
    tree.start()
    hung = tree.workers()["reaper"]["pid"]
    os.kill(hung, signal.SIGSTOP)  # alive, but it says nothing any more
    harness.wait_for(lambda: (w := tree.workers()["reaper"])["pid"] not in (None, hung)
                     and w["state"] == "running", 6, what="replacement")
    entry = tree.workers()["reaper"]
    assert entry["last_exit"].startswith("signal 9 (silent for")
    assert not alive(hung)


def test_fresh_worker_over_max_rss_is_throttled_and_tried_again_never_fatal(make_tree):
    tree = make_tree({"workers": {"sender": 0, "retry_scanner": 0},
                      "supervisor": {"max_rss": 1, "max_restarts": 1, "throttle_time": 1.5}})
    tree.start(wait=False)
    entry = harness.wait_for(lambda: (w := tree.workers().get("reaper")) and
                             w["throttled_until"] and w, 15, what="reaper throttled")
    assert entry["state"] == "backoff" and "max_rss 1" in entry["last_exit"]
    assert entry["throttled_until"] > time.time() and "throttled for 1.5s" in entry["error"]
    table = tree.run("status").stdout
    assert "reaper: throttled until " in table
    restarts = entry["restarts"]
    # Tried again after the pause, and again throttled: never abandoned.
    harness.wait_for(lambda: tree.workers()["reaper"]["restarts"] > restarts + 1, 10,
                     what="tried again after the throttle")
    assert tree.workers()["reaper"]["state"] != "fatal"


def test_workers_are_recycled_after_their_message_budget(make_tree):
    tree = make_tree({"workers": {"receiver": 1}, "sender": {"batch_messages": 5},
                      "supervisor": {"max_messages_per_life": 20, "recycle_jitter": 0.0}})
    tree.start()
    ids = put(tree, 200)
    wait_delivered(tree, ids)
    senders = [w for n, w in tree.workers().items() if n.startswith("sender")]
    assert sum(w["restarts"] for w in senders) >= 5
    assert all(w["state"] != "fatal" for w in senders)
    assert any(w["last_exit"] == "exit 4" for w in senders)
    # Reports come at most once a second: the live senders' last batches show up late.
    harness.wait_for(lambda: sum(w["handled"] for n, w in tree.workers().items()
                                 if n.startswith("sender")) >= 200, 3, what="counts")


def test_foreground_logs_titled_lines_to_stderr_and_stops_on_sigint(make_tree):
    tree = make_tree({"workers": {"sender": 1}})
    proc = subprocess.Popen([*DROPRD, "--config", str(tree.config_path), "start", "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        workers = tree.wait_running(3)
        assert tree.pid == proc.pid
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert f"dropr: supervisor[{proc.pid}] INFO" in err
    assert f"spawned sender 1 (pid {workers['sender 1']['pid']})" in err
    assert not tree.leftovers() and not tree.config.supervisor.pidfile.exists()

