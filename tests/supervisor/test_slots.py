"""The restart policy of one worker slot, on a fake clock (no processes)."""

import os
import signal

from dropr import config as config_mod
from dropr.supervisor import slots
from dropr.supervisor.slots import (THEN_FAIL, THEN_FAIL_YOUNG, THEN_REMOVE, THEN_RESTART,
                                   THEN_STOP, Slot)
from dropr.supervisor.states import State
from dropr.workers import kinds
from dropr.workers.base import EXIT_BOOT_FAILED, EXIT_RECYCLE

POLICY = config_mod.SupervisorConfig(backoff_base=1.0, backoff_factor=2.0, backoff_cap=5.0,
                                     backoff_reset=30.0, max_restarts=3, restart_window=60.0,
                                     throttle_time=60.0)


def exit_status(code):
    """A raw waitpid status for exit code ``code``."""
    return code << 8


def killed_status(sig):
    return int(sig)


def running_slot(now=0.0):
    slot = Slot("sender", 1, "sender 1")
    slot.spawned(100, now, 1000.0 + now, 0)
    slot.heard({"handled": 0}, now, 1000.0 + now)
    return slot


def test_names_follow_the_workers_section():
    workers = config_mod.WorkersConfig(sender=2, retry_scanner=1, reaper=1, receiver=1)
    assert [name for _, _, name in kinds.wanted(workers)] == [
        "sender 1", "sender 2", "retry-scanner", "reaper", "receiver"]
    assert kinds.wanted(config_mod.WorkersConfig(sender=0, retry_scanner=0, reaper=0)) == []


def test_first_report_makes_a_started_worker_running():
    slot = Slot("reaper", 1, "reaper")
    assert slot.due(0.0)
    slot.spawned(42, 0.0, 1000.0, 0)
    assert slot.state is State.STARTING and slot.alive
    slot.heard({"handled": 7}, 0.5, 1000.5)
    assert slot.state is State.RUNNING and slot.handled == 7


def test_crash_backs_off_exponentially_up_to_the_cap():
    slot, now, delays = running_slot(), 0.0, []
    for _ in range(3):
        assert slot.exited(exit_status(1), now, POLICY)
        delays.append(slot.restart_at - now)
        assert not slot.due(now) and slot.due(slot.restart_at)
        now = slot.restart_at
        slot.spawned(100, now, 1000.0, 0)
    assert delays == [1.0, 2.0, 4.0]


def test_exit_before_first_report_is_backoff_after_running_is_exited():
    slot = Slot("reaper", 1, "reaper")
    slot.spawned(1, 0.0, 0.0, 0)
    slot.exited(exit_status(EXIT_BOOT_FAILED), 0.1, POLICY)
    assert slot.state is State.BACKOFF and slot.failed
    slot = running_slot()
    slot.exited(killed_status(signal.SIGKILL), 0.1, POLICY)
    assert slot.state is State.EXITED and slot.last_exit == "signal 9"


def started_slot(now=0.0):
    """A slot whose process has just been forked and has not reported yet."""
    slot = Slot("sender", 1, "sender 1")
    slot.spawned(100, now, 1000.0 + now, 0)
    return slot


def test_only_an_own_exit_status_before_the_first_report_means_cannot_boot():
    assert slots.cannot_boot(EXIT_BOOT_FAILED, ran=False)
    assert slots.cannot_boot(EXIT_BOOT_FAILED, ran=True)  # the worker says so itself
    assert slots.cannot_boot(1, ran=False)
    assert not slots.cannot_boot(1, ran=True)  # it ran, then crashed
    assert not slots.cannot_boot(-9, ran=False)  # killed while booting
    assert not slots.cannot_boot(0, ran=False)
    assert not slots.cannot_boot(EXIT_RECYCLE, ran=False)
    assert not slots.cannot_boot(None, ran=False)  # vanished


