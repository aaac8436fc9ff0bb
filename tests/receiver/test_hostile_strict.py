"""More hostile requests against the real receiver (gunicorn on loopback), as
raw bytes over a socket: the ones a proxy or a validator in front of the
receiver would read otherwise than the receiver if it guessed (encoded
separators, look-alike whitespace, duplicates, lax multipart framing, loose
JSON types), request smuggling and framing, encodings, and limits
(test_request_bounds.py bounds the work of a request).

Each is refused with a 4xx and a JSON error body, and leaves the whole
store tree as it was.
"""

import json

import pytest

from tests.receiver import forms
from tests.receiver.test_hostile import (  # noqa: F401 (running: this module's receiver)
    A, B, GOOD_META, Case, assert_refused, batch, chunked, exchange, meta_form, msg, post,
    request, running)

pytestmark = pytest.mark.process

BOUNDARY = forms.BOUNDARY.decode()


def meta_bytes(text):
    """A batch whose meta is ``text`` as written (duplicate keys survive)."""
    return batch(meta_form(text.encode(), A))


def one(**fields):
    """A batch of one message A whose meta message is ``fields`` as given."""
    return batch(meta_form({"client": "shop-1", "messages": [fields]}, A))


def part_headers(headers, body=b"a"):
    """A batch of message A whose part has the raw ``headers``."""
    meta = {"client": "shop-1", "messages": [msg("A")]}
    return batch(meta_form(meta, headers + b"\r\n\r\n" + body))


def other_boundary(boundary):
    """A good batch framed by ``boundary``, with the Content-Type that gives it."""
    return batch(forms.form(forms.meta_part(GOOD_META), A, B, boundary=boundary),
                 content_type='multipart/form-data; boundary="' + boundary.decode() + '"')


def http10(raw):
    return raw.replace(b"HTTP/1.1", b"HTTP/1.0", 1)


WORST_META = b'"' + b'\\"' * 33_000  # quadratic for the former depth check: ~18 s


