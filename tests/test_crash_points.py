"""Crash points, for real: a process is SIGKILLed right after one rename, link,
fsync or unlink (dropr.faults, DROPR_CRASH_AT), the processes are started
again, and every message that ``put()`` returned is then stored exactly once,
byte for byte, with nothing left in ``tmp/`` or ``active/``.

One test per entry of :data:`dropr.faults.CRASH_POINTS` (the table in
docs/reliability.md names them). Producer, sender, retry-scanner and reaper
crashes share one receiver; a receiver crash gets a receiver of its own whose
workers inherit the crash variables, and ``DROPR_CRASH_MARK`` makes exactly
one of them die, once. Two crashes run inside the whole droprd tree.
"""

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dropr import config as config_mod
from dropr.client import Client
from dropr.faults import CRASH_POINTS
from dropr.ids import IdGenerator
from dropr.reaper.reaper import Reaper
from dropr.retry_scanner.scanner import RetryScanner
from dropr.spool import Spool, SpoolName
from dropr.store import Store
from tests.supervisor.conftest import DROPRD, Droprd
from tests.support import harness

pytestmark = pytest.mark.process

KILLED = -signal.SIGKILL
#: A day ahead: every stale file is stale, every deferral due, no message too old.
DAY = 86400.0
BODIES = (b"", b"small message\n", os.urandom(200_000))
FSYNC = {"client": {"fsync": True}, "receiver": {"fsync": True},
         "reaper": {"tmp_max_age": 1.0}, "retry": {"interval": 0.05}}


def ahead():
    return time.time() + DAY


def boot_ahead():
    """The boot clock a day ahead: the retry scanner's waits run on it."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) + DAY


def clean_environ():
    return {k: v for k, v in os.environ.items() if not k.startswith("DROPR_CRASH_")}


def crash_env(point, *, after=1, mark=None):
    env = clean_environ()
    env.update(DROPR_CRASH_AT=point, DROPR_CRASH_AFTER=str(after))
    if mark is not None:
        env["DROPR_CRASH_MARK"] = str(mark)
    return env


def channel_of(point):
    """A channel of the test's own in the shared store."""
    return point.replace(".", "-").replace("_", "-") + "-" + secrets.token_hex(3)


