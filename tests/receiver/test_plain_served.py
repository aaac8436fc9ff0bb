"""Plain requests through the real receiver (gunicorn): requests sent
back to back in one write are answered in order and stored; a kept-alive
connection is closed, saying so, after KEEPALIVE_REQUESTS requests; a call
waiting for its responder holds up no plain request; and with fsync on (a
request thread serves them) the same holds."""

import json
import socket
import threading
import time
import urllib.request

import psutil
import pytest

from dropr.receiver.plain import KEEPALIVE_REQUESTS
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process


def start(root, **receiver):
    sections = {"receiver": {"workers": 1, **receiver},
                "receiver.responders.slow": {"command": ["sh", "-c", "sleep 1.5; echo done"]}}
    return harness.Receiver(harness.write_config(root, sections=sections)).start()


@pytest.fixture(scope="module", params=[False, True], ids=["fsync-off", "fsync-on"])
def running(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    receiver = start(root, fsync=request.param)
    yield receiver
    receiver.stop()
    harness.remove_queues(root / "client")


def post(channel, body, extra=b""):
    return (b"POST /v1/channels/%s/messages HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"%s\r\n%s" % (channel.encode(), len(body), extra, body))


def answers(sock, n):
    """The next ``n`` answers on ``sock``: [(status, headers, body)]; reads
    until the server has sent them all."""
    got, buf = [], b""
    sock.settimeout(10)
    while len(got) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1").split("\r\n")
            headers = {name.lower(): value for name, value in
                       (line.split(": ", 1) for line in head[1:])}
            length = int(headers.get("content-length", 0))
            if len(buf) >= end + 4 + length:
                got.append((int(head[0].split()[1]), headers, buf[end + 4:end + 4 + length]))
                buf = buf[end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(got)} answers"
        buf += chunk
    return got


def responding(receiver):
    """Whether the slow responder runs under the receiver."""
    return any("sleep 1.5; echo done" in " ".join(p.cmdline())
               for p in psutil.Process(receiver.proc.pid).children(recursive=True))


def connect(receiver):
    host, port = receiver.config.receiver.bind.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_requests_sent_back_to_back_are_answered_in_order_and_stored(running):
    bodies = [b"first", b"second" * 100, b"third"]
    with connect(running) as sock:
        sock.sendall(b"".join(post("piped", body) for body in bodies))
        got = answers(sock, 3)
    assert [status for status, _, _ in got] == [201, 201, 201]
    ids = [json.loads(body)["id"] for _, _, body in got]
    store = Store(running.config.receiver.store, fsync=False)
    assert [store.get("piped", i).read() for i in ids] == bodies


def test_a_connection_carries_keepalive_requests_then_is_closed(running):
    with connect(running) as sock:
        for n in range(1, KEEPALIVE_REQUESTS + 1):
            sock.sendall(post("kept", b"x"))
            (status, headers, _), = answers(sock, 1)
            assert status == 201
            assert headers["connection"] == ("close" if n == KEEPALIVE_REQUESTS
                                             else "keep-alive"), n
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed by the receiver


def test_a_waiting_call_holds_up_no_plain_request(running):
    url = "http://" + running.config.receiver.bind + "/v1/channels/slow/calls"
    called = []

    def call():
        req = urllib.request.Request(url, data=b"?", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            called.append((r.status, r.read(), time.monotonic()))

    caller = threading.Thread(target=call)
    caller.start()
    try:
        # The call is under way (its responder sleeps 1.5 s) in the one worker.
        harness.wait_for(lambda: responding(running), timeout=10, what="the call's responder")
        started = time.monotonic()
        with connect(running) as sock:
            sock.sendall(post("meanwhile", b"x"))
            (status, _, _), = answers(sock, 1)
        answered = time.monotonic()
    finally:
        caller.join(15)
    assert status == 201
    assert called and called[0][:2] == (200, b"done\n")
    assert answered < called[0][2], "the plain POST waited for the call"
    assert answered - started < 1.0


@pytest.mark.parametrize("extra", [b"", b"X-Forwarded-Proto: http\r\n"],
                         ids=["plain", "read-by-gunicorn"])
def test_a_client_slow_to_close_holds_up_no_other(running, extra):
    # The answer says close; the client reads it but keeps its socket open.
    # A close that waits for the client in the event loop (gunicorn's own,
    # up to 2 s) would hold up every other connection of the one worker.
    with connect(running) as lazy:
        lazy.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n" % extra)
        (status, headers, _), = answers(lazy, 1)
        assert (status, headers["connection"]) == (200, "close")
        started = time.monotonic()
        with connect(running) as other:
            other.sendall(post("meanwhile", b"x"))
            (status, _, _), = answers(other, 1)
        assert status == 201
        assert time.monotonic() - started < 1.0
        lazy.settimeout(5)
        assert lazy.recv(1) == b""  # and the receiver did close its side
