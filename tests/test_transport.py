"""The pycurl transport: the multipart body on the wire, keep-alive, how each
answer sorts into results / PeerError / BatchRefused, and the timeouts.

The peer here is a plain socket server in a thread with canned answers: it
shows the exact bytes libcurl sends and produces answers (503, 429, a peer that
never answers) that a healthy receiver cannot be made to give on demand."""

import contextlib
import json
import os
import socket
import threading
import time

import pycurl
import pytest

from dropr.config import PeerConfig
from dropr.errors import BatchRefused, Forbidden, PeerError, Unreadable
from dropr.spool import SpoolName
from dropr.sender.transport import Transport, _Body, _Form, probe
from tests.support import harness


class CannedPeer:
    """An HTTP/1.1 server on loopback that records each request and answers from
    a list of (status, body); ``stall=True`` accepts connections and never answers."""

    def __init__(self, answers=(), *, stall=False):
        self.answers = list(answers)
        self.stall = stall
        self.requests = []  # (head, body)
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._held = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for conn in self._held:  # wakes a reader blocked on a kept-alive connection
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._held.append(conn)
            if self.stall:
                continue  # accepted, never answered
            with conn:
                self._converse(conn)

    def _converse(self, conn):
        reader = conn.makefile("rb")
        while not self._stop.is_set():
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                if not line:
                    return
                head += line
            length = 0
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            self.requests.append((head.decode(), reader.read(length)))
            status, body = self.answers.pop(0) if self.answers else (200, b'{"results": {}}')
            conn.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))


def peer_at(url, *, timeout=5.0, connect_timeout=2.0):
    return PeerConfig(name="p", url=url, connect_timeout=connect_timeout, timeout=timeout)


def make_batch(tmp_path, bodies):
    batch = []
    for i, body in enumerate(bodies):
        name = SpoolName(i % 10, f"ID{i}", "p", f"ch-{i}")
        path = tmp_path / str(name)
        path.write_bytes(body)
        batch.append((name, path, len(body)))
    return batch