class Case:
    """One crash test's spool and config; its peer is ``port`` and, unless it
    runs a receiver of its own, its store is the shared one."""

    def __init__(self, root, port, point, *, store=None):
        self.root, self.point, self.channel = root, point, channel_of(point)
        self.sections = {k: dict(v) for k, v in FSYNC.items()}
        if store is not None:
            self.sections["receiver"]["store"] = str(store)
        self.path = harness.write_config(root, port=port, sections=self.sections)
        self.config = config_mod.load(self.path)
        self.spool = Spool(self.config.client.spool, fsync=True).create()
        self.expected = {}

    def repoint(self, port):
        """Address the peer at ``port`` from now on (a peer that was down is up)."""
        harness.write_config(self.root, port=port, sections=self.sections)
        self.config = config_mod.load(self.path)

    def put(self, bodies=BODIES):
        client = Client(self.config)
        for body in bodies:
            self.expected[client.put(body, "local", channel=self.channel)] = body

    def put_expired(self):
        """A message whose time ran out: the sender gives up on it (Spool.to_dead)."""
        name = SpoolName(5, IdGenerator()(), "local", self.channel,
                         expires_ms=int(time.time() * 1000) - 1000)
        self.spool.put(b"too late", name)
        return name

    def dropr(self, *args, env=None, input=None):
        return subprocess.run([*harness.DROPR, "--config", str(self.path), *args], env=env,
                              input=input, capture_output=True, timeout=60)

    def crash(self, *args, point=None, after=1):
        """Run ``dropr ARGS`` so that it dies at the crash point; fail if it does not."""
        result = self.dropr(*args, env=crash_env(point or self.point, after=after))
        assert result.returncode == KILLED, (result.returncode, result.stderr.decode()[-2000:])
        return result

    def run_pass(self, kind, point):
        """One reaper or retry-scanner pass, a day ahead, in a process that dies at ``point``."""
        code = ("import sys, time\n"
                "from dropr import config\n"
                "from dropr.reaper.reaper import Reaper\n"
                "from dropr.retry_scanner.scanner import RetryScanner\n"
                f"c = config.load({str(self.path)!r})\n"
                # A day ahead on both clocks: the scanner waits on the boot clock.
                + (f"{kind}(c, clock=lambda: time.time() + {DAY}).open().reap()\n"
                   if kind == "Reaper" else
                   f"{kind}(c, clock=lambda: time.time() + {DAY}, boottime=lambda: "
                   f"time.clock_gettime(time.CLOCK_BOOTTIME) + {DAY}).open().scan()\n"))
        result = subprocess.run([sys.executable, "-c", code], env=crash_env(point),
                                capture_output=True, timeout=60)
        assert result.returncode == KILLED, (result.returncode, result.stderr.decode()[-2000:])

    def recover(self):
        """Start again what died: a sender (which returns orphaned claims to queue/),
        a retry-scanner pass (probes, brings back deferrals), a sender again, and
        a reaper pass that finds every leftover stale."""
        self.send_once()
        RetryScanner(self.config, clock=ahead, boottime=boot_ahead).open().scan()
        self.send_once()
        Reaper(self.config, clock=ahead).open().reap()

    def send_once(self):
        """``dropr send --once``, with no crash asked for."""
        result = self.dropr("send", "--once", env=clean_environ())
        assert result.returncode == 0, result.stderr.decode()[-2000:]

    def assert_settled(self, dead=()):
        """Every expected message stored exactly once and byte-identical; the
        spool empty but for ``dead``; nothing in either ``tmp/`` or in ``active/``."""
        store = Store(self.config.receiver.store, fsync=False)
        stored = [m for state in ("queue", "done")
                  for m in store.messages(self.channel, state=state)]
        ids = [m.id for m in stored]
        assert len(ids) == len(set(ids)), f"stored twice: {sorted(ids)}"
        assert {m.id: digest(m.read()) for m in stored} == {
            i: digest(b) for i, b in self.expected.items()}
        assert os.listdir(store.root / "tmp") == []
        assert os.listdir(self.spool.dirs["tmp"]) == []
        assert os.listdir(self.spool.dirs["active"]) == []
        # A sender that got through to a peer marked down leaves a note for the
        # next retry scan (to requeue the rest of its backlog): not a leftover.
        assert [p for p in os.listdir(self.spool.peers_dir)
                if p.startswith(".") and not p.startswith(".revived-")] == []
        counts = self.spool.counts()
        assert counts == {"queue": 0, "active": 0, "deferred": 0, "hold": 0, "sent": 0,
                          "dead": len(dead)}, counts
        for name in dead:
            assert self.spool.reason(name).strip() == "expired"


def digest(body):
    return hashlib.sha256(body).hexdigest()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """(port, store) of one receiver for the tests that crash something else."""
    root = tmp_path_factory.mktemp("shared")
    path = harness.write_config(root, sections=FSYNC)
    receiver = harness.Receiver(path, env=clean_environ()).start()
    yield int(receiver.config.receiver.bind.rpartition(":")[2]), receiver.config.receiver.store
    receiver.stop()
    harness.remove_queues(root / "client")


@pytest.fixture
def case_for(tmp_path, shared):
    cases = []

    def make(point, *, port=None, own_store=False):
        case = Case(tmp_path, port or shared[0], point,
                    store=None if own_store else shared[1])
        cases.append(case)
        return case
    yield make
    for case in cases:
        harness.remove_queues(case.config.client.spool)


# -- the put path -------------------------------------------------------------

PUT = [p for p in CRASH_POINTS if p.startswith("put.")]
BEFORE_RENAME = {"put.after_tmp_write", "put.after_fsync"}


@pytest.mark.parametrize("point", PUT)
def test_producer_killed_at_each_step_of_put(case_for, point):
    case = case_for(point)
    body = BODIES[2]
    result = case.dropr("put", "--peer", "local", "--channel", case.channel,
                        env=crash_env(point), input=body)
    assert result.returncode == KILLED and result.stdout == b""  # no id was ever promised
    queued = case.spool.names("queue")
    if point in BEFORE_RENAME:
        assert queued == [] and len(os.listdir(case.spool.dirs["tmp"])) == 1
    else:
        # The id never reached the caller, but the message is whole and will go.
        assert len(queued) == 1
        assert (case.spool.dirs["queue"] / str(queued[0])).read_bytes() == body
        case.expected[queued[0].id] = body
    case.recover()
    case.assert_settled()


