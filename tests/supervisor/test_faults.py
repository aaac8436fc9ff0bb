"""Faults the tree must ride out without an operator, each once a defect:
signals in a worker's first moments, a failed fork(), a config file that is
not UTF-8, reloads and restarts during a stop, and a burst of SIGKILLs."""

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dropr import Client, Store
from dropr.spool import Spool
from tests.supervisor.conftest import DROPRD, alive
from tests.support import harness

pytestmark = pytest.mark.process

PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


def test_stop_right_after_start_reaches_the_new_receiver(make_tree):
    # The receiver gets SIGTERM while it is still booting (before gunicorn has
    # its own handlers): it must stop at once, not after stop_timeout's SIGKILL.
    tree = make_tree({"workers": {"receiver": 1},
                      "supervisor": {"stop_timeout": 20.0, "kill_timeout": 1.0}})
    for _ in range(3):
        tree.start(wait=False)
        supervisor = tree.pid
        t0 = time.monotonic()
        os.kill(supervisor, signal.SIGTERM)
        harness.wait_for(lambda: not alive(supervisor), 30, what="the supervisor gone")
        took = time.monotonic() - t0
        assert took < 8.0, f"stop took {took:.1f}s\n{tree.log_tail()}"
        assert "did not stop in time" not in tree.log_tail()


def pids_controller():
    """The cgroup folder under which a pids-limited group can be made, or None."""
    if (PIDS_CGROUP / "tasks").exists():  # cgroup v1
        return PIDS_CGROUP
    unified = PIDS_CGROUP.parent
    with contextlib.suppress(OSError):  # cgroup v2, with pids enabled for children
        if "pids" in (unified / "cgroup.subtree_control").read_text().split():
            return unified
    return None


@contextlib.contextmanager
def pids_cgroup(limit):
    """A pids cgroup allowing ``limit`` tasks; yields its folder."""
    root = pids_controller()
    if root is None or os.geteuid() != 0:
        pytest.skip("needs root and the cgroup pids controller (v1, or v2 enabled for "
                    "child groups) to make fork() fail with EAGAIN")
    folder = root / f"dropr-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        folder.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a pids cgroup: {e}")
    try:
        (folder / "pids.max").write_text(str(limit))
        yield folder
    finally:
        with contextlib.suppress(AssertionError):
            harness.wait_for(lambda: not (folder / "cgroup.procs").read_text().strip(), 10)
        folder.rmdir()


def test_a_failed_fork_is_retried_and_the_tree_keeps_running(make_tree):
    tree = make_tree({"workers": {"sender": 1}})
    # The supervisor and one worker fit; the next two fork()s fail with EAGAIN.
    with pids_cgroup(2) as cgroup:
        proc = subprocess.Popen(
            [*DROPRD, "--config", str(tree.config_path), "start", "--foreground"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid())))
        try:
            entry = harness.wait_for(
                lambda: (w := tree.workers().get("reaper")) and w["last_exit"] and w, 10,
                what="a failed fork in the status")
            assert entry["last_exit"].startswith("not started: [Errno 11]"), entry
            assert entry["state"] == "backoff" and proc.poll() is None
            (cgroup / "pids.max").write_text("max")
            tree.wait_running(3)
            ids = {Client(tree.config).put(b"after EAGAIN", "local") for _ in range(5)}
            receiver = harness.Receiver(tree.config_path)
            receiver.start()
            try:
                store = Store(tree.config.receiver.store)
                harness.wait_for(lambda: {m.id for m in store.messages("common")} == ids, 15,
                                 what="delivered")
            finally:
                receiver.stop()
            assert tree.run("stop").returncode == 0
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_config_that_is_not_utf8_is_refused_on_sighup_and_the_tree_keeps_running(make_tree):
    tree = make_tree()
    tree.start()
    before = {n: w["pid"] for n, w in tree.workers().items()}
    good = tree.config_path.read_bytes()
    tree.config_path.write_bytes(b"# caf\xe9\n" + good)
    result = tree.run("reload")
    assert result.returncode == 1 and "not valid UTF-8" in result.stderr, result.stderr
    os.kill(tree.pid, signal.SIGHUP)  # sent directly, past the command's own check
    harness.wait_for(lambda: (tree.status() or {}).get("generation") == 1, 5)
    assert alive(tree.pid), tree.log_tail()
    assert "not valid UTF-8" in tree.status()["reload"]["error"]
    assert {n: w["pid"] for n, w in tree.workers().items()} == before
    tree.config_path.write_bytes(good)
    assert tree.run("reload").returncode == 0


def test_reload_of_stop_timeout_alone_replaces_the_receiver(make_tree):
    # The receiver's gunicorn takes its graceful timeout from stop_timeout at start.
    tree = make_tree({"workers": {"receiver": 1}})
    tree.start()
    before = {n: w["pid"] for n, w in tree.workers().items()}
    tree.rewrite({"supervisor": {"stop_timeout": 7.0}})
    assert tree.run("reload").returncode == 0
    harness.wait_for(lambda: tree.workers()["receiver"]["pid"] not in (None, before["receiver"])
                     and tree.workers()["receiver"]["state"] == "running", 15,
                     what=f"a new receiver\n{tree.log_tail()}")
    after = {n: w["pid"] for n, w in tree.workers().items()}
    assert {n: p for n, p in after.items() if n != "receiver"} == {
        n: p for n, p in before.items() if n != "receiver"}


def test_restart_during_a_stop_is_refused(make_tree):
    tree = make_tree({"supervisor": {"stop_timeout": 20.0}})
    tree.start()
    reaper, supervisor = tree.workers()["reaper"]["pid"], tree.pid
    os.kill(reaper, signal.SIGSTOP)  # it cannot act on SIGTERM: the stop lasts
    try:
        os.kill(supervisor, signal.SIGTERM)
        harness.wait_for(lambda: (tree.status() or {}).get("state") == "stopping", 5,
                         what="stopping")
        result = tree.run("restart", "reaper")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "refused the request: droprd is stopping" in result.stderr
    finally:
        os.kill(reaper, signal.SIGCONT)
    harness.wait_for(lambda: not alive(supervisor), 10, what="the tree stopped")


def test_burst_of_sigkills_leaves_no_worker_fatal_and_everything_delivered(make_tree):
    tree = make_tree({"workers": {"receiver": 1},
                      "supervisor": {"backoff_cap": 1.0, "max_restarts": 2}})
    tree.start()
    client, rng, ids, kills = Client(tree.config), random.Random(11), set(), 0
    deadline = time.monotonic() + 8.0
    while kills < 25 and time.monotonic() < deadline:  # a SIGKILL every 0.1 s, producing
        ids |= {client.put(b"burst", "local") for _ in range(5)}
        victims = [w["pid"] for n, w in tree.workers().items()
                   if w["pid"] and (n.startswith("sender") or n == "receiver")]
        victims += [c for c in tree.seen if c not in victims and c != tree.pid
                    and alive(c) and "receiver worker" in _title(c)]
        if victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(victims), signal.SIGKILL)
                kills += 1
        time.sleep(0.1)
    assert kills >= 15
    store = Store(tree.config.receiver.store)
    spool = Spool(tree.config.client.spool)
    harness.wait_for(lambda: {m.id for m in store.messages("common")} == ids
                     and not spool.count("queue") and not spool.count("active"), 30,
                     what=f"every message stored\n{tree.log_tail()}")
    workers = tree.workers()
    assert not [n for n, w in workers.items() if w["state"] == "fatal"], workers
    assert sum(w["restarts"] for w in workers.values()) >= 5


def _title(pid):
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""
