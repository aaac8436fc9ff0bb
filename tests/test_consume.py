"""``dropr consume``: real ``dropr`` processes running real shell commands over a
real store: bodies byte for byte, metadata in the environment, priority order,
retries with backoff, dead letters with their reason, timeouts, crashes, the
one-consumer-per-name lock and usage errors."""

import os
import shlex
import signal
import subprocess
import time
import types

import psutil
import pytest

from dropr.store import Failures, Store
from tests.support import harness


def _config(tmp_path, **retry):
    retry = {"base": 0.2, "factor": 2.0, "cap": 5.0, "jitter": 0.0, **retry}
    return harness.write_config(tmp_path, sections={"retry": retry})


@pytest.fixture
def env(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    store = Store(tmp_path / "server", fsync=False)
    return types.SimpleNamespace(config=_config(tmp_path), store=store, out=out, tmp=tmp_path)


def q(path):
    return shlex.quote(str(path))


def consume(config, *args, check=True):
    return harness.run_dropr(config, "consume", *args, check=check, timeout=30)


def start(config, log, *args):
    """``dropr consume`` in the background, its stderr into ``log``."""
    with open(log, "wb") as f:
        return subprocess.Popen([*harness.DROPR, "--config", str(config), "consume", *args],
                                stdout=subprocess.DEVNULL, stderr=f)


def stop(proc, sig=signal.SIGTERM, timeout=10):
    """Signal a consumer by pid and return its exit code; SIGKILL it if it hangs."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- the command's view -------------------------------------------------------


@pytest.mark.process
def test_each_body_reaches_the_command_byte_identical_with_its_metadata(env):
    bodies = {"EMPTY": b"", "BIN": bytes(range(256)) * 3, "BIG": os.urandom(3 * 2**20 + 7)}
    for mid, body in bodies.items():
        env.store.put("orders", mid, body, priority=3, client="shop-1")
    script = f'cat > {q(env.out)}/"$DROPR_ID"; env > {q(env.out)}/"$DROPR_ID.env"'
    r = consume(env.config, "--channel", "orders", "--once", "--", "sh", "-c", script)
    for mid, body in bodies.items():
        assert (env.out / mid).read_bytes() == body
        lines = (env.out / f"{mid}.env").read_text().splitlines()
        seen = dict(line.split("=", 1) for line in lines if "=" in line)
        m = env.store.get("orders", mid)
        want = {"DROPR_ID": mid, "DROPR_CHANNEL": "orders", "DROPR_PRIORITY": "3",
                "DROPR_CLIENT": "shop-1", "DROPR_RECEIVED_AT": f"{m.received_at:.3f}",
                "DROPR_SIZE": str(len(body)), "DROPR_ATTEMPT": "1"}
        assert {k: seen.get(k) for k in want} == want
        assert seen["PATH"] == os.environ["PATH"]  # the rest is inherited
    assert env.store.count("orders", "done") == 3 and env.store.count("orders") == 0
    assert r.stderr.count(b"done, attempt 1") == 3


@pytest.mark.process
def test_messages_go_to_the_command_by_priority_then_arrival(env):
    for i, prio in enumerate([9, 0, 5, 0, 9]):  # ids sort in arrival order
        env.store.put("c", f"M{i}", b"x", priority=prio, client="h")
    log = env.out / "order"
    consume(env.config, "--channel", "c", "--once", "--batch", "2", "--",
            "sh", "-c", f'echo "$DROPR_ID" >> {q(log)}')
    assert log.read_text().split() == ["M1", "M3", "M2", "M0", "M4"]


# -- failures -------------------------------------------------------------------


@pytest.mark.process
def test_a_failing_command_is_retried_with_backoff_then_acked(env):
    env.store.put("c", "R1", b"body", priority=5, client="h")
    count, log = env.out / "count", env.out / "attempts"
    script = (f'n=$(($(cat {q(count)} 2>/dev/null || echo 0) + 1)); echo $n > {q(count)}; '
              f'echo "$DROPR_ATTEMPT $(date +%s.%N)" >> {q(log)}; cat > /dev/null; [ $n -ge 3 ]')
    proc = start(env.config, env.tmp / "consume.log", "--channel", "c", "--poll", "0.05",
                 "--", "sh", "-c", script)
    try:
        harness.wait_for(lambda: env.store.count("c", "done") == 1, 10, what="ack after retries")
    finally:
        assert stop(proc) == 0
    rows = [line.split() for line in log.read_text().splitlines()]
    assert [a for a, _ in rows] == ["1", "2", "3"]
    times = [float(t) for _, t in rows]
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4  # base 0.2, factor 2
    assert env.store.failures(env.store.get("c", "R1")) == Failures()  # settled on ack
    text = (env.tmp / "consume.log").read_text()
    assert "R1 retry in 0.20s, attempt 1 failed: exit status 1" in text
    assert "R1 retry in 0.40s, attempt 2 failed" in text and "R1 done, attempt 3" in text


@pytest.mark.process
def test_a_message_that_keeps_failing_goes_dead_with_its_reason(env):
    config = _config(env.tmp, base=0.0)  # no wait: --once sees every attempt
    env.store.put("c", "BAD", b"bad", priority=1, client="h")
    env.store.put("c", "GOOD", b"ok", priority=5, client="h")
    script = 'if grep -q bad; then echo "boom $DROPR_ATTEMPT" >&2; exit 3; fi'
    r = consume(config, "--channel", "c", "--once", "--max-attempts", "3", "--", "sh", "-c", script)
    assert env.store.count("c", "dead") == 1 and env.store.count("c", "done") == 1
    assert env.store.count("c") == 0
    (dead,) = env.store.messages("c", state="dead")
    failures = env.store.failures(dead)
    assert (dead.id, failures.attempts) == ("BAD", 3)
    assert failures.reason.startswith("exit status 3\n") and failures.reason.endswith("boom 3")
    assert b"BAD dead, attempt 3 of 3: exit status 3" in r.stderr
    assert b"boom 1" in r.stderr  # the command's stderr reaches ours as well


@pytest.mark.process
def test_a_command_over_its_timeout_is_killed_with_its_children(env):
    env.store.put("c", "SLOW", b"x", priority=5, client="h")
    pidfile = env.out / "pid"
    script = f'sleep 30 & echo $! > {q(pidfile)}; wait'
    t0 = time.monotonic()
    consume(env.config, "--channel", "c", "--once", "--timeout", "0.3", "--max-attempts", "1",
            "--", "sh", "-c", script)
    assert time.monotonic() - t0 < 5
    assert harness.wait_for(lambda: gone(int(pidfile.read_text())), 2, what="child killed")
    (dead,) = env.store.messages("c", state="dead")
    assert env.store.failures(dead).reason == "timed out after 0.3s"


# -- processes ------------------------------------------------------------------


@pytest.mark.process
def test_a_consumer_killed_mid_command_leaves_the_message_for_the_next_run(env):
    env.store.put("c", "K1", b"kill me", priority=5, client="h")
    marker, pidfile = env.out / "slept", env.out / "pid"
    script = (f'if [ ! -e {q(marker)} ]; then touch {q(marker)}; echo $$ > {q(pidfile)}; '
              'sleep 30; fi; '
              f'cat > {q(env.out)}/"$DROPR_ID"; echo "$DROPR_ATTEMPT" > {q(env.out)}/attempt')
    args = ["--channel", "c", "--consumer", "k", "--once", "--", "sh", "-c", script]
    proc = start(env.config, env.tmp / "first.log", *args)
    orphan = None
    try:
        harness.wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10,
                         what="command started")
        orphan = int(pidfile.read_text())
        assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
        m = env.store.get("c", "K1")
        assert (m.path.parent.name, m.path.parent.parent.name) == ("c", "k")  # still in work/k/c/
    finally:
        stop(proc, signal.SIGKILL)
        if orphan:
            harness.with_group(orphan, signal.SIGKILL)  # the command outlives a killed consumer
    r = consume(env.config, *args)
    assert (env.out / "K1").read_bytes() == b"kill me"
    assert (env.out / "attempt").read_text().strip() == "1"  # the cut-off try was not counted
    assert env.store.count("c", "done") == 1
    assert b"returned 1 messages of an earlier run" in r.stderr


@pytest.mark.process
def test_a_second_consumer_with_the_same_name_refuses_to_start(env):
    log = env.tmp / "first.log"
    proc = start(env.config, log, "--channel", "c", "--consumer", "solo", "--", "true")
    try:
        harness.wait_for(lambda: b"consuming channel c" in log.read_bytes(), 10,
                         what="first consumer")
        r = consume(env.config, "--channel", "c", "--consumer", "solo", "--once", "--", "true",
                    check=False)
        assert r.returncode == 1 and b"consumer solo is already running" in r.stderr
    finally:
        assert stop(proc) == 0


@pytest.mark.process
def test_sigterm_lets_the_running_command_finish_then_stops(env):
    env.store.put("c", "T1", b"first", priority=5, client="h")
    env.store.put("c", "T2", b"second", priority=5, client="h")
    started = env.out / "started"
    script = f'touch {q(started)}; sleep 0.5; cat > {q(env.out)}/"$DROPR_ID"'
    proc = start(env.config, env.tmp / "consume.log", "--channel", "c", "--", "sh", "-c", script)
    try:
        harness.wait_for(started.exists, 10, what="command started")
    finally:
        assert stop(proc) == 0
    assert (env.out / "T1").read_bytes() == b"first"
    assert env.store.count("c", "done") == 1 and env.store.count("c") == 1  # T2 waits


@pytest.mark.process
def test_a_second_sigterm_kills_the_command_and_puts_the_message_back_uncounted(env):
    env.store.put("c", "S1", b"x", priority=5, client="h")
    pidfile = env.out / "pid"
    script = f'echo $$ > {q(pidfile)}; sleep 30'
    proc = start(env.config, env.tmp / "consume.log", "--channel", "c", "--", "sh", "-c", script)
    try:
        harness.wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10,
                         what="command started")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the first signal alone must not stop the command
        assert proc.poll() is None and not gone(int(pidfile.read_text()))
    finally:
        assert stop(proc) == 0
    assert gone(int(pidfile.read_text()))
    (m,) = env.store.messages("c")
    assert env.store.failures(m) == Failures()
    assert "S1 released, attempt 1 interrupted" in (env.tmp / "consume.log").read_text()


@pytest.mark.parametrize("args, message", [
    (["--channel", "c"], b"no command given"),
    (["--channel", "../c", "--", "true"], b"bad channel"),
    (["--channel", "c", "--", "/no/such/command"], b"not found or not executable"),
    (["--channel", "c", "--batch", "0", "--", "true"], b"--batch must be at least 1"),
])
@pytest.mark.process
def test_usage_errors_exit_2_and_change_nothing(env, args, message):
    env.store.put("c", "U1", b"x", priority=5, client="h")
    r = consume(env.config, "--once", *args, check=False)
    assert r.returncode == 2 and message in r.stderr
    assert env.store.count("c") == 1 and list((env.store.root / "work").iterdir()) == []


# -- the store's side, in one process ----------------------------------------------


def test_claims_skip_a_failed_message_until_its_not_before(tmp_path):
    now = [1000.0]
    store = Store(tmp_path, fsync=False, clock=lambda: now[0])
    store.put("c", "A", b"a", priority=5, client="h")
    store.put("c", "B", b"b", priority=5, client="h")
    (a,) = store.claim("c", "w")
    store.retry(a, Failures(1, 1010.0, "exit status 1"))
    assert [m.id for m in store.claim("c", "w", limit=5)] == ["B"]
    now[0] = 1010.0
    (a,) = store.claim("c", "w")
    assert a.id == "A" and store.failures(a) == Failures(1, 1010.0, "exit status 1")
    store.ack(a)
    assert store.failures(a) == Failures()


def test_failures_left_by_a_consumer_that_died_between_two_renames_are_settled(tmp_path):
    store = Store(tmp_path, fsync=False)
    for mid, state in (("D", "dead"), ("K", "done")):
        store.put("c", mid, b"x", priority=5, client="h")
        (m,) = store.claim("c", "w")
        store.retry(m, Failures(2, 0.0, f"reason {mid}"))
        (m,) = store.claim("c", "w")
        # the consumer died after the message's rename, before settling its failures
        (tmp_path / state / "c").mkdir(parents=True, exist_ok=True)
        os.rename(m.path, tmp_path / state / "c" / m.path.name)
    assert store.tidy_failures("c") == 2
    (dead,) = store.messages("c", state="dead")
    assert store.failures(dead) == Failures(2, 0.0, "reason D")
    assert store.failures(store.get("c", "K")) == Failures()
    assert store.count("c", "dead") == 1
