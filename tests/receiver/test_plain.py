"""The quick reading of plain requests (dropr.receiver.plain) against
gunicorn's own: whatever it reads, it reads into the environ gunicorn builds,
body included; whatever gunicorn refuses, it leaves to gunicorn; and its
answers are gunicorn's bytes."""

import socket

import hypothesis
from hypothesis import strategies as st
from gunicorn.config import Config
from gunicorn.http import errors as gerrors
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from dropr.receiver import plain

CLIENT = ("127.0.0.1", 40123)
SERVER = ("127.0.0.1", 8123)
#: Environ keys that hold objects, not values: compared by what they give.
OBJECTS = {"wsgi.input", "wsgi.errors", "gunicorn.socket", "wsgi.file_wrapper",
           "wsgi.early_hints"}


def cfg():
    config = Config()
    config.set("workers", 2)
    return config


def gunicorns(data):
    """(environ, body) as gunicorn reads ``data``; ParseException if it refuses it."""
    config = cfg()
    req = next(RequestParser(config, iter([data]), CLIENT))
    a, b = socket.socketpair()
    try:
        _, env = wsgi.create(req, a, CLIENT, SERVER, config)
        env["wsgi.multithread"] = True  # as gunicorn's threaded worker sets it
        return env, req.body.read()
    finally:
        a.close()
        b.close()


def ours(data):
    a, b = socket.socketpair()
    try:
        return plain.PlainRequests(cfg()).read(bytearray(data), a, CLIENT, SERVER)
    finally:
        a.close()
        b.close()


def assert_read_alike(data):
    """``data`` read here gives gunicorn's environ and body; returns what was
    read (None: left to gunicorn)."""
    read = ours(data)
    if read is None:
        return None
    env, close, used = read
    theirs, body = gunicorns(data)
    assert {k: v for k, v in env.items() if k not in OBJECTS} == \
        {k: v for k, v in theirs.items() if k not in OBJECTS}
    assert env["wsgi.input"].read() == body
    assert used == data.index(b"\r\n\r\n") + 4 + len(body)
    assert close == (theirs.get("HTTP_CONNECTION", "").lower() == "close")
    return read


def request(method=b"POST", target=b"/v1/channels/c/messages", headers=(), body=b"",
            length=True):
    head = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1:8123"]
    if length:
        head.append(b"Content-Length: " + str(len(body)).encode())
    head += list(headers)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def test_a_plain_post_is_read_as_gunicorn_reads_it():
    data = request(headers=[b"Content-Type: application/octet-stream", b"X-Dropr-A:  b\t",
                            b"Idempotency-Key: k-1", b"Connection: keep-alive"], body=b"x" * 1024)
    env, close, _ = assert_read_alike(data)
    assert (env["REQUEST_METHOD"], env["PATH_INFO"], env["HTTP_X_DROPR_A"], close) == \
        ("POST", "/v1/channels/c/messages", "b", False)


def test_a_get_with_a_query_and_connection_close_is_read_as_gunicorn_reads_it():
    env, close, _ = assert_read_alike(request(b"GET", b"/v1/messages/abc?x=1&y=%", length=False)
                                      .replace(b"%", b"2") + b"")
    assert (env["QUERY_STRING"], close) == ("x=1&y=2", False)
    _, close, _ = assert_read_alike(request(b"GET", b"/metrics", [b"Connection: close"]))
    assert close


def test_the_next_request_is_left_in_the_buffer():
    first, second = request(body=b"one"), request(body=b"two")
    env, _, used = ours(first + second)
    assert (env["wsgi.input"].read(), used) == (b"one", len(first))


def test_a_body_not_here_whole_is_left_to_gunicorn():
    assert ours(request(body=b"x" * 10)[:-1]) is None
    assert ours(request(body=b"x" * 10)[:20]) is None  # not even the head


