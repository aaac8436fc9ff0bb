"""POST /v1/batch on falcon's TestClient: results per message, duplicates,
per-message rejections, and whole-request refusals that change nothing."""

import errno
import json
import os

import pytest

from dropr.store import Store
from tests.receiver import forms
from tests.receiver.conftest import files, snapshot

MiB = 1024 * 1024


def post(client, body, content_type=forms.CONTENT_TYPE, **kwargs):
    return client.simulate_post("/v1/batch", body=body, content_type=content_type, **kwargs)


def test_batch_is_stored_byte_identical_and_answered_in_meta_order(make_client):
    client, store = make_client(fsync=True)
    big = os.urandom(5 * MiB)
    messages = [("M3", "orders", 2, b"third\r\n--not-a-boundary"), ("M1", "orders", 9, b""),
                ("M2", "audit.log", 0, big)]
    body, _ = forms.batch(messages, client="shop-1")
    r = post(client, body)
    assert r.status_code == 200
    assert list(r.json["results"].items()) == [(m[0], {"status": "stored"}) for m in messages]
    for mid, channel, prio, data in messages:
        m = store.get(channel, mid)
        assert (m.priority, m.client, m.size, m.read()) == (prio, "local", len(data), data)
    assert files(store.root / "tmp") == []


def test_empty_batch_is_answered_with_no_results(client_store):
    client, store = client_store
    body, _ = forms.batch([])
    r = post(client, body)
    assert (r.status_code, r.json) == (200, {"results": {}})
    assert files(store.root) == []


def test_same_batch_twice_is_stored_once(client_store):
    client, store = client_store
    body, _ = forms.batch([("A", "c", 5, b"a"), ("B", "c", 5, b"b")])
    stored = {"status": "stored"}
    assert post(client, body).json["results"] == {"A": stored, "B": stored}
    before = snapshot(store.root)
    r = post(client, body)
    assert r.json["results"] == {"A": {"status": "duplicate"}, "B": {"status": "duplicate"}}
    assert snapshot(store.root) == before


def test_id_already_acked_or_claimed_is_a_duplicate(client_store):
    client, store = client_store
    store.put("c", "DONE1", b"x", priority=5, client="local")
    store.put("c", "WORK1", b"y", priority=5, client="local")
    store.ack(store.get("c", "DONE1"))
    store.claim("c", "consumer-1")
    body, _ = forms.batch([("DONE1", "c", 5, b"x"), ("WORK1", "c", 5, b"y"),
                           ("NEW1", "c", 5, b"z")])
    r = post(client, body)
    assert r.json["results"] == {"DONE1": {"status": "duplicate"}, "WORK1": {"status": "duplicate"},
                                 "NEW1": {"status": "stored"}}
    assert files(store.root) == ["done/c/5.local@DONE1", "queue/c/5.local@NEW1",
                                 "work/consumer-1/c/5.local@WORK1"]


def test_bad_messages_are_rejected_alone(make_client):
    client, store = make_client(max_message_bytes=10)
    meta = {"client": "h", "messages": [
        {"id": "OK1", "channel": "c", "priority": 5, "size": 2},
        {"id": "BIG", "channel": "c", "priority": 5, "size": 11},
        {"id": "SHORT", "channel": "c", "priority": 5, "size": 5},
        {"id": "LONG", "channel": "c", "priority": 5, "size": 1},
        {"id": "CHAN", "channel": "../etc", "priority": 5, "size": 1},
        {"id": "PRIO", "channel": "c", "priority": 10, "size": 1},
        {"id": "SIZE", "channel": "c", "priority": 5, "size": -1},
        {"id": "OK2", "channel": "d", "priority": 1, "size": 0}]}
    bodies = {"OK1": b"ok", "BIG": b"x" * 11, "SHORT": b"abc", "LONG": b"abc", "CHAN": b"x",
              "PRIO": b"x", "SIZE": b"x", "OK2": b""}
    body = forms.form(forms.meta_part(meta), *[forms.file_part(k, v) for k, v in bodies.items()])
    r = post(client, body)
    assert r.status_code == 200
    results = r.json["results"]
    assert list(results) == list(bodies)
    assert {k for k, v in results.items() if v == {"status": "stored"}} == {"OK1", "OK2"}
    errors = {k: v["error"] for k, v in results.items() if v["status"] == "rejected"}
    assert "over the limit of 10 bytes" in errors["BIG"]
    assert errors["SHORT"] == "body has 3 bytes, meta says 5"
    assert errors["LONG"] == "body has 3 bytes, meta says 1"
    assert "channel" in errors["CHAN"] and "priority" in errors["PRIO"] and "size" in errors["SIZE"]
    assert files(store.root) == ["queue/c/5.local@OK1", "queue/d/1.local@OK2"]
    assert store.get("c", "OK1").read() == b"ok"


