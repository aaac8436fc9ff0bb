"""A client that asks and never reads its answer is cut off once the answer
has waited ``body_timeout`` seconds for it, over HTTP and over HTTPS: as many
such clients as a worker has request threads no longer hold them for good.
The real receiver (one worker) answers each with a direct message's reply
(a ``cat`` responder echoing 8 MiB, more than loopback's socket buffers
hold), so every one of them waits on its write."""

import socket
import ssl

import pytest

from dropr.receiver.serve import THREADS
from tests.support import harness
from tests.test_tls import pki  # noqa: F401 (the fixture: a CA and a certificate)

pytestmark = pytest.mark.process

BODY_TIMEOUT = 1.5
ANSWER = 8 << 20
#: How long the test waits for a request thread: the cut-off, then room to spare.
DEADLINE = BODY_TIMEOUT * 4 + 20


@pytest.fixture(scope="module", params=["http", "https"])
def served(request, tmp_path_factory):
    """(receiver, TLS context or None): one worker, an ``echo`` responder."""
    root = tmp_path_factory.mktemp(f"unread-{request.param}")
    receiver_keys = {"workers": 1, "body_timeout": BODY_TIMEOUT, "max_message_bytes": 0}
    port, context, peers = harness.free_port(), None, None
    if request.param == "https":
        certs = request.getfixturevalue("pki")
        receiver_keys.update(certfile=str(certs["cert"]), keyfile=str(certs["key"]))
        context = ssl.create_default_context(cafile=str(certs["ca"]))
        peers = {"local": {"url": f"https://127.0.0.1:{port}", "ca_file": str(certs["ca"])}}
    path = harness.write_config(root, port=port, peers=peers, sections={
        "receiver": receiver_keys,
        "receiver.responders.echo": {"command": ["cat"], "max_reply_bytes": 2 * ANSWER,
                                     "max_concurrent": 2 * THREADS, "timeout": 60.0}})
    receiver = harness.Receiver(path).start()
    yield receiver, context
    receiver.stop()
    harness.remove_queues(root / "client")


def test_clients_that_never_read_their_answers_are_cut_off(served):
    receiver, context = served
    port = int(receiver.url.rsplit(":", 1)[1])
    body = b"x" * ANSWER
    ask = (f"POST /v1/channels/echo/calls HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    stuck = []
    try:
        for _ in range(THREADS):
            sock = _connect(port, context, stuck, rcvbuf=4096)  # full at once
            sock.sendall(ask)  # and never a read
        harness.wait_for(lambda: all(_reset(sock) for sock in stuck), DEADLINE,
                         what="the receiver to reset every client that does not read")
        assert _health_over_http_1_0(port, context)  # a request thread serves again
        for sock in stuck:  # each was dropped before its answer was whole
            assert len(_read_to_end(sock)) < ANSWER
    finally:
        for sock in stuck:
            sock.close()


def _connect(port, context, opened, *, rcvbuf=None):
    """A connection to the receiver (over TLS with ``context``), appended to
    ``opened`` as soon as it exists."""
    sock = socket.socket()
    opened.append(sock)
    sock.settimeout(DEADLINE)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    if context is not None:
        sock = opened[-1] = context.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def _reset(sock):
    """True once the receiver has reset the connection (TCP_CLOSE), seen
    without reading what it sent before."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE


_TCP_CLOSE = 7


def _health_over_http_1_0(port, context):
    """True if GET /v1/health over HTTP/1.0 (only a request thread serves it)
    is answered 200 within a second."""
    opened = []
    try:
        sock = _connect(port, context, opened)
        sock.settimeout(1.0)
        sock.sendall(b"GET /v1/health HTTP/1.0\r\n\r\n")
        return sock.recv(64).split(b" ")[1:2] == [b"200"]
    except (TimeoutError, ssl.SSLError):
        return False
    finally:
        for sock in opened:
            sock.close()


def _read_to_end(sock):
    """What the receiver sent before it closed the connection."""
    sock.settimeout(DEADLINE)
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return bytes(data)
