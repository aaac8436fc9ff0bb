"""Every state change against the states an OS crash or a power loss may leave
on disk (tests/support/crashstates.py has the rules; docs/reliability.md the figures).

Each scenario runs the real code on a real tree while a Recorder notes its
file-system operations; then every crash state the rules allow is written
out, recovered the way dropr recovers after a reboot (the next sender, the
reaper, the receiver's start, the consumer's start, a client sending again
what it got no answer for), and checked:

- every message that put() returned for, or that was answered ``stored`` or
  ``duplicate``, is present once, whole;
- no message is in two states (folders) at once;
- no half-written message is ever delivered, or found where it would be;
- what an operator or a consumer reads beside a message (a dead reason, a
  failures file, a peer marker) is whole.

The other host of a scenario (the receiver, for a client scenario) does not
crash; what it received is marked on the recording as it happens.

The server's scenarios run twice: under the rules, and without rule 3 (any
subset of the unsynced entry operations may persist), since everything the
store promises is synced. The client's sender syncs none of its moves, by
design, and relies on rule 3: without it a move to dead/ could persist while
the claim before it does not (a message in queue/ and dead/ at once).

A new move gets a scenario here: build the tree before the Recorder, run the
move under it, ``rec.mark(("promised", id))`` where the code promises
something, and explore with :func:`client_check` or :func:`store_check` (or
a check of its own for what the move adds: held messages, a PHP spool taken
over, a bulk put).
"""

import collections
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from falcon import testing

from dropr import config as config_mod
from dropr.client import Client
from dropr.errors import PeerError
from dropr.receiver import create_app
from dropr.reaper.reaper import Reaper
from dropr.retry_scanner.scanner import RetryScanner
from dropr.sender.sender import Sender
from dropr.spool import Spool, SpoolName
from dropr.store import DUPLICATE, STORED, Failures, Store
from dropr.store.files.format import entry_name, read_message
from dropr.spool.files import REASON_SUFFIX
from tests.receiver import forms
from tests.support import harness
from tests.support.crashrecord import Recorder
from tests.support.crashstates import explore

#: Recovery runs a month after the crash: every leftover is stale, every deferral due.
LATER = 30 * 86400.0
CLIENT_KEYS = {"client": {"fsync": True, "notify_max": 0}, "receiver": {"fsync": True},
               "sender": {"sent_retention": 0}}
#: Recovery itself does not crash here: it needs no flush to disk, and runs faster without.
RECOVERY_KEYS = {**CLIENT_KEYS, "client": {"fsync": False, "notify_max": 0},
                 "receiver": {"fsync": False}}


def later():
    return time.time() + LATER


def report(scenario, figures):
    """The figures of a scenario, shown with ``pytest -s`` (docs/reliability.md)."""
    print(f"\n{scenario}: {figures}")
    assert figures.checked > figures.points // 2, f"{scenario}: too few states: {figures}"