#: point -> crash at its N-th hit: mid-batch where the point is met per message.
PUT_MANY = {"put_many.after_tmp_write": 2, "put_many.after_flush": 1,
            "put_many.after_rename": 2, "put_many.after_dir_fsync": 1}


@pytest.mark.parametrize("point", list(PUT_MANY))
def test_producer_killed_at_each_step_of_a_bulk_put(case_for, point, tmp_path):
    case = case_for(point)
    files = []
    for i, body in enumerate(BODIES):
        files.append(tmp_path / f"body-{i}")
        files[-1].write_bytes(body)
    result = case.dropr("put", "--peer", "local", "--channel", case.channel, *map(str, files),
                        env=crash_env(point, after=PUT_MANY[point]))
    assert result.returncode == KILLED and result.stdout == b""  # no id was ever promised
    queued = case.spool.names("queue")
    left = os.listdir(case.spool.dirs["tmp"])
    # Each message whole in queue/ or only in tmp/: never in both, never cut off.
    assert len(queued) + len(left) == {"put_many.after_tmp_write": 2}.get(point, len(BODIES))
    assert not {str(n) for n in queued} & set(left)
    bodies = {b for b in BODIES}
    for name in queued:
        body = (case.spool.dirs["queue"] / str(name)).read_bytes()
        assert body in bodies
        case.expected[name.id] = body
    if point == "put_many.after_rename":
        assert len(queued) == 2
    elif point in ("put_many.after_tmp_write", "put_many.after_flush"):
        assert queued == []
    case.recover()
    case.assert_settled()


# -- the send path ------------------------------------------------------------

#: point -> (crash at the N-th hit, whether the peer is down during the crash)
SEND = {
    "send.after_new_active_dir": (1, False),
    "send.after_claim": (2, False),
    "send.after_upload": (1, False),
    "send.after_move_sent": (2, False),
    "send.after_mark_down_write": (1, True),
    "send.after_mark_down": (1, True),
    "send.after_defer": (2, True),
}


@pytest.mark.parametrize("point", list(SEND))
def test_sender_killed_at_each_step_of_a_batch(case_for, point, shared):
    after, peer_down = SEND[point]
    case = case_for(point, port=harness.free_port() if peer_down else None)
    case.put()
    case.crash("send", "--once", after=after)
    if point == "send.after_new_active_dir":
        assert [p.name for p in case.spool.dirs["active"].iterdir()][0].startswith(".new-")
    else:
        assert case.spool.count("active") + case.spool.count("deferred") > 0
    if peer_down:
        case.repoint(shared[0])
    case.recover()
    case.assert_settled()


@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p.startswith("dead.")])
def test_sender_killed_while_giving_up_on_a_message(case_for, point):
    case = case_for(point)
    case.put()
    expired = case.put_expired()
    case.crash("send", "--once")
    case.recover()
    case.assert_settled(dead=[expired])


# -- the receiver's store path ------------------------------------------------

#: point -> crash at the N-th hit (2: the second message of the batch)
STORE = {
    "store.after_tmp_write": 1,
    "store.after_tmp_fsync": 2,
    "store.after_link": 2,
    "store.after_publish": 2,
    "store.after_queue_sync": 1,
    "batch.before_answer": 1,
}


@pytest.fixture
def crashing_receiver(tmp_path):
    """Start a receiver for a case whose workers carry the crash variables."""
    started = []

    def start(case, point, after=1):
        mark = tmp_path / "crashed"
        env = crash_env(point, after=after, mark=mark)
        receiver = harness.Receiver(case.path, env=env).start()
        started.append(receiver)
        return receiver, mark
    yield start
    for receiver in started:
        receiver.stop()


@pytest.mark.parametrize("point", list(STORE))
def test_receiver_worker_killed_at_each_step_of_storing(case_for, crashing_receiver, point):
    port = harness.free_port()
    case = case_for(point, port=port, own_store=True)
    _, mark = crashing_receiver(case, point, after=STORE[point])
    case.put()
    case.send_once()
    assert mark.read_text().startswith(point)  # one worker died there; gunicorn made another
    assert case.spool.count("deferred") == len(BODIES)  # no answer: nothing is forgotten
    case.recover()
    case.assert_settled()


