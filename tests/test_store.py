"""The filesystem store: create-if-absent publication, duplicates across the
message's whole life (queue, work, done), order, claims and acks."""

import os

import pytest

from dropr import Store, ValidationError
from dropr.errors import NotFound, TooLarge


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "server", fsync=True)


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_message_is_stored_once_over_its_whole_life(store):
    assert store.put("c", "ID1", b"body", priority=5, client="h") == "stored"
    assert store.put("c", "ID1", b"body", priority=5, client="h") == "duplicate"
    (m,) = store.claim("c", "worker-a")
    assert store.put("c", "ID1", b"body", priority=5, client="h") == "duplicate"
    store.ack(m)
    assert store.put("c", "ID1", b"body", priority=5, client="h") == "duplicate"
    assert store.count("c") == 0 and store.count("c", "done") == 1
    assert tree(store.root) == ["done/c/5.ID1"]


def test_messages_in_priority_then_arrival_order(store):
    for i, prio in enumerate([5, 1, 5, 9, 1]):
        store.put("c", f"Z{9 - i}", f"m{i}".encode(), priority=prio, client="h")
        # arrival is the file's modification time; make each arrival distinct
        path = store.root / "queue" / "c" / f"{prio}.Z{9 - i}"
        os.utime(path, ns=(i * 10**9, i * 10**9))
    got = [m.read() for m in store.messages("c")]
    assert got == [b"m1", b"m4", b"m0", b"m2", b"m3"]
    assert [m.read() for m in store.messages("c", limit=2)] == [b"m1", b"m4"]


def test_message_metadata_and_body(store, tmp_path):
    body = os.urandom(100_000)
    store.put("orders", "ABC", body, priority=2, client="shop-1")
    m = store.get("orders", "ABC")
    assert (m.id, m.channel, m.priority, m.client, m.size) == ("ABC", "orders", 2, "shop-1", len(body))
    assert m.read() == body and store.channels() == ["orders"]
    with m.open() as f:
        assert f.read() == body


def test_too_large_leaves_nothing(store):
    with pytest.raises(TooLarge):
        store.put("c", "BIG", b"x" * 11, priority=5, client="h", limit=10)
    assert tree(store.root) == []


@pytest.mark.parametrize("channel, mid", [("../x", "A"), ("c", "a/b"), ("c", ".."), ("", "A")])
def test_bad_names_are_refused(store, channel, mid):
    with pytest.raises(ValidationError):
        store.put(channel, mid, b"x", priority=5, client="h")
    assert tree(store.root) == []


def test_release_returns_claim_and_not_found(store):
    store.put("c", "A", b"x", priority=5, client="h")
    (m,) = store.claim("c", "w")
    store.release(m)
    assert store.count("c") == 1
    with pytest.raises(NotFound):
        store.get("c", "B")


def test_expiring_done_ignores_a_stray_file_beside_the_channels(store):
    store.put("c", "OLD", b"x", priority=5, client="h")
    (m,) = store.messages("c")
    store.ack(m)
    (store.root / "done" / "stray.txt").write_text("not a channel")
    assert store.expire_done(0, now=10**12) == 1
    assert (store.root / "done" / "stray.txt").exists()
