"""The cleanup reaper: claims of a killed sender go back to queue/ and are delivered
once, a live sender's claims stay, and sent/, tmp/, dead/ reasons and the server
store's done/ and tmp/ are cleaned by age; and the reaper worker process."""

import os
import signal
import socket
import subprocess
import time

import pytest

from dropr import config as config_mod
from dropr.client import Client
from dropr.ipc import Notices
from dropr.reaper.reaper import Reaper
from dropr.spool import Spool, SpoolName
from dropr.store import Store
from dropr.reaper.shell import ReaperWorker
from tests.support import harness


class Clock:
    """A clock the test moves by hand (files get real times; the reaper's 'now' moves)."""

    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def make(tmp_path, **sections):
    """(config, spool) for a spool and store under tmp_path with some keys overridden."""
    config = config_mod.load(harness.write_config(tmp_path, sections=sections))
    return config, Spool(config.client.spool, fsync=False).create()


def fill(spool, n, prefix="M"):
    names = [SpoolName(5, f"{prefix}{i:04d}", "local", "common") for i in range(n)]
    for name in names:
        spool.put(b"x" * 100, name)
    return names


@pytest.fixture
def blackhole():
    """A peer URL that accepts TCP connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes the handshakes; nobody ever reads
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.process
def test_claims_of_a_killed_sender_return_to_queue_and_are_delivered_once(
        tmp_path, config_path, receiver, blackhole):
    config = config_mod.load(config_path)
    spool = Spool(config.client.spool, fsync=False)
    client = Client(config)
    ids = [client.put(os.urandom(1000), "local") for _ in range(30)]
    # The same spool, but its peer swallows the upload: the sender blocks holding its claim.
    (tmp_path / "stuck").mkdir()
    stuck = harness.write_config(tmp_path / "stuck", peers={"local": {"url": blackhole}},
                                 sections={"client": {"spool": str(config.client.spool)}})
    sender = subprocess.Popen([*harness.DROPR, "--config", str(stuck), "send"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        harness.wait_for(lambda: spool.count("active") == 30, 10, what="the sender's claim")
    finally:
        harness.with_group(sender.pid, signal.SIGKILL)
        sender.wait(10)
    assert spool.count("queue") == 0
    reaped = Reaper(config).open().reap()
    assert reaped.recovered == 30
    assert spool.count("queue") == 30 and spool.active_dirs() == []
    harness.run_dropr(config_path, "send", "--once")
    stored = [m.id for m in Store(config.receiver.store).messages("common")]
    assert sorted(stored) == sorted(ids)  # every one, each exactly once
    assert sum(spool.counts().values()) == 0


def test_a_live_senders_claims_are_left_alone(tmp_path):
    config, spool = make(tmp_path)
    notices = Notices.replace(spool.root)
    try:
        fill(spool, 5)
        active = spool.open_active("sender 7")  # this process holds the lock
        spool.claim(active, limit=10, max_bytes=10**6)
        reaper = Reaper(config, notices=notices).open()
        assert reaper.reap().recovered == 0 and spool.count("active") == 5
        assert not notices.wait(0.05)
        active.close()  # as if its sender had died
        assert reaper.reap().recovered == 5
        assert spool.count("queue") == 5 and spool.active_dirs() == []
        assert notices.wait(0.05)  # the senders were told
    finally:
        notices.remove()


def test_half_made_claim_dirs_of_a_sender_that_died_making_them_go(tmp_path):
    config, spool = make(tmp_path)
    half = spool.dirs["active"] / ".new-sender-1.4242.1"
    half.mkdir()
    old = time.time() - 120
    os.utime(half, (old, old))
    fresh = spool.dirs["active"] / ".new-sender-2.4243.1"
    fresh.mkdir()
    Reaper(config).open().reap()
    assert not half.exists() and fresh.exists()


def to_sent(spool, names):
    active = spool.open_active("sender 1")
    for _, path, _ in spool.claim(active, limit=len(names), max_bytes=10**9):
        spool.to_sent(path, keep=True)
    active.close()


def test_sent_messages_are_kept_for_the_retention_time(tmp_path):
    config, spool = make(tmp_path, sender={"sent_retention": 60.0})
    to_sent(spool, fill(spool, 3))
    clock = Clock()
    reaper = Reaper(config, clock=clock).open()
    assert reaper.reap().sent == 0 and spool.count("sent") == 3
    clock.now += 61
    assert reaper.reap().sent == 3 and spool.count("sent") == 0


def test_with_no_retention_anything_left_in_sent_is_cleared(tmp_path):
    config, spool = make(tmp_path)  # sent_retention = 0
    to_sent(spool, fill(spool, 2))
    clock = Clock()
    clock.now += 1  # files made within this very second are not "older" yet
    assert Reaper(config, clock=clock).open().reap().sent == 2


def test_tmp_leftovers_go_after_tmp_max_age(tmp_path):
    config, spool = make(tmp_path, reaper={"tmp_max_age": 600.0})
    (spool.dirs["tmp"] / "5.HALF.local.common").write_bytes(b"half a mess")
    clock = Clock()
    reaper = Reaper(config, clock=clock).open()
    assert reaper.reap().tmp == 0
    clock.now += 601
    assert reaper.reap().tmp == 1 and list(spool.dirs["tmp"].iterdir()) == []


def test_reason_files_whose_message_is_gone_are_removed(tmp_path):
    config, spool = make(tmp_path, reaper={"tmp_max_age": 600.0})
    kept, purged = fill(spool, 2)
    for name in (kept, purged):
        spool.to_dead(spool.dirs["queue"] / str(name), name, "rejected: bad")
    os.unlink(spool.dirs["dead"] / str(purged))  # the operator removed the message by hand
    clock = Clock()
    reaper = Reaper(config, clock=clock).open()
    assert reaper.reap().reasons == 0  # a young reason may be waiting for its message
    clock.now += 601
    assert reaper.reap().reasons == 1
    assert spool.names("dead") == [kept] and spool.reason(kept) == "rejected: bad\n"
    assert spool.reason(purged) == ""


def test_server_done_and_stale_uploads_are_removed_by_age(tmp_path):
    config, spool = make(tmp_path, reaper={"done_retention": 3600.0, "tmp_max_age": 600.0})
    store = Store(config.receiver.store, fsync=False)
    for i in range(3):
        store.put("orders", f"ID{i}", b"body", priority=5, client="h")
    for m in store.claim("orders", "billing", limit=2):
        store.ack(m)
    (store.root / "tmp" / "ID9.cut-off").write_bytes(b"half an upload")
    clock = Clock()
    reaper = Reaper(config, clock=clock).open()
    assert (reaper.reap().done, store.count("orders", "done")) == (0, 2)
    clock.now += 601
    assert reaper.reap().store_tmp == 1 and list((store.root / "tmp").iterdir()) == []
    clock.now += 3600
    assert reaper.reap().done == 2
    assert store.count("orders", "done") == 0 and store.count("orders") == 1


def test_a_client_only_host_grows_no_store(tmp_path):
    config, spool = make(tmp_path)
    assert not config.receiver.store.exists()
    assert not Reaper(config).open().reap()
    assert not config.receiver.store.exists()


@harness.needs('ps')
@pytest.mark.process
def test_reaper_worker_reaps_reports_while_pausing_and_stops_at_once(tmp_path):
    config, spool = make(tmp_path, reaper={"interval": 30.0})  # one pass, then a long pause
    notices = Notices.replace(spool.root)
    holder = None
    try:
        fill(spool, 4)
        holder = spool.open_active("sender 3")
        spool.claim(holder, limit=10, max_bytes=10**6)
        holder.close()  # its "sender" is gone
        pid = harness.fork_worker(ReaperWorker(config))
        try:
            harness.wait_for(lambda: harness.process_title(pid) == "dropr: reaper", 5,
                             what="the worker's title")
            harness.wait_for(lambda: spool.count("queue") == 4, 5, what="claims back in queue/")
            # Heartbeats keep coming during the 30 s pause.
            beats = harness.wait_for(lambda: [r for r in notices.reports() if r["pid"] == pid],
                                     3, what="a heartbeat")
            assert beats[0]["kind"] == "reaper"
            harness.wait_for(lambda: [r for r in notices.reports() if r["pid"] == pid],
                             3, what="a second heartbeat")
        finally:
            started = time.monotonic()
            assert harness.stop_worker(pid, timeout=1.0) == 0
            assert time.monotonic() - started < 1.0
    finally:
        notices.remove()
