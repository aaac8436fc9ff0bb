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
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != ".format")


def test_a_message_is_stored_once_over_its_whole_life(store):
    assert store.put("c", "ID1", b"body", priority=5, client="h") == "stored"
    assert store.put("c", "ID1", b"body", priority=5, client="h") == "duplicate"
    (m,) = store.claim("c", "worker-a")
    assert store.put("c", "ID1", b"body", priority=5, client="h") == "duplicate"
    store.ack(m)
    assert store.put("c", "ID1", b"body", priority=5, client="h") == "duplicate"
    assert store.count("c") == 0 and store.count("c", "done") == 1
    assert tree(store.root) == ["done/c/5.h@ID1"]


def test_messages_in_priority_then_arrival_order(store):
    for i, prio in enumerate([5, 1, 5, 9, 1]):
        store.put("c", f"Z{9 - i}", f"m{i}".encode(), priority=prio, client="h")
        # arrival is the file's modification time; make each arrival distinct
        path = store.root / "queue" / "c" / f"{prio}.h@Z{9 - i}"
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


# -- duplicates are judged per client -------------------------------------------

def test_one_client_cannot_pre_empt_anothers_message_id(store):
    assert store.put("orders", "order-1234", b"from a", priority=5, client="shop-a") == "stored"
    assert store.put("orders", "order-1234", b"from b", priority=5, client="shop-b") == "stored"
    bodies = {m.client: m.read() for m in store.messages("orders")}
    assert bodies == {"shop-a": b"from a", "shop-b": b"from b"}


def test_a_re_send_by_the_same_client_stays_a_duplicate_over_its_whole_life(store):
    store.put("orders", "order-1", b"x", priority=5, client="shop-a")
    assert store.put("orders", "order-1", b"x", priority=5, client="shop-a") == "duplicate"
    [m] = store.claim("orders", "c1")
    assert store.put("orders", "order-1", b"x", priority=5, client="shop-a") == "duplicate"
    store.ack(m)
    assert store.put("orders", "order-1", b"x", priority=5, client="shop-a") == "duplicate"
    assert store.put("orders", "order-1", b"x", priority=5, client="shop-b") == "stored"
    assert tree(store.root / "queue") == ["orders/5.shop-b@order-1"]


def test_a_fresh_id_is_published_without_looking_back_but_never_over_a_queued_copy(store):
    # fresh=True: the receiver made the id just now; only queue/ can refuse it.
    staged = store.stage("orders", "NEW-1", b"first", priority=5, client="h")
    assert store.publish(staged, fresh=True) == "stored"
    again = store.stage("orders", "NEW-1", b"second", priority=5, client="h")
    assert store.publish(again, fresh=True) == "duplicate"
    assert store.get("orders", "NEW-1").read() == b"first"
    assert tree(store.root) == ["queue/orders/5.h@NEW-1"]


def test_a_copy_claimed_while_a_re_send_is_published_leaves_one_copy(store, monkeypatch):
    """The earlier copy leaves queue/ for a consumer's work/ folder, made just now,
    between the re-send's first look and its link into queue/: the link
    succeeds, the look after it finds the claimed copy, and the new link is
    taken out again (the one whose inode is the staged file's)."""
    assert store.put("c", "ID1", b"first", priority=5, client="h") == "stored"
    real_link, claimed = os.link, []

    def link(src, dst, **kwargs):
        if not claimed:
            claimed.extend(store.claim("c", "worker-a"))
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", link)
    assert store.put("c", "ID1", b"again", priority=5, client="h") == "duplicate"
    assert len(claimed) == 1 and claimed[0].read() == b"first"
    assert tree(store.root) == ["work/worker-a/c/5.h@ID1"]