def test_which_deaths_count_as_dying_young():
    assert slots.died_young(-int(signal.SIGSEGV), ran=False, then=None)
    assert not slots.died_young(-int(signal.SIGSEGV), ran=True, then=None)
    assert not slots.died_young(-int(signal.SIGKILL), ran=False, then=None)
    assert slots.died_young(-int(signal.SIGKILL), ran=False, then=THEN_FAIL)  # silent at boot
    assert not slots.died_young(-int(signal.SIGKILL), ran=True, then=THEN_FAIL)  # hung later
    assert slots.died_young(0, ran=True, then=THEN_FAIL_YOUNG)  # over max_rss while young


def test_worker_that_ran_and_died_is_restarted_for_ever_and_never_fatal():
    slot, now = running_slot(), 0.0
    for _ in range(1000):  # a SIGKILL every 0.5 s for over 8 minutes
        now += 0.5
        assert slot.exited(killed_status(signal.SIGKILL), now, POLICY)
        assert slot.state is State.EXITED and not slot.error
        assert slot.restart_at - now <= POLICY.backoff_cap
        now = max(now, slot.restart_at)
        slot.spawned(100, now, 1000.0 + now, 0)
        slot.heard({}, now + 0.1, 1000.1 + now)
    assert slot.restarts == 1000 and slot.throttled_until == 0.0


def test_crash_after_running_is_never_fatal_even_with_an_exit_status():
    slot, now = running_slot(), 0.0
    for _ in range(50):
        slot.exited(exit_status(1), now, POLICY)
        assert slot.state is State.EXITED
        now = slot.restart_at
        slot.spawned(100, now, 1000.0 + now, 0)
        slot.heard({}, now, 1000.0 + now)


def test_cannot_boot_turns_fatal_with_its_reason():
    slot, now = started_slot(), 0.0
    for _ in range(POLICY.max_restarts):
        slot.exited(exit_status(EXIT_BOOT_FAILED), now, POLICY)
        assert slot.state is State.BACKOFF
        now = slot.restart_at
        slot.spawned(100, now, 1000.0 + now, 0)
    slot.heard({"error": "[receiver] bind 127.0.0.1:80: address in use"}, now, 1000.0 + now)
    assert slot.state is State.STARTING  # a last word, not a heartbeat
    slot.exited(exit_status(EXIT_BOOT_FAILED), now, POLICY)
    assert slot.state is State.FATAL
    assert slot.error == ("cannot boot: [receiver] bind 127.0.0.1:80: address in use; failed "
                          f"to boot {POLICY.max_restarts + 1} times within 60s (exit 3)")


def test_staying_up_forgets_earlier_boot_failures():
    slot, now = started_slot(), 0.0
    for _ in range(20):
        for _ in range(POLICY.max_restarts):  # fails at boot, then boots and stays up
            slot.exited(exit_status(EXIT_BOOT_FAILED), now, POLICY)
            now = slot.restart_at
            slot.spawned(100, now, 1000.0 + now, 0)
        slot.heard({}, now, 1000.0 + now)
        now += POLICY.backoff_reset
        slot.settle(now, POLICY)
        assert slot.state is State.RUNNING
        slot.exited(killed_status(signal.SIGKILL), now, POLICY)
        now = slot.restart_at
        slot.spawned(100, now, 1000.0 + now, 0)
    assert slot.state is not State.FATAL


def test_boot_failure_said_after_a_first_report_still_turns_fatal():
    # The receiver reports once gunicorn listens; gunicorn halts (exit 3) when
    # its HTTP workers cannot load the app.
    slot, now = started_slot(), 0.0
    for _ in range(POLICY.max_restarts + 1):
        slot.heard({}, now + 0.5, 1000.0 + now)
        slot.exited(exit_status(EXIT_BOOT_FAILED), now + 1.0, POLICY)
        now = slot.restart_at
        if slot.state is not State.FATAL:
            slot.spawned(100, now, 1000.0 + now, 0)
    assert slot.state is State.FATAL