# -- the client host --------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path):
    """Where crash states are written: a tmpfs when there is one (hundreds of
    small trees are made and removed), else the test's own folder."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tmp_path
    path = Path(tempfile.mkdtemp(prefix="dropr-crash-states.", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Host:
    """One host's tree twice: ``tmp_path/a/`` where the scenario runs under a
    Recorder, ``scratch/b/`` where each crash state is written and recovered."""

    def __init__(self, tmp_path, scratch):
        (tmp_path / "a").mkdir()
        (scratch / "b").mkdir()
        self.config_a = config_mod.load(harness.write_config(tmp_path / "a",
                                                             sections=CLIENT_KEYS))
        self.config_b = config_mod.load(harness.write_config(scratch / "b",
                                                             sections=RECOVERY_KEYS))
        self.spool = Spool(self.config_a.client.spool, fsync=True).create()
        self.store = Store(self.config_a.receiver.store, fsync=True)

    def explore(self, recorder, check, name, root, *, ordered=True):
        figures = explore(recorder, check, root, seed=name, ordered=ordered)
        report(name + ("" if ordered else " (unordered)"), figures)
        return figures


class Peer:
    """The receiving host as a sender's transport sees it: it checks that every
    body it gets is whole, answers per message, and marks ``("received", id)``
    on the recording for what it keeps (its disk does not crash)."""

    def __init__(self, bodies, *, recorder=None, received=(), reject=(), down=False):
        self.bodies, self.recorder = bodies, recorder
        self.received, self.reject, self.down = set(received), set(reject), down

    def prepare(self, part):
        return None  # nothing made ahead: send() reads each file as it is sent

    def send(self, part, *, form=None):
        if self.down:
            raise PeerError("connection refused")
        results = {}
        for name, path, _ in part:
            sent = Path(path).read_bytes()  # claims hand out string paths
            assert sent == self.bodies[name.id], f"{name.id} was sent half-written"
            if name.id in self.reject:
                results[name.id] = {"status": "rejected", "error": "channel closed"}
                continue
            results[name.id] = {"status": DUPLICATE if name.id in self.received else STORED}
            self.received.add(name.id)
            if self.recorder is not None:
                self.recorder.mark(("received", name.id))
        return results

    def close(self):
        pass


class SenderTo(Sender):
    """A Sender whose peer is a :class:`Peer` instead of an HTTP transport."""

    def __init__(self, config, peer, **kwargs):
        super().__init__(config, **kwargs)
        self.peer = peer

    def _transport(self, peer):
        return self.peer


def send(config, peer, clock=time.time):
    sender = SenderTo(config, peer, clock=clock).open()
    try:
        sender.drain()
    finally:
        sender.close()


def recover_client(config, bodies, marks, *, reject=()):
    """What runs after the reboot: a sender starts (returning orphaned claims)
    and delivers what is due, then a reaper pass."""
    received = {key[1] for key in marks if key[0] == "received"}
    peer = Peer(bodies, received=received, reject=reject)
    send(config, peer, clock=later)
    Reaper(config, clock=later).open().reap()
    return peer.received


def check_spool(root, bodies, promised, received):
    spool = Spool(root, fsync=False)
    where = collections.defaultdict(list)
    for state in ("queue", "deferred", "sent", "dead"):
        for name in spool.names(state):
            where[name.id].append(spool.dirs[state] / str(name))
    for d in spool.active_dirs():
        for name in spool.names(None, directory=d):
            where[name.id].append(d / str(name))
    for message_id, paths in where.items():
        assert len(paths) == 1, f"{message_id} in two states: {paths}"
        assert paths[0].read_bytes() == bodies[message_id], f"{paths[0]} is not whole"
    for message_id in promised:
        assert message_id in where or message_id in received, f"{message_id} is lost"
    for reason in spool.dirs["dead"].glob("*" + REASON_SUFFIX):
        text = reason.read_text()
        assert text.endswith("\n") and text.strip(), f"{reason.name} is {text!r}"
    for marker in spool.peers_dir.iterdir():
        if not marker.name.startswith("."):  # .revived-PEER notes are empty by design
            json.loads(marker.read_text())  # a marker read back must be whole


def client_check(host, bodies, initial=(), reject=()):
    def check(root, marks):
        config = host.config_b
        promised = set(initial) | {k[1] for k in marks if k[0] == "promised"}
        received = recover_client(config, bodies, marks, reject=reject)
        check_spool(config.client.spool, bodies, promised, received)
    return check


def fill(spool, bodies, channel="c"):
    """Put ``bodies`` (id -> bytes) into the spool, durably, before a recording."""
    names = {}
    for message_id, body in bodies.items():
        names[message_id] = SpoolName(5, message_id, "local", channel)
        spool.put(body, names[message_id])
    return names


def test_put_survives_every_crash_state(tmp_path, scratch):
    host = Host(tmp_path, scratch)
    client = Client(host.config_a, new_id=iter(["P1", "P2"]).__next__)
    bodies = {"P1": b"first message\n", "P2": os.urandom(5000)}
    with Recorder(host.config_a.client.spool) as rec:
        for message_id, body in bodies.items():
            assert client.put(body, "local") == message_id
            rec.mark(("promised", message_id))
    host.explore(rec, client_check(host, bodies), "put", host.config_b.client.spool)


def test_a_claimed_batch_delivered_survives_every_crash_state(tmp_path, scratch):
    """A sender claims three messages; the peer stores two and rejects one,
    which goes to dead/ with its reason."""
    host = Host(tmp_path, scratch)
    bodies = {"B1": b"one", "B2": os.urandom(3000), "B3": b"three\n"}
    fill(host.spool, bodies)
    with Recorder(host.config_a.client.spool) as rec:
        send(host.config_a, Peer(bodies, recorder=rec, reject={"B3"}))
    assert host.spool.count("dead") == 1
    host.explore(rec, client_check(host, bodies, initial=bodies, reject={"B3"}),
                 "claim and batch delivered", host.config_b.client.spool)


def test_a_peer_down_and_the_retry_scanner_survive_every_crash_state(tmp_path, scratch):
    """The peer is down: the batch is deferred and the peer marked; then the
    retry scanner, a minute later, brings the messages back to queue/."""
    host = Host(tmp_path, scratch)
    bodies = {"R1": b"retry me", "R2": b"me too"}
    fill(host.spool, bodies)
    with Recorder(host.config_a.client.spool) as rec:
        send(host.config_a, Peer(bodies, down=True))
        RetryScanner(host.config_a, clock=lambda: time.time() + 60,
                     boottime=lambda: time.clock_gettime(time.CLOCK_BOOTTIME) + 60,
                     probe=lambda *a, **k: (True, "")).open().scan()
    assert host.spool.count("queue") == 2
    host.explore(rec, client_check(host, bodies, initial=bodies), "client retry",
                 host.config_b.client.spool)


def test_requeue_from_dead_survives_every_crash_state(tmp_path, scratch):
    """``dropr spool requeue``: messages the peer rejected go back to queue/."""
    host = Host(tmp_path, scratch)
    bodies = {"D1": b"given up once", "D2": b"and this one", "D3": os.urandom(100)}
    names = fill(host.spool, bodies)
    send(host.config_a, Peer(bodies, reject=set(bodies)))
    assert host.spool.count("dead") == 3
    with Recorder(host.config_a.client.spool) as rec:
        for message_id in bodies:
            host.spool.requeue("dead", names[message_id])
    host.explore(rec, client_check(host, bodies, initial=bodies), "requeue",
                 host.config_b.client.spool)


# -- the server host --------------------------------------------------------------


def store_state(root, bodies):
    """Where each message is in the store at ``root``; checks each is whole."""
    where = collections.defaultdict(list)
    for pattern in ("queue/*/*", "work/*/*/*", "done/*/*", "dead/*/*"):
        for path in root.glob(pattern):
            if path.name.startswith(".") or path.name.endswith(REASON_SUFFIX):
                continue
            message = read_message(path)  # raises on a half-written header
            assert path.name == entry_name(message.priority, message.client, message.id), path
            assert message.read() == bodies[message.id], f"{path} is not whole"
            where[message.id].append(path.relative_to(root))
    for path in [*root.glob("retry/*/*"), *root.glob("dead/*/*" + REASON_SUFFIX)]:
        Failures.decode(path.read_bytes())  # a consumer reads it: it must be whole
    return where


def recover_store(root):
    """The receiver starts, the reaper passes, every consumer starts again."""
    store = Store(root, fsync=False, clock=later)
    store.remove_stale_tmp(0)
    for consumer in sorted(os.listdir(root / "work")):
        store.open_work(consumer).close()
    for channel in store.channels():
        store.tidy_failures(channel)
    return store


def consume_all(store):
    """A consumer at work after the restart: it claims and acks everything."""
    work = store.open_work("after")
    try:
        for channel in store.channels():
            while claimed := store.claim(channel, "after", limit=100):
                for message in claimed:
                    store.ack(message)
    finally:
        work.close()


def store_check(bodies, channel_of, *, initial=(), resend=False, consume=False):
    """Recover, then: the promised present once, nothing twice, all whole. With
    ``resend``, the client then sends again what it got no answer for, and
    every message is present exactly once. With ``consume``, a consumer first
    claims and acks everything there is."""
    def check(root, marks):
        store = recover_store(root)
        if consume:
            consume_all(store)
        promised = set(initial) | {k[1] for k in marks if k[0] == "promised"}
        where = store_state(root, bodies)
        for message_id, paths in where.items():
            assert len(paths) == 1, f"{message_id} in two states: {paths}"
        for message_id in promised:
            assert message_id in where, f"{message_id} is lost"
        if resend:
            for message_id in sorted(set(bodies) - promised):
                # As the receiver stores it: under the client the request came as
                # (loopback: "local"), the dedupe key's client.
                store.put(channel_of[message_id], message_id, bodies[message_id], priority=5,
                          client="local")
            where = store_state(root, bodies)
            assert {i: len(p) for i, p in where.items()} == dict.fromkeys(bodies, 1)
    return check


#: The server's scenarios, under the rules and without rule 3.
RULES = pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])


def server_host(tmp_path, scratch):
    host = Host(tmp_path, scratch)
    return host, host.store.root, host.config_b.receiver.store


@RULES
def test_a_plain_post_survives_every_crash_state(tmp_path, scratch, ordered):
    host, root, crashed = server_host(tmp_path, scratch)
    app = testing.TestClient(create_app(host.config_a, store=host.store))
    bodies = {"K1": b"posted by curl\n"}
    with Recorder(root) as rec:
        for _ in range(2):  # the second time: a client that lost the answer
            r = app.simulate_post("/v1/channels/orders/messages", body=bodies["K1"],
                                  headers={"Idempotency-Key": "K1"})
            assert r.status_code in (200, 201), r.text
            rec.mark(("promised", "K1"))
    host.explore(rec, store_check(bodies, {"K1": "orders"}, resend=True), "plain POST",
                 crashed, ordered=ordered)


@RULES
def test_a_batch_with_a_new_channel_survives_every_crash_state(tmp_path, scratch, ordered):
    host, root, crashed = server_host(tmp_path, scratch)
    host.store.put("old", "OLD", b"there before", priority=5, client="host-1")
    app = testing.TestClient(create_app(host.config_a, store=host.store))
    messages = [("N1", "new", 5, b"first of a new channel"), ("N2", "new", 5, os.urandom(3000)),
                ("O1", "old", 5, b"into an old one")]
    bodies = {m[0]: m[3] for m in messages} | {"OLD": b"there before"}
    channel_of = {m[0]: m[1] for m in messages} | {"OLD": "old"}
    body, _ = forms.batch(messages)
    with Recorder(root) as rec:
        r = app.simulate_post("/v1/batch", body=body, content_type=forms.CONTENT_TYPE)
        assert r.status_code == 200, r.text
        for message_id, result in r.json["results"].items():
            assert result["status"] == STORED
            rec.mark(("promised", message_id))
    host.explore(rec, store_check(bodies, channel_of, initial={"OLD"}, resend=True),
                 "batch with a new channel", crashed, ordered=ordered)


@RULES
def test_a_duplicate_answered_by_the_store_api_survives_every_crash_state(tmp_path, scratch,
                                                                         ordered):
    """Another request linked the message and has not synced yet; this one is
    told ``duplicate`` by Store.put and forgets it."""
    host, root, crashed = server_host(tmp_path, scratch)
    bodies = {"D1": b"sent twice"}
    with Recorder(root) as rec:
        staged = host.store.stage("c", "D1", bodies["D1"], priority=5, client="host-1")
        assert host.store.publish(staged, sync_dir=False) == STORED  # not answered yet
        assert host.store.put("c", "D1", bodies["D1"], priority=5, client="host-1") == DUPLICATE
        rec.mark(("promised", "D1"))
    host.explore(rec, store_check(bodies, {"D1": "c"}), "duplicate from the store API",
                 crashed, ordered=ordered)


def consumer_scenario(tmp_path, scratch, name, settle, ordered):
    """Two stored messages claimed by a consumer, each settled by ``settle(store, m)``."""
    host, root, crashed = server_host(tmp_path, scratch)
    bodies = {"C1": b"for the consumer", "C2": os.urandom(2000)}
    for message_id, body in bodies.items():
        host.store.put("jobs", message_id, body, priority=5, client="host-1")
    with Recorder(root) as rec:
        work = host.store.open_work("w1")
        for message in host.store.claim("jobs", "w1", limit=2):
            settle(host.store, message)
        work.close()
    host.explore(rec, store_check(bodies, dict.fromkeys(bodies, "jobs"), initial=bodies,
                                  consume=True), name, crashed, ordered=ordered)


@RULES
def test_ack_survives_every_crash_state(tmp_path, scratch, ordered):
    consumer_scenario(tmp_path, scratch, "ack", lambda store, m: store.ack(m), ordered)


@RULES
def test_retry_survives_every_crash_state(tmp_path, scratch, ordered):
    consumer_scenario(tmp_path, scratch, "retry", lambda store, m: store.retry(
        m, Failures(1, time.time() + 60, "exit 1: try again")), ordered)


@RULES
def test_bury_survives_every_crash_state(tmp_path, scratch, ordered):
    consumer_scenario(tmp_path, scratch, "bury", lambda store, m: store.bury(
        m, Failures(3, 0.0, "exit 1: given up")), ordered)


@RULES
def test_an_operator_ack_of_a_waiting_message_survives_every_crash_state(tmp_path, scratch,
                                                                         ordered):
    """``dropr store ack``: queue/ straight to done/. A crash between the two
    syncs may keep it under both names; the next claim drops the queue/ one."""
    host, root, crashed = server_host(tmp_path, scratch)
    bodies = {"A1": b"acked by hand", "A2": b"left waiting"}
    for message_id, body in bodies.items():
        host.store.put("jobs", message_id, body, priority=5, client="host-1")
    with Recorder(root) as rec:
        host.store.ack(host.store.get("jobs", "A1"))
    host.explore(rec, store_check(bodies, dict.fromkeys(bodies, "jobs"), initial=bodies,
                                  consume=True), "operator ack", crashed, ordered=ordered)


# -- the explorer itself: it finds what the rules say it must -------------------------


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def explore_plain(tmp_path, scratch, write, check, *, files=()):
    """Explore ``write(root, recorder)`` (plain os calls) on a fresh tree with
    ``tmp/`` (holding ``files``) and ``new/``, checking with ``check(state, marks)``."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    (root / "tmp").mkdir()
    (root / "new").mkdir()
    for name in files:
        (root / "tmp" / name).write_bytes(name.encode())
    with Recorder(root) as rec:
        write(root, rec)
    return explore(rec, check, scratch / root.name, seed="plain")


