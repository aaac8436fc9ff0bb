"""The spool census behind droprd's metrics (dropr/spool/census.py), on real files."""

import os

from dropr.ids import IdGenerator
from dropr.spool import Spool, SpoolName, census


def put(spool, state, peer, body, *, made=1_000_000.0, message_id=None, directory=None):
    name = SpoolName(5, message_id or IdGenerator(clock=lambda: made)(), peer, "c")
    path = (directory or spool.dirs[state]) / str(name)
    path.write_bytes(body)
    return path


def test_census_counts_each_state_and_peer_and_dates_the_oldest_waiting(tmp_path):
    spool = Spool(tmp_path / "spool", fsync=False).create()
    put(spool, "queue", "a", b"12345", made=2_000_000.0)
    put(spool, "queue", "a", b"1", made=3_000_000.0)
    put(spool, "deferred", "b.x y", b"123", made=1_500_000.0)  # an encoded peer name
    put(spool, "sent", "a", b"12", made=1_000_000.0)  # delivered: not waiting
    dead = put(spool, "dead", "b.x y", b"1234", made=900_000.0)  # given up: not waiting
    dead.with_name(dead.name + ".reason").write_text("rejected\n")  # no message of its own
    active = spool.open_active("sender 1")
    put(spool, "active", "a", b"123456", made=1_800_000.0, directory=active.path)
    foreign = put(spool, "queue", "c", b"x", message_id="php-4711")
    os.utime(foreign, (1_200_000.0, 1_200_000.0))
    (spool.dirs["queue"] / "not-a-message").write_bytes(b"ignored")
    calls = []

    got = census.take(spool, progress=lambda: calls.append(1))
    active.close()
    assert got.counts["queue"] == {"a": 2, "c": 1}
    assert got.sizes["queue"] == {"a": 6, "c": 1}
    assert got.counts["active"] == {"a": 1} and got.sizes["active"] == {"a": 6}
    assert got.counts["deferred"] == {"b.x y": 1}
    assert got.counts["sent"] == {"a": 1} and got.counts["dead"] == {"b.x y": 1}
    assert got.sizes["dead"] == {"b.x y": 4}
    assert got.peers == {"a", "b.x y", "c"}
    assert got.oldest_ms == {"a": 1_800_000_000, "b.x y": 1_500_000_000, "c": 1_200_000_000}
    assert got.oldest_age("a", 1_800_010.0) == 10.0
    assert got.oldest_age("nobody", 1_800_010.0) == 0.0
    assert calls == []  # fewer files than PROGRESS_EVERY


def test_census_calls_progress_while_it_counts_a_deep_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(census, "PROGRESS_EVERY", 10)
    spool = Spool(tmp_path / "spool", fsync=False).create()
    new_id = IdGenerator()
    for _ in range(35):
        put(spool, "queue", "a", b"x", message_id=new_id())
    calls = []
    assert census.take(spool, progress=lambda: calls.append(1)).counts["queue"] == {"a": 35}
    assert len(calls) == 3
