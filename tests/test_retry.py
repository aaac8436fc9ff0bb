"""The retry scanner: due messages back to queue/ with their attempts, expiry and
old age to dead/, down peers left alone, probes that bring a peer back, and the
retry-scanner worker process."""

import dataclasses
import os
import time

import pytest

from dropr import config as config_mod
from dropr.peers import Peers
from dropr.sender import transport
from dropr.ids import IdGenerator
from dropr.ipc import Notices
from dropr.retry_scanner.scanner import RetryScanner, format_age
from dropr.spool import Spool, SpoolName
from dropr.retry_scanner.shell import RetryScannerWorker
from tests.support import harness

T = 1_800_000_000.0  # the injected "now" of most tests
T_MS = int(T * 1000)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now=T):
        self.now = now

    def __call__(self):
        return self.now


class Probes:
    """Records the probes a scanner makes; answers with ``result`` or really probes."""

    def __init__(self, result=None):
        self.result = result
        self.peers = []

    def __call__(self, peer, *, timeout):
        self.peers.append(peer.name)
        if self.result is None:
            return transport.probe(peer, timeout=timeout)
        return self.result


@pytest.fixture
def setup(tmp_path):
    """(config, spool, notices) for a spool under tmp_path with peers local and other."""
    peers = {"local": {"url": f"http://127.0.0.1:{harness.free_port()}", "connect_timeout": 1.0},
             "other": {"url": f"http://127.0.0.1:{harness.free_port()}"}}
    path = harness.write_config(tmp_path, peers=peers,
                                sections={"retry": {"max_age": 3600.0, "interval": 1.0},
                                          "sender": {"peer_backoff_cap": 600.0}})
    config = config_mod.load(path)
    spool = Spool(config.client.spool, fsync=False).create()
    notices = Notices.replace(spool.root)
    yield config, spool, notices
    notices.remove()
    harness.remove_queues(spool.root)


def defer(spool, message_id, *, peer="local", attempts=1, due_ms=T_MS, expires_ms=0):
    """Spool a message and move it to deferred/ as a sender would; returns its name."""
    name = SpoolName(5, message_id, peer, "common", attempts=attempts, expires_ms=expires_ms)
    return spool.to_deferred(spool.put(b"payload", name), name, due_ms=due_ms,
                             count_attempt=False)


def new_id(at=T):
    return IdGenerator(clock=lambda: at)()


def woken(notices):
    return notices.wait(0.05)


def test_due_messages_go_back_to_queue_with_their_attempts_kept(setup):
    config, spool, notices = setup
    clock = Clock()
    scanner = RetryScanner(config, notices=notices, clock=clock, probe=Probes(False)).open()
    due = defer(spool, new_id(), attempts=3, due_ms=T_MS - 1000)
    due_now = defer(spool, new_id(), attempts=1, due_ms=T_MS)
    later = defer(spool, new_id(), attempts=2, due_ms=T_MS + 10_000)
    assert scanner.scan() == 2
    assert spool.names("queue") == sorted([due.replace(due_ms=0), due_now.replace(due_ms=0)])
    assert {(n.id, n.attempts) for n in spool.names("queue")} == {(due.id, 3), (due_now.id, 1)}
    assert spool.names("deferred") == [later]
    assert woken(notices)
    assert scanner.scan() == 0 and not woken(notices)  # nothing moved, nobody woken
    clock.now += 10
    assert scanner.scan() == 1 and spool.names("deferred") == []
    assert later.replace(due_ms=0) in spool.names("queue") and woken(notices)


def test_expired_message_goes_to_dead_with_its_reason(setup):
    config, spool, notices = setup
    scanner = RetryScanner(config, notices=notices, clock=Clock(), probe=Probes(False)).open()
    gone = defer(spool, new_id(), expires_ms=T_MS - 1, due_ms=T_MS + 60_000)
    fresh = defer(spool, new_id(), expires_ms=T_MS + 60_000, due_ms=T_MS + 60_000)
    assert scanner.scan() == 1
    assert spool.names("dead") == [gone] and spool.reason(gone) == "expired\n"
    assert spool.names("deferred") == [fresh]
    assert not woken(notices)  # nothing went to queue/


def test_too_old_message_goes_to_dead_by_its_id_or_its_mtime(setup):
    config, spool, notices = setup  # max_age = 3600 s
    scanner = RetryScanner(config, notices=notices, clock=Clock(), probe=Probes(False)).open()
    later = T_MS + 60_000
    old = defer(spool, new_id(T - 7260), attempts=4, due_ms=later)
    young = defer(spool, new_id(T - 60), due_ms=later)
    # Ids not made by dropr: their age comes from the file's mtime.
    foreign_old = defer(spool, "shell-made-1", attempts=2, due_ms=later)
    foreign_young = defer(spool, "shell-made-2", due_ms=later)
    zero_time = defer(spool, "0" * 26, due_ms=later)  # parses as a ULID from 1970
    os.utime(spool.dirs["deferred"] / str(foreign_old), (T - 90_000, T - 90_000))
    for name in (foreign_young, zero_time):
        os.utime(spool.dirs["deferred"] / str(name), (T - 10, T - 10))
    assert scanner.scan() == 2
    assert spool.names("dead") == sorted([old, foreign_old])
    assert spool.reason(old) == "undelivered after 4 attempts in 2h 1m: too old\n"
    assert spool.reason(foreign_old) == "undelivered after 2 attempts in 1d 1h: too old\n"
    assert spool.names("deferred") == sorted([young, foreign_young, zero_time])