CASES = {
    # -- encoded separators: the receiver routes on the decoded path
    "%2F between route segments": Case(request("POST", "/v1%2Fchannels%2Forders%2Fmessages",
                                               body=b"x"), 400, "invalid", "encoded '/'"),
    "%2f in lower case": Case(request("POST", "/v1/channels%2forders/messages", body=b"x"),
                              400, "invalid", "encoded '/'"),
    "%2F in the batch route": Case(batch(meta_form(GOOD_META, A, B)).replace(
        b"/v1/batch", b"/v1%2Fbatch", 1), 400, "invalid", "encoded '/'"),
    "%5C in a route": Case(request("POST", "/v1%5Cbatch"), 400, "invalid", "encoded '\\\\'"),
    "double-encoded slash": Case(post(b"orders%252Fx"), 400, "invalid", "encoded '%'"),
    "encoded ;": Case(post(b"orders%3Bx=1"), 400, "invalid", "encoded ';'"),
    "raw backslash": Case(request("POST", "/v1\\batch"), 400, "invalid", "backslash"),
    "empty segment": Case(request("POST", "//v1/batch"), 400, "invalid", "empty segment"),
    "absolute form with %2F": Case(request("POST", "http://127.0.0.1/v1%2Fbatch"), 400,
                                   "invalid", "encoded '/'"),
    # -- numbers in headers: ASCII digits, HTTP's whitespace only
    "priority after a no-break space": Case(post(b"orders", headers=[("Dropr-Priority",
                                                                      b"\xa05")]),
                                            400, "invalid", "Dropr-Priority"),
    "priority after an ideographic space": Case(
        post(b"orders", headers=[("Dropr-Priority", "\u30005".encode())]), 400, "invalid",
        "Dropr-Priority"),
    "priority +5": Case(post(b"orders", headers=[("Dropr-Priority", "+5")]), 400, "invalid",
                        "Dropr-Priority"),
    "priority 0_5": Case(post(b"orders", headers=[("Dropr-Priority", "0_5")]), 400, "invalid",
                         "Dropr-Priority"),
    "priority twice": Case(post(b"orders", headers=[("Dropr-Priority", "1"),
                                                    ("Dropr-Priority", "2")]),
                           400, "malformed", "Dropr-Priority given more than once"),
    "Content-Length +4": Case(post(b"orders", b"abcd", length="+4"), 400, "malformed"),
    "Content-Length 0x4": Case(post(b"orders", b"abcd", length="0x4"), 400, "malformed"),
    "Content-Length 4,4": Case(post(b"orders", b"abcd", length="4,4"), 400, "malformed"),
    "Content-Length in Arabic digits": Case(post(b"orders", b"abcd", length="\u0664".encode()),
                                            400, "malformed"),
    # -- framing
    "HTTP/1.0 POST without a length": Case(http10(post(b"orders", b"dropped", length=False)),
                                           411, "length_required", "Content-Length", "shut"),
    "HTTP/1.1 POST without a length": Case(post(b"orders", b"", length=False), 411,
                                           "length_required"),
    "HTTP/1.0 chunked": Case(http10(post(b"orders", chunked(b"x"), length=False,
                                         headers=[("Transfer-Encoding", "chunked")])),
                             400, "malformed"),
    "chunked twice": Case(post(b"orders", chunked(b"x"), length=False,
                               headers=[("Transfer-Encoding", "chunked, chunked")]),
                          400, "malformed"),
    "gzip, chunked": Case(post(b"orders", chunked(b"x"), length=False,
                               headers=[("Transfer-Encoding", "gzip, chunked")]),
                          400, "invalid", "chunked alone"),
    "Transfer-Encoding twice": Case(post(b"orders", chunked(b"x"), length=False,
                                         headers=[("Transfer-Encoding", "chunked"),
                                                  ("Transfer-Encoding", "chunked")]),
                                    400, "malformed"),
    "unknown transfer coding": Case(post(b"orders", chunked(b"x"), length=False,
                                         headers=[("Transfer-Encoding", "xchunked")]),
                                    501, "not_implemented"),
    "CL and TE, TE first": Case(request("POST", "/v1/channels/orders/messages",
                                        headers=[("Transfer-Encoding", "chunked"),
                                                 ("Content-Length", "5")],
                                        body=chunked(b"x"), length=False), 400, "malformed"),
    "obs-fold header": Case(post(b"orders", headers=[("Idempotency-Key", b"a\r\n b")]), 400,
                            "malformed"),
    "space before a header's colon": Case(post(b"orders").replace(b"Content-Length:",
                                                                  b"Content-Length :", 1),
                                          400, "malformed"),
    "bare LF in a header": Case(post(b"orders", headers=[("X-A", b"1\nIdempotency-Key: x")]),
                                400, "malformed"),
    "chunk size -1": Case(post(b"orders", b"-1\r\nx\r\n0\r\n\r\n", length=False,
                               headers=[("Transfer-Encoding", "chunked")]), 400, "malformed"),
    "chunk size 0x1": Case(post(b"orders", b"0x1\r\nx\r\n0\r\n\r\n", length=False,
                                headers=[("Transfer-Encoding", "chunked")]), 400, "malformed"),
    "chunk size +1": Case(post(b"orders", b"+1\r\nx\r\n0\r\n\r\n", length=False,
                               headers=[("Transfer-Encoding", "chunked")]), 400, "malformed"),
    # Taken at its word: the receiver waits for its bytes, then gives up.
    "chunk size over 64 bits": Case(post(b"orders", b"1" + b"0" * 20 + b"\r\nx\r\n0\r\n\r\n",
                                         length=False,
                                         headers=[("Transfer-Encoding", "chunked")]),
                                    408, "body_timeout"),
    "chunk without its CRLF": Case(post(b"orders", b"1\r\nxy0\r\n\r\n", length=False,
                                        headers=[("Transfer-Encoding", "chunked")]),
                                   400, "malformed"),
    "Idempotency-Key twice": Case(post(b"orders", headers=[("Idempotency-Key", "k1"),
                                                           ("Idempotency-Key", "k2")]),
                                  400, "malformed", "Idempotency-Key given more than once"),
    # -- multipart: duplicates and framing
    "boundary twice": Case(batch(meta_form(GOOD_META, A, B),
                                 content_type=forms.CONTENT_TYPE + "; boundary=other"),
                           400, "malformed", "'boundary' more than once"),
    "Content-Type twice": Case(request("POST", "/v1/batch", headers=[
        ("Content-Type", forms.CONTENT_TYPE), ("Content-Type", "multipart/form-data; boundary=x")],
        body=meta_form(GOOD_META, A, B)), 400, "malformed", "CONTENT-TYPE"),
    "Host twice": Case(post(b"orders", headers=[("Host", "evil.example")]), 400, "malformed",
                       "HOST"),
    "Authorization twice": Case(post(b"orders", headers=[("Authorization", "Bearer x")]), 400,
                                "malformed", "Authorization given more than once"),
    "boundary with an unclosed quote": Case(
        batch(meta_form(GOOD_META, A, B), content_type=f'multipart/form-data; boundary="{BOUNDARY}'),
        400, "malformed", "unclosed quote"),
    "boundary with a quote in it": Case(other_boundary(b'a"b'), 400, "malformed"),
    "boundary outside RFC 2046": Case(other_boundary(b"a@b"), 400, "malformed", "boundary"),
    "boundary ending in a space": Case(other_boundary(b"ab "), 400, "malformed", "boundary"),
    "boundary of 71 characters": Case(other_boundary(b"b" * 71), 400, "malformed", "boundary"),
    "multipart/form-data with a suffix": Case(
        batch(meta_form(GOOD_META, A, B),
              content_type=forms.CONTENT_TYPE.replace("form-data", "form-datax")), 400,
        "malformed"),
    "a part's name twice": Case(part_headers(
        b'Content-Disposition: form-data; name="A"; name="meta"'), 400, "malformed",
        "'name' more than once"),
    "two Content-Dispositions in a part": Case(part_headers(
        b'Content-Disposition: form-data; name="A"; filename="x"\r\n'
        b'Content-Disposition: form-data; name="meta"'), 400, "malformed", "more than once"),
    "two parts of one name": Case(batch(meta_form(GOOD_META, A, A)), 400, "malformed",
                                  "two parts are named 'A'"),
    "a message id 'meta'": Case(batch(meta_form({"client": "shop-1", "messages": [msg("meta")]},
                                                forms.file_part("meta", b"a"))),
                                400, "invalid", "meta part"),
    "name* in a part": Case(part_headers(
        b"Content-Disposition: form-data; name=\"A\"; name*=UTF-8''meta"), 400, "malformed"),
    "filename* in a part": Case(part_headers(
        b"Content-Disposition: form-data; name=\"A\"; filename*=UTF-8''a"), 400, "malformed"),
    "quoted-pair in a part's name": Case(part_headers(
        b'Content-Disposition: form-data; name="A\\"; filename="x"'), 400, "malformed"),
    "a part without Content-Disposition": Case(part_headers(
        b"Content-Type: application/octet-stream"), 400, "malformed", "no Content-Disposition"),
    "a folded part header": Case(part_headers(
        b'Content-Disposition: form-data;\r\n name="A"'), 400, "malformed", "folded"),
    "a bare LF in a part header": Case(part_headers(
        b'Content-Disposition: form-data; name="A"; filename="a\nb"'), 400, "malformed"),
    "base64 part": Case(part_headers(
        b'Content-Disposition: form-data; name="A"\r\nContent-Transfer-Encoding: base64'),
        400, "malformed", "Content-Transfer-Encoding"),
    "not form-data": Case(part_headers(b'Content-Disposition: attachment; name="A"'), 400,
                          "malformed", "form-data"),
    "meta as text/plain": Case(batch(meta_form({"client": "shop-1", "messages": [msg("A")]},
                                               A).replace(b"Content-Type: application/json",
                                                          b"Content-Type: text/plain", 1)),
                               400, "invalid", "application/json, not 'text/plain'"),
    # -- meta: duplicate keys, exact types, every key
    "channel twice in a message": Case(meta_bytes(
        '{"client": "shop-1", "messages": [{"id": "A", "channel": "secret", '
        '"channel": "orders", "priority": 5, "size": 1}]}'), 400, "invalid",
        "'channel' more than once"),
    "client twice": Case(meta_bytes(
        '{"client": "x", "client": "shop-1", "messages": [{"id": "A", "channel": "orders", '
        '"priority": 5, "size": 1}]}'), 400, "invalid", "'client' more than once"),
    "priority as a string": Case(one(id="A", channel="orders", priority="0", size=1), 400,
                                 "invalid", "priority must be an integer"),
    "priority true": Case(one(id="A", channel="orders", priority=True, size=1), 400,
                          "invalid", "priority must be an integer"),
    "priority 5.0": Case(one(id="A", channel="orders", priority=5.0, size=1), 400, "invalid",
                         "priority must be an integer"),
    "size as a string": Case(one(id="A", channel="orders", priority=5, size="1"), 400,
                             "invalid", "size must be an integer"),
    "size false": Case(one(id="A", channel="orders", priority=5, size=False), 400, "invalid",
                       "size must be an integer"),
    "channel a number": Case(one(id="A", channel=7, priority=5, size=1), 400, "invalid",
                             "channel must be a string"),
    "size missing": Case(one(id="A", channel="orders", priority=5), 400, "invalid",
                         "lacks size"),
    "channel missing": Case(one(id="A", priority=5, size=1), 400, "invalid", "lacks channel"),
    "priority missing": Case(one(id="A", channel="orders", size=1), 400, "invalid",
                             "lacks priority"),
    "NaN in meta": Case(meta_bytes('{"client": "shop-1", "messages": [{"id": "A", "channel": '
                                   '"orders", "priority": NaN, "size": 1}]}'),
                        400, "invalid", "NaN"),
    "meta with a byte order mark": Case(batch(meta_form(b"\xef\xbb\xbf" + json.dumps(
        {"client": "shop-1", "messages": [msg("A")]}).encode(), A)), 400, "invalid"),
    "meta with an escaped look-alike": Case(meta_bytes(
        '{"client": "shop-1", "messages": [{"id": "A", "channel": "\\u043erders", '
        '"priority": 5, "size": 1}], "\\u0063lient": "x"}'), 400, "invalid",
        "'client' more than once"),
    # -- the work a request may cost
    "worst-case meta for the former depth check": Case(batch(meta_form(WORST_META, A)), 400,
                                                       "invalid", "not valid JSON"),
    "21,000 empty lists in meta": Case(batch(meta_form(b"[" + b"[]," * 21_000 + b"[]]", A)),
                                          413, "too_large", "arrays and objects"),
    "header line over 8 KiB": Case(post(b"orders", headers=[("X-Big", "x" * 9000)]), 431,
                                   "request_header_fields_too_large"),
}


@pytest.mark.parametrize("name", CASES)
def test_hostile_request_is_refused_and_changes_nothing(running, name):
    assert_refused(running, CASES[name])


def test_there_are_at_least_60_more_distinct_hostile_requests():
    from tests.receiver import test_hostile
    assert len(CASES) >= 60 and len({c.raw for c in CASES.values()}) == len(CASES)
    assert not set(CASES) & set(test_hostile.CASES)


def test_worst_case_meta_is_answered_at_once(running):
    """The former depth check took about 12 s of CPU on this meta (the
    largest the receiver here allows), holding the worker's interpreter lock
    and so every request thread of it."""
    case = CASES["worst-case meta for the former depth check"]
    response, answer, took = exchange(running, case)
    assert response.status == 400 and took < 3.0, (took, answer)
