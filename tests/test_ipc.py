"""The SysV wake queue as senders wait on it when droprd stops and starts
again underneath them: no busy loop on a removed queue, and the new queue
is heard."""

import signal
import subprocess
import time

import psutil
import pytest

from dropr.ipc import Notices
from tests.support import harness


@pytest.fixture
def spool(tmp_path):
    root = tmp_path / "client"
    yield root
    harness.remove_queues(root)


def test_a_wait_on_a_removed_queue_sleeps_instead_of_returning_at_once(spool):
    Notices.replace(spool)
    waiter = Notices.open(spool)
    Notices.open(spool).remove()  # droprd stop
    started = time.monotonic()
    assert waiter.wait(0.3) is False
    assert time.monotonic() - started >= 0.25


def test_a_wait_hears_the_queue_that_a_restarted_daemon_makes(spool):
    Notices.replace(spool)
    waiter = Notices.open(spool)
    fresh = Notices.replace(spool)  # droprd restart: old queues removed, new ones made
    fresh.wake(5)
    started = time.monotonic()
    assert waiter.wait(5.0) is True
    assert time.monotonic() - started < 1.0
    fresh.wake(5)
    assert waiter.wait(0.5) is True  # and it keeps listening to the new one


@pytest.mark.process
def test_dropr_send_does_not_spin_after_droprd_removes_its_queues(tmp_path):
    path = harness.write_config(tmp_path, sections={"sender": {"wait": 1.0}})
    Notices.replace(tmp_path / "client")
    proc = subprocess.Popen([*harness.DROPR, "--config", str(path), "send"],
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        me = psutil.Process(proc.pid)
        active = tmp_path / "client" / "active" / f"send.{proc.pid}"
        harness.wait_for(active.exists, 20, what="dropr send to open its claim directory")
        harness.remove_queues(tmp_path / "client")  # droprd stop
        before = sum(me.cpu_times()[:2])
        time.sleep(2.0)  # the measuring window
        used = sum(me.cpu_times()[:2]) - before
        assert used < 0.2, f"dropr send used {used:.2f} s of CPU in 2 s with its queue removed"
    finally:
        harness.with_group(proc.pid, signal.SIGKILL)
        proc.wait()