def test_what_gunicorn_gives_a_meaning_of_its_own_is_left_to_it():
    odd = [
        request(headers=[b"Transfer-Encoding: chunked"], length=False),
        request(headers=[b"Expect: 100-continue"]),
        request(headers=[b"X-Forwarded-Proto: https"]),
        request(headers=[b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__"]),
        request(headers=[b"Connection: upgrade"]),
        request(headers=[b"X_Forwarded_For: 1.2.3.4"]),  # gunicorn drops it
        request(headers=[b"X-A: 1", b"X-A: 2"]),  # gunicorn joins them
        request(headers=[b"Host: other"]),  # given twice: gunicorn refuses it
        request(headers=[b"Content-Length: 0"]),
        request(headers=[b"X-Folded: a", b" b"]),
        request(headers=[b"X-Odd: caf\xc3\xa9"]),
        request(headers=[b"X-Nul: a\x00b"]),
        request(headers=[b"Bad Name: x"]),
        request(headers=[b"X-Space : x"]),
        request(target=b"/v1/channels/a%2Fb/messages"),
        request(target=b"//v1/health"),
        request(target=b"/v1/x#frag"),
        request(target=b"http://host/v1/health"),
        request(target=b"/" + b"a" * 5000),
        request(method=b"HEAD"),
        request(method=b"post"),
        request().replace(b"HTTP/1.1", b"HTTP/1.0"),
        request().replace(b"Content-Length: 0", b"Content-Length: +0"),
        request().replace(b"Content-Length: 0", b"Content-Length: 0x0"),
        request(headers=[b"X-%d: 1" % i for i in range(100)]),
    ]
    for data in odd:
        assert ours(data) is None, data


_NAMES = st.sampled_from([b"Content-Type", b"content-type", b"X-Key", b"Idempotency-Key",
                          b"Dropr-Priority", b"Authorization", b"Host", b"Connection",
                          b"Content-Length", b"Expect", b"Transfer-Encoding", b"X_Under",
                          b"X-Forwarded-Proto", b"Accept", b"X-A"])
_VALUES = st.one_of(st.sampled_from([b"close", b"keep-alive", b"chunked", b"100-continue",
                                     b"https", b"5", b" 7 ", b"-1", b"", b"a, b"]),
                    st.binary(max_size=12))


@hypothesis.settings(deadline=None, database=None, max_examples=150,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"Get"]),
                  target=st.one_of(st.sampled_from([b"/v1/batch", b"/v1/channels/c/messages",
                                                    b"/a?b=c", b"/a//b", b"/%41", b"*"]),
                                   st.binary(min_size=1, max_size=20).map(lambda b: b"/" + b)),
                  headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
                  body=st.binary(max_size=20), framed=st.booleans())
def test_every_request_read_here_is_read_alike_and_none_that_gunicorn_refuses(
        method, target, headers, body, framed):
    data = request(method, target, [n + b": " + v for n, v in headers], body, length=framed)
    try:
        gunicorns(data)
    except (gerrors.ParseException, StopIteration):
        assert ours(data) is None  # gunicorn refuses it: left to gunicorn, which does
        return
    except Exception:  # noqa: BLE001 - gunicorn fails otherwise: never read here either
        assert ours(data) is None
        return
    assert_read_alike(data)


def test_plain_requests_are_read_here_at_all():
    """The property above cannot pass by leaving everything to gunicorn."""
    assert ours(request(body=b"x")) is not None
    assert ours(request(b"GET", b"/v1/health", length=False)) is not None


def gunicorns_answer(status, headers, body, close):
    config = cfg()
    data = request(headers=[b"Connection: close"] if close else [])
    req = next(RequestParser(config, iter([data]), CLIENT))
    a, b = socket.socketpair()
    try:
        resp, _ = wsgi.create(req, a, CLIENT, SERVER, config)
        resp.start_response(status, list(headers))
        for chunk in body:
            resp.write(chunk)
        resp.close()
        a.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := b.recv(65536):
            out += chunk
        return out
    finally:
        a.close()
        b.close()


def without_date(answer):
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.startswith(b"Date: "))


def test_answers_are_gunicorns_bytes():
    cases = [
        ("201 Created", [("Content-Type", "application/json"), ("Content-Length", "12")],
         [b'{"id": "ab"}'], False),
        ("400 Bad Request", [("Content-Type", "application/json"), ("Content-Length", "2")],
         [b"{}"], True),
        ("204 No Content", [], [], False),
        ("200 OK", [("Content-Length", "5"), ("Retry-After", "3")], [b"ab", b"cde"], False),
    ]
    for status, headers, body, close in cases:
        answer = plain.Answer()
        answer.start_response(status, headers)
        assert without_date(answer.bytes(body, close)) == \
            without_date(gunicorns_answer(status, headers, body, close)), status


def test_an_answer_header_that_would_split_the_answer_is_refused():
    answer = plain.Answer()
    answer.start_response("200 OK", [("X-A", "a\r\nX-B: b")])
    try:
        answer.bytes([b""], False)
    except ValueError:
        return
    raise AssertionError("a header with CR LF was written")