def test_receiver_worker_killed_before_answering_a_plain_post(case_for, crashing_receiver):
    point = "messages.before_answer"
    case = case_for(point, port=harness.free_port(), own_store=True)
    receiver, mark = crashing_receiver(case, point)
    url = f"{receiver.url}/v1/channels/{case.channel}/messages"
    body = BODIES[2]

    def post():
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Idempotency-Key": "order-1"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        post()
    assert mark.exists()
    assert post() == 200  # the client tries again: the first copy was durable
    case.expected["order-1"] = body
    Reaper(case.config, clock=ahead).open().reap()
    case.assert_settled()


# -- the retry scanner and the reaper -----------------------------------------

def test_retry_scanner_killed_after_requeueing_one_message(case_for, shared):
    point = "retry.after_requeue"
    case = case_for(point, port=harness.free_port())
    case.put()
    case.send_once()  # the peer is down: all deferred
    assert case.spool.count("deferred") == len(BODIES)
    case.repoint(shared[0])
    case.run_pass("RetryScanner", point)
    assert case.spool.count("queue") == 1 and case.spool.count("deferred") == len(BODIES) - 1
    case.recover()
    case.assert_settled()


@pytest.mark.parametrize("point", ["active.after_return_to_queue", "active.before_remove_dir"])
def test_reaper_killed_while_returning_the_claims_of_a_dead_sender(case_for, point):
    case = case_for(point)
    case.put()
    case.crash("send", "--once", point="send.after_claim", after=len(BODIES))
    assert case.spool.count("active") == len(BODIES)
    case.run_pass("Reaper", point)
    case.recover()
    case.assert_settled()


def test_reaper_killed_after_removing_one_stale_spool_file(case_for):
    point = "reaper.after_unlink"
    case = case_for(point)
    for i in range(2):  # what two producers that died mid-write leave
        (case.spool.dirs["tmp"] / f"5.leftover{i}.local.x").write_bytes(b"half")
    case.put()
    case.run_pass("Reaper", point)
    assert len(os.listdir(case.spool.dirs["tmp"])) == 1
    case.recover()
    case.assert_settled()


def test_reaper_killed_after_removing_one_stale_store_file(case_for):
    point = "reaper.after_store_unlink"
    case = case_for(point, port=harness.free_port(), own_store=True)
    store = Store(case.config.receiver.store)
    for i in range(2):  # what two receiver workers that died mid-upload leave
        (store.root / "tmp" / f"leftover{i}.abc").write_bytes(b"half")
    case.run_pass("Reaper", point)
    assert len(os.listdir(store.root / "tmp")) == 1
    Reaper(case.config, clock=ahead).open().reap()
    case.assert_settled()


# -- inside the whole tree ----------------------------------------------------