def _msg(mid, size=1, channel="c"):
    return {"id": mid, "channel": channel, "priority": 5, "size": size}


GOOD_META = {"client": "h", "messages": [_msg("A"), _msg("B")]}
A, B = forms.file_part("A", b"a"), forms.file_part("B", b"b")
REFUSED = {
    "meta not first": (forms.form(A, forms.meta_part(GOOD_META), B), 400),
    "no parts at all": (b"--" + forms.BOUNDARY + b"--\r\n", 400),
    "meta not JSON": (forms.form(forms.meta_part(b"{not json"), A, B), 400),
    "meta not UTF-8": (forms.form(forms.meta_part(b'{"client": "\xff"}'), A, B), 400),
    "meta a list": (forms.form(forms.meta_part([1, 2]), A, B), 400),
    "meta without messages": (forms.form(forms.meta_part({"client": "h"}), A, B), 400),
    "bad client name": (forms.form(forms.meta_part({**GOOD_META, "client": "a/b"}), A, B), 400),
    "no client name": (forms.form(forms.meta_part({"messages": []})), 400),
    "bad id in meta": (forms.form(forms.meta_part({"client": "h", "messages": [_msg("../A")]}),
                                  forms.file_part("../A", b"a")), 400),
    "entry not an object": (forms.form(forms.meta_part({"client": "h", "messages": ["A"]}), A),
                            400),
    "duplicate ids": (forms.form(forms.meta_part({"client": "h",
                                                  "messages": [_msg("A"), _msg("A")]}), A, A), 400),
    "parts out of order": (forms.form(forms.meta_part(GOOD_META), B, A), 400),
    "a part missing": (forms.form(forms.meta_part(GOOD_META), A), 400),
    "an extra part": (forms.form(forms.meta_part(GOOD_META), A, B, forms.file_part("C", b"c")),
                      400),
    "cut off in part headers": (forms.form(forms.meta_part(GOOD_META), A, B)[:-40], 400),
    "cut off in a body": (forms.form(forms.meta_part({"client": "h", "messages": [
        _msg("A"), _msg("B", 5000)]}), A, forms.file_part("B", b"b" * 5000))[:-1000], 400),
    "not a form": (b"just some bytes", 400),
    "part name not UTF-8": (forms.form(forms.meta_part(GOOD_META), A,
                                       B.replace(b'name="B"', b'name="\xff"')), 400),
    # More arrays than a meta of 3 messages has: refused before its depth is looked at.
    "meta nested too deep": (forms.form(forms.meta_part(b"[" * 5000 + b"]" * 5000)), 413),
    "more messages than allowed": (
        forms.form(forms.meta_part({"client": "h", "messages": [_msg(f"M{i}") for i in range(4)]}),
                   *[forms.file_part(f"M{i}", b"x") for i in range(4)]), 413),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_batch_changes_nothing(make_client, case):
    client, store = make_client(max_batch_messages=3)
    store.put("c", "OLD", b"kept", priority=5, client="h")
    before = snapshot(store.root)
    body, status = REFUSED[case]
    r = post(client, body)
    assert r.status_code == status, r.json
    assert set(r.json["error"]) == {"code", "message"} and r.json["error"]["message"]
    assert snapshot(store.root) == before


@pytest.mark.parametrize("content_type, extras, status, code", [
    ("application/json", {}, 415, "unsupported_media_type"),
    ("multipart/form-data", {}, 400, "malformed"),  # no boundary
    (forms.CONTENT_TYPE, {"CONTENT_LENGTH": ""}, 411, "length_required"),
    (forms.CONTENT_TYPE, {"CONTENT_LENGTH": "1000001"}, 413, "too_large"),
])
def test_request_refused_before_reading_the_body(make_client, content_type, extras, status, code):
    client, store = make_client(max_batch_bytes=1_000_000)
    before = snapshot(store.root)
    body, _ = forms.batch([("A", "c", 5, b"a")])
    r = post(client, body, content_type=content_type, extras=extras)
    assert (r.status_code, r.json["error"]["code"]) == (status, code)
    assert snapshot(store.root) == before


def test_messages_staged_before_a_refusal_are_unlinked(client_store):
    """The refusal comes after A and B were written to tmp/: both must go."""
    client, store = client_store
    body = forms.form(forms.meta_part(GOOD_META), A, B, forms.file_part("C", b"c"))
    assert post(client, body).status_code == 400
    assert files(store.root) == [] and store.channels() == []


class FullAfter(Store):
    """A store whose disk fills up after ``n`` staged messages (a full disk
    cannot be caused for real in a test)."""

    def __init__(self, root, n):
        super().__init__(root, fsync=False)
        self.left = n

    def _write(self, fd, body, header, limit):
        if self.left == 0:
            os.write(fd, header)  # a partly written file, as a real full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= 1
        return super()._write(fd, body, header, limit)


def test_full_disk_is_507_and_changes_nothing(make_client, tmp_path):
    client, store = make_client(store=FullAfter(tmp_path / "full", 2))
    body, _ = forms.batch([("A", "c", 5, b"a"), ("B", "c", 5, b"b"), ("C", "c", 5, b"c")])
    r = post(client, body)
    assert (r.status_code, r.json["error"]["code"]) == (507, "store_full")
    assert "full" in r.json["error"]["message"]
    assert files(store.root) == [] and store.channels() == []


def test_meta_size_is_bounded_by_the_message_limit(make_client):
    client, _ = make_client(max_batch_messages=1)
    meta = json.dumps({"client": "h", "messages": [], "pad": "x" * 200_000}).encode()
    r = post(client, forms.form(forms.meta_part(meta)))
    assert (r.status_code, r.json["error"]["code"]) == (413, "too_large")


def _delimited(boundary=forms.BOUNDARY):
    return b"\r\n--" + boundary


#: Batches the usual-part path reads, or leaves to the long way part by part.
SAME_EITHER_WAY = {
    "usual parts": forms.batch([("U1", "c", 5, b"one"), ("U2", "d", 1, b""),
                                ("U3", "c", 9, os.urandom(3000))])[0],
    "a body holding the delimiter": forms.batch([
        ("D1", "c", 5, b"x"), ("D2", "c", 5, b"ab" + _delimited() + b"cd"), ("D3", "c", 5, b"y")])[0],
    "bodies with CR but no delimiter, one ending in a piece of it": forms.batch([
        ("C1", "c", 5, b"a\r\nb\r"), ("C2", "c", 5, b"\r\n--not the boundary"),
        ("C3", "c", 5, b"tail" + _delimited()[:-2]), ("C4", "c", 5, b"\r")])[0],
    "padding after a delimiter, an extra header": forms.form(
        forms.meta_part({"client": "h", "messages": [_msg("P1"), _msg("P2"), _msg("P3")]}),
        forms.file_part("P1", b"1"),
        forms.file_part("P2", b"2").replace(b"Content-Type", b"X-Extra: 1\r\nContent-Type"),
        forms.file_part("P3", b"3")).replace(b"\r\nContent-Disposition: form-data; name=\"P3\"",
                                             b" \t\r\nContent-Disposition: form-data; name=\"P3\""),
    "sizes not as announced, over the limit": forms.form(
        forms.meta_part({"client": "h", "messages": [
            _msg("S1", 2), _msg("S2", 5), _msg("S3", 1), _msg("S4", 70_000), _msg("S5", 1)]}),
        forms.file_part("S1", b"ok"), forms.file_part("S2", b"abc"), forms.file_part("S3", b"abc"),
        forms.file_part("S4", b"z" * 70_000), forms.file_part("S5", b"!")),
    "parts across the reader's 64 KiB reads": forms.batch(
        [(f"R{i}", "c", 5, os.urandom(size)) for i, size in
         enumerate([100, 65_000, 10, 131_000, 7, 0, 64 * 1024, 3])])[0],
    "a part missing at the end": forms.form(
        forms.meta_part({"client": "h", "messages": [_msg("M1"), _msg("M2")]}),
        forms.file_part("M1", b"1")),
}


@pytest.mark.parametrize("name", SAME_EITHER_WAY)
def test_a_batch_read_by_its_announced_sizes_stores_what_the_long_way_stores(
        make_client, tmp_path, monkeypatch, name):
    from dropr.receiver.multipart import FormReader
    body = SAME_EITHER_WAY[name]
    taken = []
    usual_body = FormReader.usual_body

    def counted(self, message_id, size):
        data = usual_body(self, message_id, size)
        taken.append(data is not None)
        return data

    answers, stores = [], []
    for way in ("usual", "long"):
        store = Store(tmp_path / way, fsync=False, clock=lambda: 1700000000.0)
        client, _ = make_client(store=store, max_message_bytes=100_000)
        monkeypatch.setattr(FormReader, "usual_body", counted if way == "usual"
                            else lambda self, message_id, size: None)
        r = post(client, body)
        answers.append((r.status_code, r.json))
        stores.append(snapshot(store.root))
    assert answers[0] == answers[1]
    assert stores[0] == stores[1]
    assert any(taken)  # the usual path read some of them