def parts_of(head, body):
    boundary = head.split("boundary=", 1)[1].split("\r\n", 1)[0].encode()
    chunks = body.split(b"--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        headers, _, content = chunk[2:-2].partition(b"\r\n\r\n")
        parts.append((headers.decode(), content))
    return parts


def results_for(batch, status="stored"):
    return json.dumps({"results": {n.id: {"status": status} for n, _, _ in batch}}).encode()


def test_batch_is_meta_then_one_file_part_per_message_in_order(tmp_path):
    batch = make_batch(tmp_path, [b"", b"x", bytes(range(256)) * 4, b"\r\n--tricky\r\n"])
    with CannedPeer([(200, results_for(batch))]) as peer:
        results = Transport(peer_at(peer.url), client="host-1").send(batch)
    assert results == {n.id: {"status": "stored"} for n, _, _ in batch}
    (head, body), = peer.requests
    assert head.startswith("POST /v1/batch HTTP/1.1\r\n")
    assert "expect:" not in head.lower()
    assert f"content-length: {len(body)}" in head.lower()
    parts = parts_of(head, body)
    meta_headers, meta = parts[0]
    assert 'name="meta"' in meta_headers and "Content-Type: application/json" in meta_headers
    assert json.loads(meta) == {"client": "host-1", "messages": [
        {"id": n.id, "channel": n.channel, "priority": n.priority, "size": size}
        for n, _, size in batch]}
    for (headers, content), (name, path, _) in zip(parts[1:], batch, strict=True):
        assert f'name="{name.id}"; filename="{name.id}"' in headers
        assert "Content-Type: application/octet-stream" in headers
        assert content == path.read_bytes()


def test_one_connection_is_kept_alive_across_batches(tmp_path):
    batch = make_batch(tmp_path, [b"a", b"b"])
    with CannedPeer() as peer:
        transport = Transport(peer_at(peer.url), client="c")
        for _ in range(3):
            transport.send(batch)
        transport.close()
    assert len(peer.requests) == 3 and peer.connections == 1


@pytest.mark.parametrize("status", [500, 502, 503, 507, 408, 429, 401, 404, 405])
def test_transient_answers_raise_peer_error(tmp_path, status):
    body = json.dumps({"error": {"code": "busy", "message": "try later"}}).encode()
    with CannedPeer([(status, body)]) as peer:
        with pytest.raises(PeerError, match=f"HTTP {status} busy: try later"):
            Transport(peer_at(peer.url), client="c").send(make_batch(tmp_path, [b"m"]))


def test_403_raises_forbidden_and_is_not_tried_at_the_next_url(tmp_path):
    body = json.dumps({"error": {"code": "forbidden", "message": "not channel x"}}).encode()
    with CannedPeer([(403, body)]) as a, CannedPeer([(200, b'{"results": {}}')]) as b:
        peer = PeerConfig(name="p", url=a.url, urls=(a.url, b.url))
        transport = Transport(peer, client="c")
        with pytest.raises(Forbidden, match="HTTP 403 forbidden: not channel x") as info:
            transport.send(make_batch(tmp_path, [b"m"]))
    assert not isinstance(info.value, PeerError)
    assert b.requests == [] and transport.down_urls() == {}


@pytest.mark.parametrize("status", [400, 411, 413, 415, 422])
def test_permanent_4xx_raise_batch_refused_with_status_and_code(tmp_path, status):
    body = json.dumps({"error": {"code": "malformed", "message": "parts do not match"}}).encode()
    with CannedPeer([(status, body)]) as peer:
        with pytest.raises(BatchRefused) as info:
            Transport(peer_at(peer.url), client="c").send(make_batch(tmp_path, [b"m"]))
    assert info.value.status == status and info.value.code == "malformed"
    assert "parts do not match" in str(info.value)
    assert not isinstance(info.value, PeerError)


@pytest.mark.parametrize("body", [b"", b"<html>ok</html>", b'{"results": []}'])
def test_a_200_without_a_results_table_is_transient(tmp_path, body):
    with CannedPeer([(200, body)]) as peer:
        with pytest.raises(PeerError, match="without a results table"):
            Transport(peer_at(peer.url), client="c").send(make_batch(tmp_path, [b"m"]))


def test_unreadable_message_file_raises_before_anything_is_sent(tmp_path):
    batch = make_batch(tmp_path, [b"a", b"b"])
    batch[1][1].unlink()
    with CannedPeer() as peer:
        with pytest.raises(Unreadable) as info:
            Transport(peer_at(peer.url), client="c").send(batch)
    assert info.value.message_id == "ID1" and peer.requests == []


def test_connection_refused_is_a_quick_peer_error(tmp_path):
    peer = peer_at(f"http://127.0.0.1:{harness.free_port()}")
    started = time.monotonic()
    with pytest.raises(PeerError, match="curl error 7"):
        Transport(peer, client="c").send(make_batch(tmp_path, [b"m"]))
    assert time.monotonic() - started < 1.0


def test_peer_that_accepts_but_never_answers_is_cut_off_after_the_timeout(tmp_path):
    with CannedPeer(stall=True) as server:
        peer = peer_at(server.url, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(PeerError, match="curl error 28"):
            Transport(peer, client="c").send(make_batch(tmp_path, [b"m" * 1000]))
        elapsed = time.monotonic() - started
    assert server.connections == 1
    assert 0.45 <= elapsed < 2.0


def test_probe_reports_readiness_and_the_reason_it_failed():
    with CannedPeer([(200, b'{"status": "ok"}'), (503, b'{"error": {"code": "not_ready", '
                                                       b'"message": "starting"}}')]) as server:
        assert probe(peer_at(server.url), timeout=2.0) == (True, "")
        ok, reason = probe(peer_at(server.url), timeout=2.0)
    assert not ok and "HTTP 503 not_ready: starting" in reason
    assert server.requests[0][0].startswith("GET /v1/ready HTTP/1.1\r\n")
    ok, reason = probe(peer_at(f"http://127.0.0.1:{harness.free_port()}"), timeout=1.0)
    assert not ok and "curl error 7" in reason


def test_a_body_read_again_from_its_start_is_the_same(tmp_path):
    # libcurl rewinds the body to resend it on a fresh connection when the
    # kept-alive one was closed under it.
    batch = make_batch(tmp_path, [b"a" * 5000, b"b", b""])
    body = _Body(_Form('{"client":"c"}', batch))
    first = b"".join(iter(lambda: body.read(1000), b""))
    assert len(first) == body.length
    assert body.seek(0, os.SEEK_SET) == pycurl.SEEKFUNC_OK
    assert b"".join(iter(lambda: body.read(4096), b"")) == first
    assert body.seek(1234, os.SEEK_SET) == pycurl.SEEKFUNC_OK
    assert body.read(10**6) == first[1234:]
    body.close()


def test_a_message_file_shorter_than_claimed_stops_the_upload_as_unreadable(tmp_path):
    batch = make_batch(tmp_path, [b"a", b"bbbb"])
    batch[1][1].write_bytes(b"bb")  # claimed at 4 bytes
    with CannedPeer() as peer:
        with pytest.raises(Unreadable) as info:
            Transport(peer_at(peer.url), client="c").send(batch)
    assert info.value.message_id == "ID1" and peer.requests == []
