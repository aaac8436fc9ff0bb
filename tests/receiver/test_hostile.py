"""Hostile requests against the real receiver (gunicorn on loopback), sent as
raw bytes over a socket so that every byte is the test's: bad tokens, bad
names, path traversal, look-alike Unicode, malformed HTTP, multipart and
JSON, oversize bodies, truncated and stalled bodies.

Each must be answered with its 4xx and a JSON error body naming the problem,
and must leave the whole store tree (every path and every byte) as it was.
"""

import dataclasses
import hashlib
import http.client
import json
import select
import socket
import time

import pytest

from dropr.store import Store
from tests.receiver import forms
from tests.support import harness

pytestmark = pytest.mark.process

TOKEN = "hostile-test-token-0123456789"
AUDIT_TOKEN = "audit-only-token-9876543210"
#: Short, so that the stalled bodies below are cut off quickly; generous
#: enough that a loaded machine still reads a whole request in time.
BODY_TIMEOUT = 2.0
LIMITS = {"max_message_bytes": 100_000, "max_batch_messages": 3, "max_batch_bytes": 1_000_000,
          "body_timeout": BODY_TIMEOUT}
CLIENTS = f"""
[receiver.clients.shop-1]
token = "{TOKEN}"

[receiver.clients.audit-only]
token = "{AUDIT_TOKEN}"
channels = ["audit"]
"""


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One receiver for every case, with a store that already holds messages."""
    root = tmp_path_factory.mktemp("hostile")
    config_path = harness.write_config(root, sections={"receiver": LIMITS})
    with open(config_path, "a") as f:
        f.write(CLIENTS)
    receiver = harness.Receiver(config_path)
    store = Store(receiver.config.receiver.store, fsync=False)
    store.put("orders", "OLD1", b"kept as it was", priority=5, client="h")
    store.put("orders", "OLD2", b"acked", priority=1, client="h")
    store.ack(store.get("orders", "OLD2"))
    receiver.start()
    yield receiver
    receiver.stop()
    harness.remove_queues(root / "client")


def tree_hash(root):
    """sha256 of every path under ``root``, its kind and its bytes."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(b"D" if p.is_dir() else b"F" + p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


# -- requests, byte by byte ----------------------------------------------------