def whole_if_promised(state, marks):
    if "done" in marks:
        assert (state / "new" / "f").read_bytes() == b"x" * 100, "not whole"


def write_then_rename(*, fsync_file):
    def write(root, rec):
        fd = os.open(root / "tmp" / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, b"x" * 100)
        if fsync_file:
            os.fsync(fd)
        os.close(fd)
        os.rename(root / "tmp" / "f", root / "new" / "f")
        fsync_path(root / "new")
        rec.mark("done")
    return write


def test_the_explorer_finds_a_file_renamed_before_its_data_was_synced(tmp_path, scratch):
    with pytest.raises(AssertionError, match="not whole"):
        explore_plain(tmp_path, scratch, write_then_rename(fsync_file=False), whole_if_promised)
    figures = explore_plain(tmp_path, scratch, write_then_rename(fsync_file=True),
                            whole_if_promised)
    assert figures.checked >= 3


def test_the_explorer_loses_what_is_moved_into_a_folder_whose_parent_was_not_synced(
        tmp_path, scratch):
    def write(root, rec):
        (root / "new" / "sub").mkdir()
        os.rename(root / "tmp" / "g", root / "new" / "sub" / "g")
        fsync_path(root / "new" / "sub")
        fsync_path(root / "tmp")
        rec.mark("done")

    def check(state, marks):
        if "done" in marks:
            assert (state / "new" / "sub" / "g").exists(), "lost"

    with pytest.raises(AssertionError, match="lost"):
        explore_plain(tmp_path, scratch, write, check, files=["g"])


@pytest.mark.parametrize("sync_source, both", [(False, True), (True, False)])
def test_the_explorer_keeps_both_names_only_when_the_source_was_not_synced(
        tmp_path, scratch, sync_source, both):
    """Rule 4: a rename whose destination alone was synced may be under both
    names; once the source is synced too, it is under the new one only."""
    at_end = []

    def write(root, rec):
        os.rename(root / "tmp" / "h", root / "new" / "h")
        fsync_path(root / "new")
        if sync_source:
            fsync_path(root / "tmp")
        rec.mark("end")

    def check(state, marks):
        names = [p.exists() for p in (state / "tmp" / "h", state / "new" / "h")]
        assert any(names), "neither"
        if "end" in marks:
            at_end.append(all(names))

    explore_plain(tmp_path, scratch, write, check, files=["h"])
    assert at_end and any(at_end) is both