def test_killed_from_outside_at_boot_again_and_again_is_never_throttled_nor_fatal():
    slot, now = started_slot(), 0.0
    for sig in [signal.SIGKILL, signal.SIGTERM] * 50:
        slot.exited(killed_status(sig), now, POLICY, 5000.0 + now)
        assert slot.state is State.BACKOFF and not slot.throttled_until
        assert slot.restart_at - now <= POLICY.backoff_cap
        now = slot.restart_at
        slot.spawned(100, now, 5000.0 + now, 0)


def test_crashing_again_and_again_before_its_first_report_is_throttled_then_tried_again():
    slot, now = started_slot(), 0.0
    for _ in range(POLICY.max_restarts):
        slot.exited(killed_status(signal.SIGSEGV), now, POLICY, 5000.0 + now)
        assert slot.state is State.BACKOFF and not slot.throttled_until
        now = slot.restart_at
        slot.spawned(100, now, 5000.0 + now, 0)
    slot.exited(killed_status(signal.SIGSEGV), now, POLICY, 5000.0 + now)
    assert slot.state is State.BACKOFF  # never FATAL
    assert slot.throttled_until == slot.restart_at == now + POLICY.throttle_time
    assert slot.throttled_until_wall == 5000.0 + now + POLICY.throttle_time
    assert slot.error.startswith("throttled for 60s: died 4 times within 60s right after boot")
    assert not slot.due(now + POLICY.throttle_time - 0.001)
    assert slot.due(now + POLICY.throttle_time)
    now += POLICY.throttle_time
    slot.spawned(100, now, 5000.0 + now, 0)
    assert slot.throttled_until == 0.0 and slot.error == ""
    # A fresh round: the next deaths back off again before the next throttle.
    slot.exited(killed_status(signal.SIGABRT), now, POLICY, 5000.0 + now)
    assert slot.state is State.BACKOFF and not slot.throttled_until


def test_young_worker_over_max_rss_is_throttled_not_fatal():
    slot, now = running_slot(), 0.0
    for n in range(POLICY.max_restarts + 1):
        slot.stopping(THEN_FAIL_YOUNG, now + 1.0, "RSS 600 MiB over max_rss 512")
        slot.exited(exit_status(0), now, POLICY, 5000.0 + now)
        assert slot.state is State.BACKOFF and slot.failed
        if n < POLICY.max_restarts:
            assert not slot.throttled_until
            now = slot.restart_at
            slot.spawned(100, now, 5000.0 + now, 0)
            slot.heard({}, now, 5000.0 + now)
    assert slot.throttled_until == now + POLICY.throttle_time
    assert "max_rss 512" in slot.error


def test_more_than_max_restarts_within_the_window_is_fatal():
    slot, now = running_slot(), 0.0
    for _ in range(POLICY.max_restarts):
        slot.exited(exit_status(EXIT_BOOT_FAILED), now, POLICY)
        assert slot.state is not State.FATAL
        now += 1.0
        slot.spawned(100, now, 0.0, 0)
    slot.exited(exit_status(EXIT_BOOT_FAILED), now, POLICY)
    assert slot.state is State.FATAL and "exit 3" in slot.error
    assert not slot.due(now + 1000)


def test_failures_outside_the_window_are_forgotten():
    slot, now = running_slot(), 0.0
    for _ in range(10):
        slot.exited(exit_status(1), now, POLICY)
        assert slot.state is not State.FATAL
        now += 25.0  # at most 3 failures in any 60 s
        slot.spawned(100, now, 0.0, 0)


def test_backoff_resets_once_the_worker_stayed_up():
    slot = running_slot()
    slot.exited(exit_status(1), 0.0, POLICY)
    slot.spawned(100, 1.0, 0.0, 0)
    slot.heard({}, 1.0, 0.0)
    slot.settle(1.0 + POLICY.backoff_reset, POLICY)
    slot.exited(exit_status(1), 40.0, POLICY)
    assert slot.restart_at - 40.0 == POLICY.backoff_base