def test_get_names_the_clients_when_two_sent_the_same_id(store):
    store.put("orders", "order-1", b"a", priority=5, client="shop-a")
    store.put("orders", "order-1", b"b", priority=5, client="shop-b")
    with pytest.raises(ValidationError, match=r"several clients \(shop-a, shop-b\)"):
        store.get("orders", "order-1")
    assert store.get("orders", "order-1", client="shop-b").read() == b"b"


def test_a_client_named_like_a_reason_file_is_still_listed(store):
    store.put("orders", "ID1", b"x", priority=5, client="x.reason")
    assert [m.client for m in store.messages("orders")] == ["x.reason"]


def _legacy_store(root, client="shop-a"):
    """A store as versions before client-keyed names left it: ``P.ID`` names and
    no ``.format`` file."""
    from dropr.store.files.format import header_line

    queue, done = root / "queue" / "orders", root / "done" / "orders"
    for d in (root / "tmp", queue, root / "work", done, root / "dead"):
        d.mkdir(parents=True)
    (queue / "5.OLD-Q").write_bytes(header_line("OLD-Q", "orders", 5, client, 1.0) + b"queued")
    (done / "5.OLD-D").write_bytes(header_line("OLD-D", "orders", 5, client, 1.0) + b"acked")


def test_a_store_made_before_client_names_still_knows_its_old_messages(tmp_path):
    _legacy_store(tmp_path / "old")
    store = Store(tmp_path / "old", fsync=False)
    # A re-send across the upgrade, by the client that sent it: still a duplicate.
    assert store.put("orders", "OLD-Q", b"again", priority=5, client="shop-a") == "duplicate"
    assert store.put("orders", "OLD-D", b"again", priority=5, client="shop-a") == "duplicate"
    # Another client's message of the same id is its own.
    assert store.put("orders", "OLD-Q", b"b", priority=5, client="shop-b") == "stored"
    assert store.get("orders", "OLD-Q", client="shop-a").read() == b"queued"
    assert sorted(m.client for m in store.messages("orders")) == ["shop-a", "shop-b"]
    assert not (tmp_path / "old" / ".format").exists()


def test_a_new_store_is_marked_with_its_name_format(tmp_path):
    Store(tmp_path / "new", fsync=False)
    assert (tmp_path / "new" / ".format").read_bytes() == b"dropr-store 2\n"


@pytest.mark.process
def test_store_cat_asks_which_client_when_two_sent_the_id(tmp_path):
    from tests.support import harness

    config = harness.write_config(tmp_path)
    store = Store(tmp_path / "server", fsync=False)
    store.put("orders", "order-1", b"from a", priority=5, client="shop-a")
    store.put("orders", "order-1", b"from b", priority=5, client="shop-b")
    ambiguous = harness.run_dropr(config, "store", "cat", "orders", "order-1", check=False)
    assert ambiguous.returncode == 2 and b"several clients (shop-a, shop-b)" in ambiguous.stderr
    cat = harness.run_dropr(config, "store", "cat", "orders", "order-1", "--client", "shop-b")
    assert cat.stdout == b"from b"


def test_an_old_store_is_marked_once_no_old_name_is_left(tmp_path):
    _legacy_store(tmp_path / "old")
    receiver = Store(tmp_path / "old", fsync=False)
    reaper = Store(tmp_path / "old", fsync=False)
    assert reaper.adopt_format() is False  # P.ID names in queue/ and done/
    [m] = reaper.claim("orders", "c1")
    reaper.ack(m)
    os.unlink(tmp_path / "old" / "done" / "orders" / "5.OLD-D")
    assert reaper.adopt_format() is False  # OLD-Q, acked, is in done/ now
    for p in (tmp_path / "old" / "done" / "orders").iterdir():
        p.unlink()  # expired
    assert reaper.adopt_format() is True
    assert (tmp_path / "old" / ".format").read_bytes() == b"dropr-store 2\n"
    # The receiver notices at its next request, and stops looking for P.ID copies.
    assert receiver.put("orders", "N1", b"x", priority=5, client="shop-a") == "stored"
    assert receiver._legacy is False
