"""Peer health on the producer host (dropr/peers.py): the down markers in the
spool's peers/, the .revived- notes, the pauses on the boot clock, and the
sender's and the retry scanner's decisions."""

import pytest

from dropr.peers import Peers
from dropr.spool import Spool


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path, fsync=False).create()


def test_peer_down_marker(spool):
    peers = Peers(spool)
    assert peers.state("local") == {} and peers.down() == []
    peers.mark_down("local", until=5.0, failures=2, error="refused")
    assert peers.state("local")["failures"] == 2 and peers.down() == ["local"]
    peers.mark_up("local")
    assert peers.down() == [] and peers.revived() == []


def test_a_pause_runs_on_the_boot_clock_not_on_the_wall_clock(spool):
    wall, boot = Clock(1_000_000.0), Clock(50.0)
    peers = Peers(spool, clock=wall, boottime=boot)
    peers.mark_down("local", pause=30.0, failures=1, error="refused")
    state = peers.state("local")
    wall.now -= 3600  # stepped back an hour: the pause does not grow
    assert peers.pause(state, cap=600) == 30.0
    boot.now += 20
    assert peers.pause(state, cap=600) == pytest.approx(10.0)
    boot.now += 20
    assert peers.pause(state, cap=600) == 0.0


def test_a_marker_of_another_boot_is_trusted_no_further_than_the_cap(spool):
    wall = Clock(1_000_000.0)
    peers = Peers(spool, clock=wall, boottime=Clock(50.0))
    state = dict(down_until=wall.now + 86400, failures=9, error="refused", boot_id="other-boot",
                 down_until_boot=0.0)
    assert peers.pause(state, cap=60) == 60


def test_a_sender_holds_back_for_the_pause_but_not_for_a_peer_on_trial(spool):
    peers = Peers(spool, clock=Clock(1000.0), boottime=Clock(10.0))
    assert peers.before_send("local", cap=60) == ({}, 0.0)
    peers.failed("local", {}, "curl error 7", base=2.0, cap=60)
    state, pause = peers.before_send("local", cap=60)
    assert state["failures"] == 1 and state["error"] == "curl error 7" and pause == pytest.approx(2.0)
    peers.failed("local", state, "curl error 7", base=2.0, cap=60)
    state, pause = peers.before_send("local", cap=60)
    assert state["failures"] == 2 and pause == pytest.approx(4.0)
    assert peers.probed("local", True, "", base=2.0, cap=60)
    state, pause = peers.before_send("local", cap=60)
    assert state["trial"] and state["failures"] == 2 and pause == 0.0


def test_a_batch_through_to_a_down_peer_leaves_a_note_for_the_retry_scanner(spool):
    peers = Peers(spool)
    peers.sent("local", {})  # it was up: nothing to note
    assert peers.revived() == []
    peers.mark_down("local", pause=10, failures=1, error="refused")
    peers.sent("local", peers.state("local"))
    assert peers.down() == [] and peers.revived() == ["local"]
    peers.forget_revived("local")
    assert peers.revived() == []


def test_a_failed_probe_lengthens_the_pause_and_a_ready_peer_with_nothing_waiting_is_up(spool):
    boot = Clock(10.0)
    peers = Peers(spool, boottime=boot)
    peers.mark_down("local", pause=1.0, failures=3, error="refused")
    assert not peers.due_for_probe(peers.state("local"), cap=60, within=0.5)
    boot.now += 0.6
    assert peers.due_for_probe(peers.state("local"), cap=60, within=0.5)
    assert not peers.probed("local", False, "curl error 7", base=1.0, cap=60)
    state = peers.state("local")
    assert state["failures"] == 4 and state["error"] == "curl error 7" and "trial" not in state
    assert peers.pause(state, cap=60) == pytest.approx(8.0)
    assert peers.probed("local", True, "", base=1.0, cap=60)
    peers.trial_done("local", requeued=1)
    assert peers.down() == ["local"]  # its trial batch is on its way
    peers.trial_done("local", requeued=0)
    assert peers.down() == []
    assert not peers.probed("local", True, "", base=1.0, cap=60)  # up meanwhile: no trial
