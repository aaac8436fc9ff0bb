"""A TCP proxy in front of the receiver that injects HTTP faults, for the chaos run.

The senders talk to the receiver through it. It runs in threads of the chaos
process and is in one of three modes:

- ``pass``: bytes go both ways untouched;
- ``error``: every new connection gets ``500 Internal Server Error`` without
  the receiver ever seeing the request;
- ``stall``: requests still reach the receiver, but its answers are held back;
  when the stall ends those connections are cut, answers unread. The receiver
  has stored what the sender believes failed: the sender defers and re-sends,
  and the receiver must answer "duplicate".

Every change of mode cuts the connections made before it (kept-alive ones
included), except that a stall holds them until it ends.

Independently of the mode, :attr:`FaultProxy.rate` (bytes per second, None =
no limit) slows what the senders send to the receiver down, per connection:
a slow link, for a batch that is still on the wire when something happens.
"""

import selectors
import socket
import threading
import time

PASS, ERROR, STALL = "pass", "error", "stall"
_CHUNK = 1 << 16
_ERROR_BODY = b'{"error": {"code": "injected", "message": "fault injected by the chaos proxy"}}'
_ERROR_ANSWER = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(_ERROR_BODY), _ERROR_BODY))


class FaultProxy:
    """Listens on 127.0.0.1 (a free port, :attr:`port`) and forwards to
    ``upstream_port``; :meth:`set_mode` switches faults on and off. Runs in
    threads of the chaos process: one accepting, one per connection."""

    def __init__(self, upstream_port, *, host="127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.listener = socket.create_server((host, 0), backlog=256)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.mode = PASS
        self.rate = None  # bytes per second towards the receiver; None: no limit
        self.epoch = 0
        self._stopping = threading.Event()
        self._thread = None

    def start(self):
        """Start accepting in a background thread; returns self."""
        self._thread = threading.Thread(target=self._accept_loop, name="proxy", daemon=True)
        self._thread.start()
        return self

    def set_mode(self, mode):
        """Switch to ``mode`` (PASS, ERROR or STALL), cutting older connections."""
        self.mode = mode
        self.epoch += 1

    def close(self):
        """Stop accepting and end every connection."""
        self._stopping.set()
        self.epoch += 1
        if self._thread is not None:
            self._thread.join(5)
        self.listener.close()

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client):
        epoch, mode = self.epoch, self.mode
        with client:
            if mode == ERROR:
                self._answer_error(client)
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=2.0)
            except OSError:
                return  # receiver down: the sender sees the connection closed
            with upstream:
                self._pump(client, upstream, epoch)

    def _pump(self, client, upstream, epoch):
        other = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            held = False
            while not self._stopping.is_set():
                if self.epoch != epoch and self.mode != STALL:
                    return
                if self.mode == STALL and not held:
                    sel.unregister(upstream)  # hold the answers back until the stall ends
                    held = True
                for key, _ in sel.select(0.1):
                    if not self._forward(key.fileobj, other[key.fileobj], client):
                        return

    def _forward(self, src, dst, client):
        rate = self.rate if src is client else None
        try:
            data = src.recv(min(_CHUNK, max(1, int(rate / 10))) if rate else _CHUNK)
            if data:
                dst.settimeout(10.0)
                dst.sendall(data)
        except OSError:
            return False
        if data and rate:
            time.sleep(len(data) / rate)
        return bool(data)

    @staticmethod
    def _answer_error(client):
        client.settimeout(2.0)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < _CHUNK:
                data = client.recv(_CHUNK)
                if not data:
                    return
                head += data
            client.sendall(_ERROR_ANSWER)
            client.shutdown(socket.SHUT_WR)
            client.settimeout(1.0)
            while client.recv(_CHUNK):
                pass  # let the sender finish writing, so it reads the answer, not a reset
        except OSError:
            pass
