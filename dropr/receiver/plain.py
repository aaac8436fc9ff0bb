"""The receiver's quick reading of a plain HTTP/1.1 request: the common
request whose head and body have arrived whole, read and answered without
gunicorn's parser, response object and request thread.

Only a request that gunicorn would read the same way is read here; anything
else is left to gunicorn (:meth:`PlainRequests.read` returns ``None``), which
reads it as before and answers or refuses it itself. Left to gunicorn are: a
method other than GET, POST, PUT and DELETE; a version other than HTTP/1.1;
a target that is not a plain origin-form path (a ``%``, ``#``, ``//`` or any
character outside the path's and query's own); a header name that is not
letters, digits and ``-``, a value with a control or non-ASCII byte, any
header given twice; ``Transfer-Encoding``, ``Expect``, ``Upgrade``,
``HTTP2-Settings`` and the scheme headers gunicorn takes from proxies; a
``Connection`` other than ``keep-alive`` or ``close``; a ``Content-Length``
that is not plain digits; a head over gunicorn's limits; and a body that has
not arrived whole. The app then sees the environ gunicorn would have built,
so its own strict checks (:mod:`dropr.receiver.strict`) hold for both.

The answer is gunicorn's too (status line, ``Server``, ``Date``,
``Connection``, then the app's headers and body), written in one send.

Where the store answers without waiting (the files store without fsync), a
plain request is served in the worker's event loop itself, with no hand-over
to a request thread and back; elsewhere (fsync, JetStream), and for a call,
which waits for its responder, in a request thread as before.

Runs in receiver worker processes (see :mod:`dropr.receiver.worker`).
"""

import collections
import contextlib
import functools
import io
import os
import re
import selectors
import socket
import struct
import time
from email.utils import formatdate

from gunicorn import SERVER, SERVER_SOFTWARE, util
from gunicorn.http.message import MAX_REQUEST_LINE
from gunicorn.http.wsgi import FileWrapper, WSGIErrorsWrapper
from gunicorn.workers import gthread

from dropr.receiver.calls import waits

#: Requests a kept-alive connection carries before the worker closes it
#: (after its answer, which says so): the client reconnects, and the worker
#: least busy accepts, so that a worker recycled or busy does not leave
#: its clients piled on the others for good (nginx's keepalive_requests).
KEEPALIVE_REQUESTS = 100
#: A closing connection's client has this long to close its side, and may send
#: this much meanwhile (gunicorn's own lingering close: 2 s, 64 KiB).
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
LINGER_READ_BYTES = 16 * 1024
#: The methods read here (a HEAD's answer has no body: left to gunicorn).
METHODS = {b"GET": "GET", b"POST": "POST", b"PUT": "PUT", b"DELETE": "DELETE"}
#: An origin-form target: a path and an optional query of RFC 3986's own
#: characters, without a percent-escape (the path is then its own decoding).
_TARGET = re.compile(rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*)?")
_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*")
#: Any byte that is not visible ASCII, a space or a tab.
_ODD_BYTE = re.compile(rb"[^\x20-\x7e\t]")
#: Header fields that gunicorn gives a meaning of its own.
_GUNICORNS = frozenset((b"TRANSFER-ENCODING", b"EXPECT", b"UPGRADE", b"HTTP2-SETTINGS"))
#: What gunicorn refuses in a value of the app's headers.
_BREAK = re.compile(r"[\0\r\n]")
#: Hop-by-hop fields of an answer: gunicorn drops them from the app's headers.
_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                  "te", "trailers", "transfer-encoding", "upgrade"))
#: A Content-Length of more digits than this is left to gunicorn (and refused).
_LENGTH_DIGITS = 18