def test_messages_of_a_down_peer_are_left_alone_and_stale_markers_go(setup):
    config, spool, notices = setup
    probes = Probes(False)
    scanner = RetryScanner(config, notices=notices, clock=Clock(), probe=probes).open()
    Peers(spool).mark_down("other", pause=100, failures=3, error="refused")
    Peers(spool).mark_down("retired", pause=100, failures=1, error="refused")
    mine = defer(spool, new_id(), peer="local", due_ms=T_MS - 1)
    theirs = defer(spool, new_id(), peer="other", due_ms=T_MS - 1)
    assert scanner.scan() == 1
    assert spool.names("queue") == [mine.replace(due_ms=0)]
    assert spool.names("deferred") == [theirs]
    assert probes.peers == []  # its marker runs for another 100 s: no probe yet
    assert Peers(spool).down() == ["other"]  # "retired" is no longer configured


@pytest.mark.process
def test_a_ready_peer_gets_one_trial_batch_then_all_once_a_sender_gets_through(
        config_path, receiver):
    config = config_mod.load(config_path)
    config = dataclasses.replace(config, sender=dataclasses.replace(config.sender,
                                                                    batch_messages=8))
    spool = Spool(config.client.spool, fsync=False).create()
    notices = Notices.replace(spool.root)
    try:
        now = time.time()
        Peers(spool).mark_down("local", pause=0.05, failures=4, error="refused")
        far = int(now * 1000) + 3_600_000
        names = sorted(defer(spool, new_id(now), attempts=5, due_ms=far) for _ in range(20))
        probes = Probes()  # the real probe, against the real receiver
        scanner = RetryScanner(config, notices=notices, probe=probes).open()
        assert scanner.scan() == 8
        assert probes.peers == ["local"] and woken(notices)
        assert spool.names("queue") == [n.replace(due_ms=0) for n in names[:8]]
        assert {n.attempts for n in spool.names("queue")} == {5}
        state = Peers(spool).state("local")
        assert state["trial"] and state["failures"] == 4  # the backoff is kept
        assert scanner.scan() == 0  # on trial: no second batch, no second probe
        assert probes.peers == ["local"]

        Peers(spool).mark_up("local", revived=True)  # as a sender does when a batch gets through
        assert scanner.scan() == 12
        assert spool.names("deferred") == [] and Peers(spool).revived() == []
        assert spool.names("queue") == [n.replace(due_ms=0) for n in names]
    finally:
        notices.remove()


def test_probe_failure_keeps_peer_down_with_a_longer_pause(setup):
    config, spool, notices = setup  # nothing listens on local's port
    clock = Clock(time.time())
    probes = Probes()  # the real probe: connection refused
    scanner = RetryScanner(config, notices=notices, clock=clock, boottime=clock,
                           probe=probes).open()
    scanner.peers.mark_down("local", pause=-1, failures=5, error="refused")
    waiting = defer(spool, new_id(clock.now), attempts=2, due_ms=int(clock.now * 1000) - 1)
    assert scanner.scan() == 0
    assert probes.peers == ["local"] and Peers(spool).down() == ["local"]
    assert spool.names("deferred") == [waiting] and not woken(notices)
    state = Peers(spool).state("local")
    assert state["failures"] == 6 and "curl error 7" in state["error"]
    pause = config.sender.peer_backoff_base * 2 ** 5
    assert scanner.peers.pause(state, cap=600) == pytest.approx(pause)
    scanner.scan()
    assert probes.peers == ["local"]  # failed just now: not again before its pause ends
    clock.now += pause
    scanner.scan()
    assert probes.peers == ["local", "local"]


def test_a_message_moved_away_during_a_scan_is_skipped(setup):
    config, spool, notices = setup
    scanner = RetryScanner(config, notices=notices, clock=Clock(), probe=Probes(False)).open()
    name = defer(spool, new_id(), due_ms=T_MS - 1)
    os.unlink(spool.dirs["deferred"] / str(name))  # e.g. purged by the operator
    assert scanner._apply("requeue", name) is False
    assert scanner.scan() == 0


def test_format_age():
    assert format_age(0) == "0s" and format_age(59.9) == "59s"
    assert format_age(3600) == "1h" and format_age(93784) == "1d 2h"
    assert format_age(7260) == "2h 1m"


@harness.needs('ps')
@pytest.mark.process
def test_retry_scanner_worker_scans_shows_its_title_and_stops_at_once(setup):
    config, spool, notices = setup
    # A long pause between scans must not delay the stop.
    config = dataclasses.replace(config, retry=dataclasses.replace(config.retry, interval=30.0))
    name = defer(spool, new_id(time.time()), due_ms=1)
    pid = harness.fork_worker(RetryScannerWorker(config))
    try:
        harness.wait_for(lambda: harness.process_title(pid) == "dropr: retry-scanner",
                         5, what="the worker's title")
        harness.wait_for(lambda: spool.names("queue") == [name.replace(due_ms=0)], 5,
                         what="the due message back in queue/")
        assert woken(notices)
    finally:
        started = time.monotonic()
        assert harness.stop_worker(pid, timeout=1.0) == 0
        assert time.monotonic() - started < 1.0
