"""Spool state changes: claims, orphaned claim directories (found by flock,
not by pid), dead messages with reasons, requeue."""

import os
import signal
import subprocess
import sys

import pytest

from dropr.spool import Spool, SpoolName


def fill(spool, n, peer="local"):
    names = [SpoolName(5, f"M{i:04d}", peer, "common") for i in range(n)]
    for name in names:
        spool.put(b"x" * 10, name)
    return names


def test_claim_takes_due_messages_in_order_within_limits(tmp_path):
    spool = Spool(tmp_path, fsync=False).create()
    names = fill(spool, 5)
    spool.put(b"later", SpoolName(0, "LATER", "local", "common", due_ms=10**15))
    active = spool.open_active("sender 1")
    got = spool.claim(active, limit=3, max_bytes=10**6)
    assert [n for n, _, _ in got] == names[:3]
    rest = spool.claim(active, limit=10, max_bytes=10**6)
    assert [n for n, _, _ in rest] == names[3:]  # the one not yet due stays
    assert spool.count("active") == 5 and [n.id for n in spool.names("queue")] == ["LATER"]
    active.close()


def test_claim_by_bytes_takes_at_least_one(tmp_path):
    spool = Spool(tmp_path, fsync=False).create()
    fill(spool, 3)
    active = spool.open_active("s")
    assert len(spool.claim(active, limit=10, max_bytes=1)) == 1
    assert len(spool.claim(active, limit=10, max_bytes=25)) == 2
    active.close()


HOLDER = """
import sys, time
from dropr.spool import Spool
spool = Spool(sys.argv[1], fsync=False)
active = spool.open_active("sender 9")
spool.claim(active, limit=100, max_bytes=10**9)
print("claimed", flush=True)
time.sleep(60)
"""


@pytest.mark.process
def test_orphaned_claims_return_to_queue_only_when_their_owner_is_dead(tmp_path):
    spool = Spool(tmp_path, fsync=False).create()
    names = fill(spool, 20)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"claimed\n"
        assert spool.count("active") == 20 and spool.count("queue") == 0
        assert spool.recover_orphans() == 0  # its owner holds the lock
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert spool.recover_orphans() == 20
        assert spool.names("queue") == names
        assert spool.active_dirs() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dead_keeps_its_reason_and_requeue_clears_it(tmp_path):
    spool = Spool(tmp_path, fsync=False).create()
    (name,) = fill(spool, 1)
    active = spool.open_active("s")
    (_, path, _), = spool.claim(active, limit=1, max_bytes=100)
    spool.to_dead(path, name, "rejected: too large")
    assert spool.names("dead") == [name]
    assert spool.reason(name) == "rejected: too large\n"
    assert spool.names("tmp") == [] and not list(spool.dirs["tmp"].iterdir())
    spool.requeue("dead", name)
    assert spool.names("queue") == [name] and spool.reason(name) == ""
    assert list(spool.dirs["dead"].iterdir()) == []
    active.close()


def test_deferred_name_carries_attempts_and_due(tmp_path):
    spool = Spool(tmp_path, fsync=False).create()
    (name,) = fill(spool, 1)
    active = spool.open_active("s")
    (_, path, _), = spool.claim(active, limit=1, max_bytes=100)
    new = spool.to_deferred(path, name, due_ms=123456)
    assert spool.names("deferred") == [new] and new.attempts == 1 and new.due_ms == 123456
    again = spool.requeue("deferred", new, due_ms=0)
    assert spool.names("queue") == [again] and again.attempts == 1
    active.close()


def test_foreign_files_are_ignored(tmp_path):
    spool = Spool(tmp_path, fsync=False).create()
    fill(spool, 2)
    (spool.dirs["queue"] / "README").write_text("not a message")
    assert len(spool.names("queue")) == 2