class CrashingTree(Droprd):
    """droprd whose processes inherit the crash variables."""

    def __init__(self, case, env):
        sections = dict(case.sections, workers={"sender": 1, "retry_scanner": 1, "reaper": 1},
                        supervisor={"tick": 0.05, "backoff_base": 0.05, "backoff_cap": 0.5})
        port = int(case.config.peers["local"].url.rpartition(":")[2])
        super().__init__(case.path, port=port, sections=sections)
        self.rewrite({})
        self.env = env

    def run(self, *args, timeout=30):
        return subprocess.run([*DROPRD, "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)


@pytest.mark.parametrize("point", ["retry.after_requeue", "active.after_return_to_queue"])
def test_worker_of_the_tree_killed_is_replaced_and_delivers_everything(
        case_for, shared, tmp_path, point):
    case = case_for(point, port=harness.free_port())
    case.put()
    if point == "retry.after_requeue":
        case.send_once()  # the peer is down: all deferred
        assert case.spool.count("deferred") == len(BODIES)
    else:
        case.crash("send", "--once", point="send.after_claim", after=len(BODIES))
        assert case.spool.count("active") == len(BODIES)
    case.repoint(shared[0])
    mark = tmp_path / "crashed"
    tree = CrashingTree(case, crash_env(point, mark=mark))
    try:
        tree.start()
        harness.wait_for(mark.exists, 15, what=f"a worker to die at {point}")
        store = Store(case.config.receiver.store, fsync=False)
        harness.wait_for(lambda: store.count(case.channel) == len(BODIES)
                         and case.spool.count("queue") + case.spool.count("active") == 0,
                         20, what="every message delivered")
        assert tree.run("stop").returncode == 0
    finally:
        killed = tree.cleanup()
    assert not killed, f"processes left running: {killed}\n{tree.log_tail()}"
    Reaper(case.config, clock=ahead).open().reap()
    case.assert_settled()


# -- the list itself ----------------------------------------------------------

def test_every_crash_point_has_a_test_and_a_row_in_the_docs():
    tested = (set(PUT) | set(PUT_MANY) | set(SEND) | set(STORE) | {"messages.before_answer",
              "retry.after_requeue", "active.after_return_to_queue",
              "active.before_remove_dir", "reaper.after_unlink", "reaper.after_store_unlink"}
              | {p for p in CRASH_POINTS if p.startswith("dead.")}
              # tests/legacy/test_takeover.py: test_a_crash_at_each_step_of_a_move_...
              | {p for p in CRASH_POINTS if p.startswith("legacy.")}
              # tests/test_operator.py: test_a_crash_in_hold_or_release_..., ..._store_requeue_...
              | {"hold.after_move", "release.after_move", "store.after_requeue"})
    assert tested == set(CRASH_POINTS)
    docs = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    missing = [p for p in CRASH_POINTS if f"`{p}`" not in docs]
    assert not missing, f"docs/reliability.md lacks {missing}"


def test_an_unknown_crash_point_is_refused_at_start(tmp_path):
    env = crash_env("put.after_nothing")
    result = subprocess.run([sys.executable, "-c", "import dropr.faults"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "not a crash point" in result.stderr


# -- holes found on the way ---------------------------------------------------

def test_a_duplicate_of_an_acknowledged_message_leaves_no_copy_if_the_receiver_dies(tmp_path):
    """The receiver used to link a re-sent message into queue/ and only then see
    it in done/; killed in between, it left a second copy for consumers."""
    store = Store(tmp_path / "server")
    store.put("orders", "order-1", b"once", priority=5, client="c")
    store.ack(store.messages("orders")[0])
    code = ("import sys\nfrom dropr.store import Store\n"
            "s = Store(sys.argv[1])\n"
            "print(s.put('orders', 'order-1', b'once', priority=5, client='c'))\n")
    result = subprocess.run([sys.executable, "-c", code, str(store.root)], text=True,
                            env=crash_env("store.after_link"), capture_output=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "duplicate\n"), result.stderr
    assert store.count("orders") == 0 and store.count("orders", "done") == 1


def test_a_claim_directory_left_without_its_lock_is_emptied_and_removed(tmp_path):
    """A reaper killed while removing a claim directory may have removed its
    .lock already; such a directory used to stay in active/ for good."""
    config = config_mod.load(harness.write_config(tmp_path))
    spool = Spool(config.client.spool, fsync=False).create()
    name = SpoolName(5, IdGenerator()(), "local", "common")
    spool.put(b"x", name)
    half_removed = spool.dirs["active"] / "sender-1.4242"
    half_removed.mkdir()
    os.rename(spool.dirs["queue"] / str(name), half_removed / str(name))
    assert Reaper(config).open().reap().recovered == 1
    assert os.listdir(spool.dirs["active"]) == [] and spool.names("queue") == [name]


def test_new_spool_and_store_trees_are_synced_once_when_made(tmp_path):
    """With fsync on, the directories made at first start are synced into their
    parents, or a reboot could take queue/ away with what put() synced into it.
    An OS crash cannot be caused here, so a child process records its fsyncs."""
    code = ("import os, sys\nfrom dropr.spool import Spool\nfrom dropr.store import Store\n"
            "real = os.fsync\n"
            "os.fsync = lambda fd: print(os.readlink(f'/proc/self/fd/{fd}')) or real(fd)\n"
            "for _ in range(2):\n"
            "    Spool(sys.argv[1] + '/client').create(); Store(sys.argv[1] + '/server')\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], text=True,
                            capture_output=True, timeout=30)
    root = str(tmp_path)
    assert result.stdout.split() == [f"{root}/client", root, f"{root}/server", root], \
        result.stderr  # the second time round, nothing is made and nothing synced