def serves(cfg, server):
    """Whether requests on a listener at ``server`` (its address) under
    gunicorn's ``cfg`` may be read here: plain HTTP on TCP, no PROXY protocol,
    no ``SCRIPT_NAME`` in the environment (gunicorn would cut it off the path)."""
    return (isinstance(server, tuple) and not cfg.is_ssl
            and getattr(cfg, "proxy_protocol", "off") in ("off", False, None)
            and not os.environ.get("SCRIPT_NAME"))


class PlainRequests:
    """Reads plain requests for one worker process under gunicorn's ``cfg``."""

    def __init__(self, cfg):
        self.line_max = min(cfg.limit_request_line, MAX_REQUEST_LINE) or MAX_REQUEST_LINE
        self.fields_max = cfg.limit_request_fields if cfg.limit_request_fields > 0 else 100
        self.fields_max = min(self.fields_max, 100)
        self.field_max = (cfg.limit_request_field_size if cfg.limit_request_field_size > 0
                          else 8190)
        self.refused = _GUNICORNS | {name.upper().encode("latin-1")
                                     for name in cfg.secure_scheme_headers}
        self.base = {
            "wsgi.errors": WSGIErrorsWrapper(cfg),
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": cfg.workers > 1,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "wsgi.url_scheme": "http",
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SCRIPT_NAME": "",
        }

    def read(self, buf, sock, client, server):
        """``(environ, close, used)`` for the request at the start of ``buf``
        (bytes that arrived on ``sock`` from ``client``, for the listener at
        ``server``), or ``None`` if it is not a plain request whose body is
        all in ``buf``. ``close``: the client asked to close after the
        answer; ``used``: how many bytes of ``buf`` the request took (the
        rest is the client's next request)."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(buf[:end]).split(b"\r\n")
        method, _, rest = lines[0].partition(b" ")
        target, _, version = rest.partition(b" ")
        method = METHODS.get(method)
        if (method is None or version != b"HTTP/1.1" or len(lines[0]) >= self.line_max
                or len(lines) > self.fields_max + 1 or not _TARGET.fullmatch(target)
                or b"//" in target.partition(b"?")[0]):
            return None
        env = self.base.copy()
        length = 0
        close = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or len(line) + 2 > self.field_max or not _NAME.fullmatch(name):
                return None
            value = value.strip(b" \t")
            name = name.upper()
            if _ODD_BYTE.search(value) or name in self.refused:
                return None
            if name == b"CONTENT-LENGTH":
                if not value.isdigit() or len(value) > _LENGTH_DIGITS:
                    return None
                key, length = "CONTENT_LENGTH", int(value)
            elif name == b"CONTENT-TYPE":
                key = "CONTENT_TYPE"
            else:
                if name == b"CONNECTION":
                    token = value.lower()
                    if token == b"close":
                        close = True
                    elif token != b"keep-alive":
                        return None
                key = "HTTP_" + name.decode("ascii").replace("-", "_")
            if key in env:  # given twice: gunicorn joins or refuses it
                return None
            env[key] = value.decode("latin-1")
        start = end + 4
        if len(buf) - start < length:
            return None
        target = target.decode("ascii")
        path, _, query = target.partition("?")
        env["REQUEST_METHOD"] = method
        env["RAW_URI"] = target
        env["PATH_INFO"] = path
        env["QUERY_STRING"] = query
        env["wsgi.input"] = io.BytesIO(bytes(buf[start:start + length]))
        env["gunicorn.socket"] = sock
        env["REMOTE_ADDR"] = client[0] if isinstance(client, tuple) else str(client)
        if isinstance(client, tuple):
            env["REMOTE_PORT"] = str(client[1])
        env["SERVER_NAME"] = str(server[0])
        env["SERVER_PORT"] = str(server[1])
        return env, close, start + length


class Answer:
    """The app's answer to one plain request: ``start_response`` for the app,
    then :meth:`bytes` for the wire."""

    __slots__ = ("status", "headers", "written")

    def __init__(self):
        self.status = None
        self.headers = ()
        self.written = []

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None and self.status is not None:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        self.headers = headers
        return self.written.append  # WSGI's write(): kept for the answer

    def bytes(self, body, close):
        """The whole answer, head and ``body`` (the app's chunks), that ends
        the connection if ``close``."""
        if self.status is None:
            raise RuntimeError("the app returned without starting a response")
        code = int(self.status[:3])
        head = [f"HTTP/1.1 {self.status}\r\nServer: {SERVER}\r\nDate: {_date()}\r\n"
                f"Connection: {'close' if close else 'keep-alive'}\r\n"]
        length = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered in _HOP:
                continue
            if _BREAK.search(value) or not _NAME.fullmatch(name.encode("latin-1")):
                raise ValueError(f"the app's header {name!r} is not one HTTP allows")
            length = length or lowered == "content-length"
            head.append(f"{name}: {value}\r\n")
        payload = b"".join(self.written) + b"".join(body)
        if code < 200 or code in (204, 304):
            payload = b""
        elif not length:
            head.append(f"Content-Length: {len(payload)}\r\n")
        head.append("\r\n")
        return "".join(head).encode("latin-1") + payload


class PlainServing:
    """The part of the receiver's gunicorn worker (worker.ThreadWorker) that
    serves plain requests. Its methods run in the worker's event loop but
    where they say "in a request thread". Needs ``self.plain`` (a
    :class:`PlainRequests`, or None: none are read here) and
    ``self.plain_inline`` (serve them in the event loop itself)."""

    def enqueue_req(self, conn):
        """Serve ``conn``'s next request, whose head is here: a plain one (see
        plain.py) without gunicorn's parser, any other in a request thread."""
        head = getattr(conn, "head", None)
        if self.plain is not None and head is not None and serves(self.cfg, conn.server):
            request = self.plain.read(head, conn.sock, conn.client, conn.server)
            if request is not None:
                conn.head = None
                if self.plain_inline and not waits(request[0]["PATH_INFO"]):
                    return self._serve_plain_here(conn, head, request)
                future = self.tpool.submit(self._serve_plain_in_thread, conn, head, request)
                future.add_done_callback(
                    lambda f: self.method_queue.defer(self._plain_served, conn, f))
                return None
        return super().enqueue_req(conn)

    def _serve_plain_here(self, conn, head, request):
        """Serve plain requests of ``conn`` in the event loop, one after the
        other while the next is here whole. An answer the socket does not
        take at once is finished in a request thread."""
        while True:
            env, close, used = request
            answer, keep = self._answer_plain(conn, env, close)
            try:
                sent = conn.sock.send(answer)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return self.close_lingering(conn)
            head = head[used:]
            if sent < len(answer):
                future = self.tpool.submit(self._send_rest, conn, answer[sent:], keep, head)
                future.add_done_callback(
                    lambda f: self.method_queue.defer(self._plain_served, conn, f))
                return None
            if not keep:
                return self.close_lingering(conn)
            if not head:
                return self._plain_keep(conn)
            request = self.plain.read(head, conn.sock, conn.client, conn.server)
            if request is None:  # not plain, or not here whole: the usual way
                return self.gather_head(conn, head)

    def _serve_plain_in_thread(self, conn, head, request):
        """In a request thread: serve one plain request; (keep, what followed it)."""
        env, close, used = request
        answer, keep = self._answer_plain(conn, env, close)
        return self._send_rest(conn, answer, keep, head[used:])

    def _send_rest(self, conn, data, keep, head):
        """In a request thread: write ``data`` whole; (keep, head) for _plain_served."""
        conn.sock.setblocking(True)
        util.write(conn.sock, data)
        return keep, head

    def _plain_served(self, conn, future):
        """In the event loop, after a request thread served a plain request."""
        if future.cancelled() or future.exception() is not None:
            exc = None if future.cancelled() else future.exception()
            if isinstance(exc, BlockingIOError):  # the kernel's send timeout
                self.log.warning("Cut off a client that stalled: nothing sent or taken "
                                 "for body_timeout s")
                conn.cut_off = True
            elif not isinstance(exc, (OSError, type(None))):
                self.log.error("Error answering a request", exc_info=exc)
            return self.close_lingering(conn)
        keep, head = future.result()
        if not keep:
            return self.close_lingering(conn)
        conn.sock.setblocking(False)
        if head:
            return self.gather_head(conn, head)
        return self._plain_keep(conn)

    def _answer_plain(self, conn, env, close):
        """Run the app for a plain request: (the answer's bytes, keep-alive).
        Counts the request toward max_requests as gunicorn does."""
        self.nr += 1
        conn.served = getattr(conn, "served", 0) + 1
        close = close or conn.served >= KEEPALIVE_REQUESTS
        if self.nr >= self.max_requests:
            if self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
        close = (close or not self.alive or not self.cfg.keepalive
                 or len(self.keepalived_conns) >= self.max_keepalived)
        answer = Answer()
        try:
            body = self.wsgi(env, answer.start_response)
            try:
                chunks = list(body)
            finally:
                if hasattr(body, "close"):
                    body.close()
            return answer.bytes(chunks, close), not close
        except Exception:
            self.log.exception("Error handling request %s", env.get("RAW_URI"))
            return SERVER_ERROR, False

    def _plain_keep(self, conn):
        """Keep ``conn`` open for its next request, as gunicorn does."""
        conn.set_timeout()
        if not self.alive:
            conn.timeout = min(conn.timeout, time.monotonic() + gthread.STOP_KEEPALIVE_LINGER)
        self.keepalived_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             functools.partial(self.on_client_socket_readable, conn))

    def init_process(self):
        self.lingering = collections.deque()  # connections closing, by deadline
        super().init_process()

    def close_lingering(self, conn):
        """Close ``conn`` as gunicorn does, but without the event loop waiting
        for the client: the write side is shut at once, and what the client
        still sends is drained by the poller until it closes its side (at
        most LINGER_BYTES, LINGER_SECONDS), so that the last answer is not
        cut off by a reset. gunicorn drains in the event loop itself, which
        stalled every other connection of the worker up to 2 s for a client
        slow to close. A client cut off for not taking its answer is reset
        at once instead: what is still unsent is of no use to it."""
        self.nr_conns -= 1
        if getattr(conn, "cut_off", False):
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            util.close(conn.sock)
            return
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            util.close(conn.sock)
            return
        conn.linger_deadline = time.monotonic() + LINGER_SECONDS
        conn.lingered = 0
        self.lingering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             functools.partial(self._drain_lingering, conn))

    def _drain_lingering(self, conn, sock):
        try:
            data = sock.recv(LINGER_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.lingered += len(data)
        if not data or conn.lingered >= LINGER_BYTES:
            self._end_lingering(conn)

    def _end_lingering(self, conn):
        self.lingering.remove(conn)
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        util.close(conn.sock)

    def murder_pending(self):
        """Also close the lingering connections whose client has not closed
        by their deadline (the event loop calls this about once a second)."""
        super().murder_pending()
        now = time.monotonic()
        while self.lingering and self.lingering[0].linger_deadline <= now:
            self._end_lingering(self.lingering[0])


#: SO_LINGER on, for 0 s: close() resets the connection, dropping what is unsent.
_RESET = struct.pack("ii", 1, 0)

_dated = [0, ""]


def _date():
    """The Date header's value, made once a second."""
    now = int(time.time())
    if _dated[0] != now:
        _dated[:] = [now, formatdate(now, usegmt=True)]
    return _dated[1]


#: The answer when the app itself failed (it answers its own errors in JSON).
_FAILED = b'{"error": {"code": "internal_error", "message": "internal error"}}'
SERVER_ERROR = (b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(_FAILED), _FAILED))