def test_recycle_exit_restarts_at_once_and_is_not_a_failure():
    slot = running_slot()
    for _ in range(10):
        assert slot.exited(exit_status(EXIT_RECYCLE), 5.0, POLICY)
        assert slot.state is State.EXITED and slot.due(5.0) and not slot.failed
        slot.spawned(100, 5.0, 0.0, 0)
    assert not slot.failures and slot.restarts == 10


def test_what_follows_a_requested_stop():
    for then, state in ((THEN_STOP, State.STOPPED), (THEN_RESTART, State.EXITED),
                        (THEN_FAIL, State.EXITED)):
        slot = running_slot()
        slot.stopping(then, 10.0, "why")
        assert slot.state is State.STOPPING and slot.alive
        assert slot.exited(exit_status(0), 1.0, POLICY)
        assert slot.state is state and slot.last_exit == "exit 0 (why)"
        assert slot.failed == (then == THEN_FAIL)
    slot = running_slot()
    slot.stopping(THEN_REMOVE, 10.0)
    assert slot.exited(exit_status(0), 1.0, POLICY) is False


def test_operator_restart_revives_a_fatal_worker():
    slot = started_slot()
    for n in range(POLICY.max_restarts + 1):
        slot.exited(exit_status(EXIT_BOOT_FAILED), float(n), POLICY)
        if slot.state is not State.FATAL:
            slot.spawned(100, float(n), 0.0, 0)
    assert slot.state is State.FATAL
    slot.revive(10.0)
    assert slot.due(10.0) and not slot.failures and slot.error == ""


def test_handled_counts_add_up_across_lives():
    slot = running_slot()
    slot.heard({"handled": 30}, 1.0, 0.0)
    slot.exited(exit_status(EXIT_RECYCLE), 2.0, POLICY)
    slot.spawned(101, 2.0, 0.0, 0)
    slot.heard({"handled": 5}, 3.0, 0.0)
    assert slot.handled_before + slot.handled == 35


def test_describe_exit():
    assert slots.describe_exit(None) == "vanished"
    assert slots.describe_exit(exit_status(4)) == "exit 4"
    assert slots.describe_exit(killed_status(signal.SIGTERM)) == f"signal {int(signal.SIGTERM)}"
    assert os.waitstatus_to_exitcode(exit_status(EXIT_RECYCLE)) == EXIT_RECYCLE


def test_reconcile_adds_missing_and_hands_back_running_surplus():
    current = {}
    assert slots.reconcile(current, config_mod.WorkersConfig(sender=3)) == []
    assert list(current) == ["sender 1", "sender 2", "sender 3", "retry-scanner", "reaper"]
    current["sender 2"].spawned(12, 0.0, 0.0, 0)  # sender 3 never started
    surplus = slots.reconcile(current, config_mod.WorkersConfig(sender=1, reaper=0))
    assert [s.name for s in surplus] == ["sender 2"]
    assert list(current) == ["sender 1", "sender 2", "retry-scanner"]
    surplus[0].stopping(THEN_REMOVE, 5.0)
    slots.reconcile(current, config_mod.WorkersConfig(sender=2))  # wanted again meanwhile
    assert current["sender 2"].then == THEN_RESTART and "reaper" in current


def test_failed_fork_waits_for_the_backoff_and_never_turns_fatal():
    slot, now = Slot("sender", 1, "sender 1"), 0.0
    for n in range(20):
        slot.not_forked(BlockingIOError(11, "Resource temporarily unavailable"), now, POLICY)
        assert slot.state is State.BACKOFF and not slot.alive and slot.pid is None
        assert slot.last_exit == "not started: [Errno 11] Resource temporarily unavailable"
        assert not slot.due(now) and slot.due(slot.restart_at)
        now = slot.restart_at
    assert slot.restart_at - now <= POLICY.backoff_cap and slot.lives == 0
