"""The supervisor's parts that need no tree: pidfile lock, restart requests,
status file and table, reload rules, health verdicts."""

import json
import os

import subprocess
import sys
import time

import pytest

from dropr import config as config_mod
from dropr.errors import AlreadyRunning, ConfigError
from dropr.supervisor import control, daemon, reload, status
from dropr.supervisor.health import Health
from dropr.supervisor.slots import THEN_FAIL, THEN_FAIL_YOUNG, THEN_RESTART, Slot
from dropr.supervisor.states import State
from tests.support import harness


def test_pidfile_lock_is_the_truth(tmp_path):
    path = tmp_path / "run" / "droprd.pid"
    assert daemon.running_pid(path) is None
    held = daemon.Pidfile(path).acquire()
    assert daemon.running_pid(path) == os.getpid()
    with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
        daemon.Pidfile(path).acquire()
    held.release()
    assert not path.exists() and daemon.running_pid(path) is None


def test_stale_pidfile_is_not_running_and_is_taken_over(tmp_path):
    path = tmp_path / "droprd.pid"
    path.write_text("999999\n")  # left by a supervisor killed with SIGKILL
    assert daemon.running_pid(path) is None
    held = daemon.Pidfile(path).acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    held.release()


def test_restart_requests_are_taken_in_order_and_bad_ones_dropped(tmp_path):
    pidfile = tmp_path / "droprd.pid"
    folder = control.requests_dir(pidfile)
    assert folder == tmp_path / "droprd.requests"
    folder.mkdir()
    (folder / "1-1.json").write_text(json.dumps({"action": "restart", "names": ["reaper"]}))
    (folder / "2-1.json").write_text("{not json")
    (folder / ".3-1.json").write_text("{}")  # still being written
    (folder / "4-1.json").write_text(json.dumps({"action": "restart", "names": []}))
    taken = control.take_requests(pidfile)
    assert [p.name for p, _ in taken] == ["1-1.json", "4-1.json"]
    assert taken[0][1]["names"] == ["reaper"]
    control.done(taken[0][0])
    control.done(taken[1][0], "droprd is stopping")
    assert sorted(os.listdir(folder)) == [".3-1.json", "1-1.answer", "2-1.answer", "4-1.answer"]
    assert json.loads((folder / "1-1.answer").read_text()) == {"ok": True, "error": ""}
    assert json.loads((folder / "4-1.answer").read_text())["error"] == "droprd is stopping"
    assert control.take_requests(pidfile) == []  # answers are no requests


def test_status_file_is_replaced_whole(tmp_path):
    path = tmp_path / "status.json"
    slot = Slot("sender", 2, "sender 2")
    slot.spawned(os.getpid(), 0.0, 1000.0, 500)
    slot.heard({"handled": 12}, 0.0, 1001.0)
    status.write(path, {"pid": 1, "workers": [status.slot_entry(slot)]})
    status.write(path, {"pid": 2, "workers": [status.slot_entry(slot)]})
    assert os.listdir(tmp_path) == ["status.json"]
    document = status.read(path)
    assert document["pid"] == 2
    entry = document["workers"][0]
    assert (entry["name"], entry["state"], entry["handled"], entry["max_messages"]) == (
        "sender 2", "running", 12, 500)
    assert status.read(tmp_path / "missing.json") is None


def test_status_table_shows_live_figures(tmp_path):
    slot = Slot("reaper", 1, "reaper")
    slot.spawned(os.getpid(), 0.0, 1000.0, 0)
    slot.heard({"handled": 3}, 0.0, 1990.0)
    fatal = Slot("sender", 1, "sender 1", error="exited 6 times within 60s (exit 3)")
    throttled = Slot("sender", 2, "sender 2", state=State.BACKOFF, restarts=6,
                     last_exit="signal 9", error="throttled for 60s: died 6 times",
                     throttled_until_wall=time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1)))
    document = {"pid": 7, "started": 1000.0, "config": "/etc/dropr.toml",
                "workers": [status.slot_entry(fatal), status.slot_entry(slot),
                            status.slot_entry(throttled)]}
    status.add_live(document, sample=0, now=2000.0)
    reaper = document["workers"][1]
    assert reaper["rss"] > 0 and reaper["uptime"] == 1000.0 and reaper["heartbeat_age"] == 10.0
    text = status.render(document, {"queue": 5, "active": 0})
    lines = text.splitlines()
    assert lines[1].split() == ["NAME", "PID", "STATE", "UPTIME", "RESTARTS", "RSS", "CPU%",
                                "HANDLED", "HEARTBEAT", "LAST", "EXIT"]
    assert lines[2].split()[:4] == ["sender", "1", "-", "stopped"]  # NAME holds a space
    assert document["workers"][0]["rss"] is None  # no process, no figures
    assert lines[3].split()[:4] == ["reaper", str(os.getpid()), "running", "16m40s"]
    assert lines[4].split()[3:6] == ["backoff", "-", "6"] and lines[4].endswith("signal 9")
    assert "sender 1: exited 6 times" in text and text.endswith("spool: queue 5  active 0")
    assert "sender 2: throttled until 03:04:05: throttled for 60s: died 6 times" in text
    assert document["workers"][2]["throttled_until"] == throttled.throttled_until_wall
    assert document["workers"][0]["throttled_until"] is None


def test_reload_refuses_bad_files_and_keys_that_need_a_restart(tmp_path):
    path = harness.write_config(tmp_path, port=8999)
    current = config_mod.load(path)
    harness.write_config(tmp_path, port=8999, sections={"workers": {"sender": 4}})
    new = reload.load(current)
    assert new.workers.sender == 4 and not reload.workers_affected(current, new)
    harness.write_config(tmp_path, port=8999, sections={"sender": {"wait": 0.5}})
    assert reload.workers_affected(current, reload.load(current))
    # a new store backend reaches the receiver in the tree (switching to JetStream)
    harness.write_config(tmp_path, port=8999, sections={"store": {
        "backend": "jetstream", "servers": ["nats://127.0.0.1:4222"], "replicas": 1}})
    assert reload.workers_affected(current, reload.load(current))
    path.write_text(path.read_text().replace("[sender]", "[workers]\nsenders = 3\n[sender]"))
    with pytest.raises(ConfigError, match="senders: unknown key"):
        reload.load(current)
    harness.write_config(tmp_path, port=8999, sections={"client": {"spool": str(tmp_path / "x")}})
    with pytest.raises(ConfigError, match=r"\[client\] spool cannot change by reload"):
        reload.load(current)


@pytest.mark.process
def test_health_verdicts_on_a_real_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        health, slot = Health(), Slot("reaper", 1, "reaper")
        slot.spawned(child.pid, 100.0, 0.0, 0)
        health.watch(child.pid)
        harness.wait_for(lambda: health.rss(child.pid) > 2 << 20, 5, what="interpreter loaded")
        policy = config_mod.SupervisorConfig(max_rss=0, backoff_reset=30.0)
        assert health.judge(slot, 101.0, policy, 10.0) is None
        hung = health.judge(slot, 111.0, policy, 10.0)
        assert hung.then == THEN_FAIL and hung.why == "silent for 11.0s"
        fat = config_mod.SupervisorConfig(max_rss=1, backoff_reset=30.0)
        assert health.judge(slot, 101.0, fat, 10.0).then == THEN_FAIL_YOUNG  # just started
        assert health.judge(slot, 140.0, fat, 100.0).then == THEN_RESTART
        child.kill()
        child.wait()
        assert health.judge(slot, 101.0, policy, 10.0).gone
    finally:
        child.kill()
        child.wait()