def request(method, path, *, headers=(), body=b"", auth=TOKEN, length=True):
    """The raw bytes of a request. ``path`` and header values may be bytes;
    ``length``: True for the body's Content-Length, False for none, or a value."""
    def b(v):
        return v if isinstance(v, bytes) else str(v).encode()
    lines = [b(method) + b" " + b(path) + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if auth is not None:
        lines.append(b"Authorization: Bearer " + b(auth))
    if length is True:
        lines.append(b"Content-Length: " + b(len(body)))
    elif length is not False:
        lines.append(b"Content-Length: " + b(length))
    lines += [b(k) + b": " + b(v) for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post(channel, body=b"x", headers=(), **kw):
    return request("POST", b"/v1/channels/" + channel + b"/messages", headers=headers,
                   body=body, **kw)


def batch(body, *, content_type=forms.CONTENT_TYPE, **kw):
    return request("POST", "/v1/batch", headers=[("Content-Type", content_type)], body=body, **kw)


def chunked(data):
    return b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"


def msg(mid, size=1, channel="orders", **extra):
    return {"id": mid, "channel": channel, "priority": 5, "size": size, **extra}


GOOD_META = {"client": "shop-1", "messages": [msg("A"), msg("B")]}
A, B = forms.file_part("A", b"a"), forms.file_part("B", b"b")


def meta_form(meta, *parts):
    return forms.form(forms.meta_part(meta), *parts)


def nested(depth):
    return ('{"client": "shop-1", "messages": [' + '{"x": ' * depth + "1"
            + "}" * depth + "]}").encode()


@dataclasses.dataclass
class Case:
    raw: bytes
    status: int
    code: str
    says: str = ""       # a piece of the error message that names the problem
    mode: str = "send"   # send; shut: half-close after sending; stall: send, then wait


def cut_batch():
    """A batch cut off in the middle of its second message: the first is
    staged by then (it is larger than what the receiver reads at once), the
    second is being staged."""
    big = b"a" * 70_000
    body = meta_form({"client": "shop-1", "messages": [msg("A", len(big)), msg("B", 500)]},
                     forms.file_part("A", big), forms.file_part("B", b"b" * 500))
    return batch(body[:-300], length=len(body))


CASES = {
    # -- tokens
    "no token": Case(post(b"orders", auth=None), 401, "unauthorized", "bearer token"),
    "unknown token": Case(post(b"orders", auth="not-a-known-token"), 401, "unauthorized",
                          "unknown bearer token"),
    "not a bearer token": Case(post(b"orders", auth=None,
                                    headers=[("Authorization", "Basic dXNlcjpwYXNz")]),
                               401, "unauthorized", "Bearer"),
    "channel the token may not write": Case(post(b"orders", auth=AUDIT_TOKEN), 403,
                                            "forbidden", "may not write"),
    "batch with a token of another channel": Case(
        batch(meta_form(GOOD_META, A, B), auth=AUDIT_TOKEN), 403, "forbidden", "may not write"),
    # -- names in the URL path
    "channel ..": Case(post(b".."), 400, "invalid", "contains '..'"),
    "channel %2e%2e": Case(post(b"%2e%2e"), 400, "invalid", "contains '..'"),
    "traversal ..%2Fetc": Case(post(b"..%2Fetc"), 400, "invalid", "encoded '/' (%2F)"),
    "traversal %2F..%2F..%2Fetc": Case(post(b"%2F..%2F..%2Fetc"), 400, "invalid",
                                       "encoded '/'"),
    "channel with %00": Case(post(b"orders%00"), 400, "invalid", "control character U+0000"),
    "channel with %0A": Case(post(b"ord%0Aers"), 400, "invalid", "control character U+000A"),
    "channel with a backslash": Case(post(b"a%5Cb"), 400, "invalid", "encoded '\\\\' (%5C)"),
    "channel 65 characters": Case(post(b"c" * 65), 400, "invalid", "65 characters, over 64"),
    "look-alike channel, percent-encoded": Case(post(b"%D0%BErders"), 400, "invalid",
                                                "non-ASCII character U+043E"),
    "zero-width space in channel": Case(post(b"orders%E2%80%8B"), 400, "invalid",
                                        "non-ASCII character U+200B"),
    "look-alike channel, raw UTF-8": Case(post("оrders".encode()), 400, "malformed",
                                          "request line"),
    "NUL in the request line": Case(post(b"orders\x00"), 400, "malformed", "request line"),
    "URL too long": Case(post(b"c" * 5000), 414, "uri_too_long"),
    # -- headers
    "id with ..": Case(post(b"orders", headers=[("Idempotency-Key", "../x")]), 400,
                       "invalid", "Idempotency-Key"),
    "id in raw UTF-8": Case(post(b"orders", headers=[("Idempotency-Key", "Ａ1".encode())]),
                            400, "invalid", "non-ASCII character U+FF21"),
    "id 65 characters": Case(post(b"orders", headers=[("Idempotency-Key", "I" * 65)]), 400,
                             "invalid", "65 characters"),
    "control character in a header": Case(post(b"orders", headers=[("Idempotency-Key",
                                                                     b"a\x01b")]),
                                          400, "malformed"),
    "priority 10": Case(post(b"orders", headers=[("Dropr-Priority", "10")]), 400, "invalid",
                        "priority"),
    "priority superscript two": Case(post(b"orders", headers=[("Dropr-Priority", b"\xb2")]),
                                     400, "invalid", "Dropr-Priority"),
    "priority fullwidth five": Case(post(b"orders", headers=[("Dropr-Priority",
                                                              "５".encode())]),
                                    400, "invalid", "Dropr-Priority"),
    "priority of 5000 digits": Case(post(b"orders", headers=[("Dropr-Priority", "5" * 5000)]),
                                    400, "invalid", "Dropr-Priority"),
    "too many headers": Case(post(b"orders", headers=[(f"X-H{i}", "1") for i in range(120)]),
                             431, "request_header_fields_too_large"),
    "two Content-Lengths": Case(post(b"orders", headers=[("Content-Length", "2")]), 400,
                                "malformed"),
    "Content-Length and chunked": Case(post(b"orders", headers=[("Transfer-Encoding",
                                                                 "chunked")]),
                                       400, "malformed"),
    "negative Content-Length": Case(post(b"orders", length=-1), 400, "malformed"),
    "bad HTTP version": Case(post(b"orders").replace(b"HTTP/1.1", b"HTTP/7.1", 1), 400,
                             "malformed"),
    "lower-case method": Case(post(b"orders").replace(b"POST", b"post", 1), 400, "malformed"),
    "GET on the batch": Case(request("GET", "/v1/batch"), 405, "method_not_allowed"),
    "unknown route": Case(request("POST", "/v1/../etc/passwd"), 404, "not_found"),
    # -- plain bodies
    "message over the limit": Case(post(b"orders", b"x" * 100_001), 413, "too_large",
                                   "100000"),
    "chunked message over the limit": Case(
        post(b"orders", chunked(b"x" * 100_001), headers=[("Transfer-Encoding", "chunked")],
             length=False), 413, "too_large", "100000"),
    "bad chunk size": Case(post(b"orders", b"zz\r\nxx\r\n0\r\n\r\n", length=False,
                                headers=[("Transfer-Encoding", "chunked")]),
                           400, "malformed", "chunk size"),
    "body shorter than its Content-Length": Case(post(b"orders", b"half", length=100), 400,
                                                 "invalid", "4 of the 100 bytes", "shut"),
    "chunked body cut off": Case(post(b"orders", b"a\r\n01234", length=False,
                                      headers=[("Transfer-Encoding", "chunked")]),
                                 400, "malformed", "", "shut"),
    "stalled body": Case(post(b"orders", b"x" * 10, length=500), 408, "body_timeout",
                         "no bytes", "stall"),
    "stalled chunked body": Case(post(b"orders", b"64\r\n0123", length=False,
                                      headers=[("Transfer-Encoding", "chunked")]),
                                 408, "body_timeout", "no bytes", "stall"),
    # -- batches: the request
    "batch not multipart": Case(batch(b"{}", content_type="application/json"), 415,
                                "unsupported_media_type"),
    "multipart without a boundary": Case(batch(meta_form(GOOD_META, A, B),
                                               content_type="multipart/form-data"),
                                         400, "malformed"),
    "batch without Content-Length": Case(
        batch(chunked(meta_form(GOOD_META, A, B)), length=False).replace(
            b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1), 411, "length_required"),
    "batch over the byte limit": Case(batch(meta_form(GOOD_META, A, B), length=1_000_001), 413,
                                      "too_large", "1000000"),
    "more messages than allowed": Case(
        batch(meta_form({"client": "shop-1", "messages": [msg(f"M{i}") for i in range(4)]},
                        *[forms.file_part(f"M{i}", b"x") for i in range(4)])),
        413, "too_large", "limit of 3"),
    # -- batches: meta
    "meta not first": Case(batch(forms.form(A, forms.meta_part(GOOD_META), B)), 400, "invalid",
                           "first part"),
    "meta not JSON": Case(batch(meta_form(b"{not json", A, B)), 400, "invalid", "not valid JSON"),
    "meta not UTF-8": Case(batch(meta_form(b'{"client": "\xff"}', A, B)), 400, "invalid",
                           "not UTF-8"),
    "meta in UTF-16": Case(batch(meta_form(json.dumps(GOOD_META).encode("utf-16"), A, B)), 400,
                           "invalid", "not UTF-8"),
    # More objects than a meta of 3 messages has: refused before its depth is looked at.
    "meta nested 100 deep": Case(batch(meta_form(nested(100))), 413, "too_large",
                                 "strings it may have"),
    "meta nested 30000 deep": Case(batch(meta_form(b"[" * 30_000 + b"]" * 30_000)), 413,
                                    "too_large", "arrays and objects"),
    "meta over its size bound": Case(batch(meta_form({**GOOD_META, "pad": "x" * 80_000}, A, B)),
                                     413, "too_large", "meta is over 67072 bytes"),
    "meta a list": Case(batch(meta_form([GOOD_META], A, B)), 400, "invalid", "object"),
    "messages not a list": Case(batch(meta_form({"client": "shop-1", "messages": {"A": 1}})),
                                400, "invalid", "messages"),
    "unknown key in meta": Case(batch(meta_form({**GOOD_META, "admin": True}, A, B)), 400,
                                "invalid", "'admin'"),
    "unknown key in a message": Case(
        batch(meta_form({"client": "shop-1", "messages": [msg("A", path="/etc"), msg("B")]},
                        A, B)), 400, "invalid", "'path'"),
    "client name with a slash": Case(batch(meta_form({**GOOD_META, "client": "a/b"}, A, B)),
                                     400, "invalid", "client name"),
    "client name not a string": Case(batch(meta_form({**GOOD_META, "client": 7}, A, B)), 400,
                                     "invalid", "client name"),
    "client name with a look-alike": Case(batch(meta_form({**GOOD_META, "client": "shоp"},
                                                          A, B)),
                                          400, "invalid", "U+043E"),
    "id with NUL in meta": Case(batch(meta_form({"client": "shop-1", "messages": [msg("A\0")]},
                                                forms.file_part("A", b"a"))),
                                400, "invalid", "control character"),
    "id not a string": Case(batch(meta_form({"client": "shop-1", "messages": [msg(12)]},
                                            forms.file_part("12", b"a"))),
                            400, "invalid", "id must be a string"),
    "duplicate ids": Case(batch(meta_form({"client": "shop-1", "messages": [msg("A"), msg("A")]},
                                          A, A)), 400, "invalid", "more than once"),
    # -- batches: parts
    "a part missing": Case(batch(meta_form(GOOD_META, A)), 400, "invalid", "no part"),
    "an extra part": Case(batch(meta_form(GOOD_META, A, B, forms.file_part("C", b"c"))), 400,
                          "invalid", "more parts"),
    "parts out of order": Case(batch(meta_form(GOOD_META, B, A)), 400, "invalid", "order"),
    "part name not UTF-8": Case(batch(meta_form(GOOD_META, A, B.replace(b'name="B"',
                                                                         b'name="\xff"'))),
                                400, "invalid", "UTF-8"),
    "multipart cut off": Case(batch(meta_form(GOOD_META, A, B)[:-40]), 400, "malformed"),
    "batch shorter than its Content-Length": Case(cut_batch(), 400, "malformed", "", "shut"),
    "stalled batch": Case(cut_batch() + b"b", 408, "body_timeout", "no bytes", "stall"),
}


def exchange(running, case):
    """Send ``case.raw``; returns (response, seconds it took)."""
    port = int(running.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + 20)
    try:
        start = time.monotonic()
        sock.sendall(case.raw)
        if case.mode == "shut":
            sock.shutdown(socket.SHUT_WR)
        elif case.mode == "stall":
            tmp = running.config.receiver.store / "tmp"
            harness.wait_for(lambda: any(tmp.iterdir()), BODY_TIMEOUT,
                             what="the stalled upload to be staged in tmp/")
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response, json.loads(response.read()), time.monotonic() - start
    finally:
        sock.close()


def test_there_are_at_least_40_distinct_hostile_requests():
    assert len(CASES) >= 40 and len({c.raw for c in CASES.values()}) == len(CASES)


@pytest.mark.parametrize("name", CASES)
def test_hostile_request_is_refused_and_changes_nothing(running, name):
    assert_refused(running, CASES[name])


def assert_refused(running, case):
    """``case`` is answered its status and code in a JSON error body that
    names the problem, and the store tree is as it was."""
    root = running.config.receiver.store
    before = tree_hash(root)
    response, answer, took = exchange(running, case)
    assert response.status == case.status, answer
    assert response.getheader("Content-Type").startswith("application/json")
    assert set(answer) == {"error"} and set(answer["error"]) == {"code", "message"}
    assert answer["error"]["code"] == case.code, answer
    assert case.says in answer["error"]["message"]
    if case.mode == "stall":
        assert took >= BODY_TIMEOUT * 0.9
    # The answer is written after the request's files are gone; allow the
    # handler thread a moment to have left nothing else behind either.
    harness.wait_for(lambda: tree_hash(root) == before, 5, what="the store tree as it was")


def test_receiver_still_serves_after_the_hostile_requests(running):
    store = Store(running.config.receiver.store, fsync=False)
    sock_case = Case(post(b"orders", b"fine", headers=[("Idempotency-Key", "AFTER1")]), 201, "")
    response, answer, _ = exchange(running, sock_case)
    assert (response.status, answer["status"]) == (201, "stored")
    assert store.get("orders", "AFTER1").read() == b"fine"
    assert store.get("orders", "OLD1").read() == b"kept as it was"


def test_stalled_request_headers_are_cut_off_and_starve_nobody(running):
    """More clients than the receiver has request threads stop sending in the
    middle of their headers: each is cut off without an answer, and the
    receiver serves again."""
    port = int(running.url.rsplit(":", 1)[1])
    root = running.config.receiver.store
    before = tree_hash(root)
    stalled = {socket.create_connection(("127.0.0.1", port)) for _ in range(16)}
    try:
        for sock in stalled:
            sock.sendall(b"POST /v1/channels/orders/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        harness.wait_for(lambda: _close_the_cut_off(stalled), BODY_TIMEOUT * 4 + 20,
                         what="the receiver to cut off every stalled client")
        assert harness.http_get(running.url + "/v1/health", timeout=10)[0] == 200
    finally:
        for sock in stalled:
            sock.close()
    assert tree_hash(root) == before


def _close_the_cut_off(sockets):
    """Close (and forget) the sockets the receiver has closed without an
    answer; true once none is left. A client that closed its side is what
    lets the receiver's worker let go of the connection at once."""
    readable, _, _ = select.select(list(sockets), [], [], 0)
    for sock in readable:
        try:
            assert sock.recv(1024) == b""
        except ConnectionResetError:
            pass
        sock.close()
        sockets.discard(sock)
    return not sockets

