"""Bounds on the work a request may cost a receiver worker, each proven with a
time limit against the real receiver (gunicorn on loopback): the largest
meta the default limits allow, and clients that trickle their request line
and headers (over HTTP and HTTPS)."""

import http.client
import select
import shutil
import socket
import ssl
import threading
import time

import psutil
import pytest

from dropr.receiver import batch as batch_module
from tests.receiver import forms
from tests.receiver.test_hostile import A, meta_form, request
from tests.support import harness

pytestmark = pytest.mark.process


# -- the largest meta the default limits allow ----------------------------------------

def _largest_metas():
    """Bodies of meta at the largest size the default limits allow (10,000
    messages: about 5 MB), of the shapes that cost a naive reading most."""
    size = batch_module.meta_bytes_max(10_000) - 100
    return {
        "escaped quotes": b'"' + b'\\"' * (size // 2),  # quadratic for the former check
        "quotes": b'"' * size,
        "empty lists": b"[" + b"[]," * (size // 3 - 1) + b"[]]",
        "small objects": b'{"client":"a","messages":[' + b'{"a":1},' * (size // 8 - 5) + b"{}]}",
    }


def test_the_largest_meta_costs_a_worker_under_a_second(one_worker):
    """Each of these metas, sent to the real receiver at the default limits,
    is refused; the worker spends under a second of CPU on it, and
    /v1/health answers at once meanwhile."""
    workers = psutil.Process(one_worker.proc.pid).children(recursive=True)
    worker = next(p for p in workers if "worker" in " ".join(p.cmdline()))
    for name, meta in _largest_metas().items():
        raw = request("POST", "/v1/batch", auth=None, headers=[
            ("Content-Type", forms.CONTENT_TYPE)], body=meta_form(meta, A))
        port = int(one_worker.url.rsplit(":", 1)[1])
        before = sum(worker.cpu_times()[:2])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(raw)
            status, _ = harness.http_get(one_worker.url + "/v1/health", timeout=1)
            assert status == 200, name
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert 400 <= response.status < 500, (name, response.status, response.read())
        assert sum(worker.cpu_times()[:2]) - before < 1.0, name


# -- trickled request heads ---------------------------------------------------------

@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """A receiver of one worker process (four request threads) that cuts off a
    request head not in whole after HEAD_TIMEOUT seconds."""
    root = tmp_path_factory.mktemp("trickle")
    config_path = harness.write_config(root, sections={"receiver": {
        "workers": 1, "body_timeout": HEAD_TIMEOUT}})
    receiver = harness.Receiver(config_path).start()
    yield receiver
    receiver.stop()
    harness.remove_queues(root / "client")


HEAD_TIMEOUT = 5.0
#: A request head, sent one byte at a time.
TRICKLED = b"POST /v1/channels/orders/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: y\r\n" * 20


def _trickle(port, stop, closed_after, started, kept_alive=False):
    """Send TRICKLED a byte every 2 s until ``stop`` is set or the receiver
    closes the connection; note how long after the first byte it closed it.
    ``kept_alive``: on a connection that has had one request answered."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        if kept_alive:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):  # the health answer's JSON body
                chunk = sock.recv(4096)
                assert chunk, "the first request on the connection got no answer"
                answer += chunk
        start = time.monotonic()
        for i in range(len(TRICKLED)):
            try:
                sock.sendall(TRICKLED[i:i + 1])
            except OSError:  # reset: closed by the receiver
                break
            if i == 0:
                started.release()
            if stop.wait(2.0):
                return
            if select.select([sock], [], [], 0)[0]:
                try:
                    assert sock.recv(1) == b"", "a trickled head got an answer"
                except ConnectionResetError:
                    pass
                break
        closed_after.append(time.monotonic() - start)


@pytest.mark.parametrize("kept_alive", [False, True], ids=["new", "kept-alive"])
def test_trickled_headers_cannot_starve_health(one_worker, kept_alive, clients=8):
    """Clients that send their request line and headers a byte every 2 s (each
    gap under the timeout) hold no request thread: /v1/health answers at
    once all along, and each trickler is cut off once its head has taken
    HEAD_TIMEOUT seconds in all; also the next request's head on a
    connection kept alive after an answer."""
    port = int(one_worker.url.rsplit(":", 1)[1])
    stop, closed_after, started = threading.Event(), [], threading.Semaphore(0)
    threads = [threading.Thread(target=_trickle,
                                args=(port, stop, closed_after, started, kept_alive))
               for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        for _ in threads:
            assert started.acquire(timeout=10)
        answered = []
        deadline = time.monotonic() + HEAD_TIMEOUT + 1
        while time.monotonic() < deadline:
            start = time.monotonic()
            status, _ = harness.http_get(one_worker.url + "/v1/health", timeout=3)
            answered.append((status, time.monotonic() - start))
            time.sleep(0.5)
        assert all(status == 200 for status, _ in answered), answered
        assert max(took for _, took in answered) < 1.0, answered
        harness.wait_for(lambda: len(closed_after) == clients, HEAD_TIMEOUT + 10,
                         what="the receiver to cut off every trickling client")
        assert all(HEAD_TIMEOUT - 0.5 < took < HEAD_TIMEOUT + 4 for took in closed_after), \
            closed_after
    finally:
        stop.set()
        for t in threads:
            t.join()


@pytest.fixture(scope="module")
def https_one_worker(tmp_path_factory):
    """A receiver of one worker process over HTTPS, whose request threads read
    the TLS handshake and the request head themselves."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    from tests.test_tls import pki
    tls = pki.__wrapped__(tmp_path_factory)
    root = tmp_path_factory.mktemp("trickle-tls")
    port = harness.free_port()
    config_path = harness.write_config(root, port=port, sections={"receiver": {
        "workers": 1, "body_timeout": HEAD_TIMEOUT,
        "certfile": str(tls["cert"]), "keyfile": str(tls["key"])}},
        peers={"local": {"url": f"https://127.0.0.1:{port}", "ca_file": str(tls["ca"])}})
    receiver = harness.Receiver(config_path).start()
    yield receiver, tls["ca"]
    receiver.stop()
    harness.remove_queues(root / "client")


def test_trickled_headers_over_https_are_cut_off_at_the_deadline(https_one_worker):
    """Over HTTPS a request thread reads the head, a byte every half second
    (each gap under the timeout): it is cut off once the head has taken
    HEAD_TIMEOUT seconds in all, not when the head ends."""
    receiver, ca = https_one_worker
    port = int(receiver.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        start = time.monotonic()
        closed = None
        for i in range(len(TRICKLED)):
            if time.monotonic() - start > HEAD_TIMEOUT + 5:
                break
            try:
                sock.sendall(TRICKLED[i:i + 1])
            except OSError:
                closed = time.monotonic() - start
                break
            if select.select([sock], [], [], 0.5)[0]:
                try:
                    assert sock.recv(1) == b"", "a trickled head got an answer"
                except (ssl.SSLError, ConnectionResetError):
                    pass
                closed = time.monotonic() - start
                break
    assert closed is not None and HEAD_TIMEOUT - 0.5 < closed < HEAD_TIMEOUT + 4, closed
