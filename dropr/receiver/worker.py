"""The gunicorn worker class of the receiver: gunicorn's threaded worker,
which reads and answers plain requests itself (see :mod:`dropr.receiver.plain`),
closes a kept-alive connection after ``plain.KEEPALIVE_REQUESTS`` requests,
and has three changes for clients that misbehave before the app sees a request:

- the requests gunicorn refuses itself (a malformed request line or header,
  an over-long URL, a broken chunked body) are answered with the same JSON
  error body as every other refusal instead of gunicorn's HTML page;
- over plain HTTP, the request line and headers are gathered by the worker's
  event loop, without a request thread, and must arrive in whole within
  ``[receiver] body_timeout`` seconds: a request thread takes a request once
  its head is complete. gunicorn hands a connection to a thread at its first
  byte and its socket timeout only limits the gap between two bytes, so four
  clients sending a header byte every two seconds held every thread of a
  worker for good, and nobody else was served;
- where a request thread reads a head itself (over HTTPS, where gunicorn
  also reads the TLS handshake in the thread, or a head over 64 KiB), the
  same total deadline holds: the event loop shuts the connection down at
  its deadline, which ends the thread's read. A socket timeout also cuts
  off a client that stops sending for ``[receiver] body_timeout`` seconds.

Runs in receiver worker processes.
"""

import collections
import errno
import functools
import json
import logging
import selectors
import socket
import struct
import time

from gunicorn import util
from gunicorn.http import errors as gerrors
from gunicorn.http.unreader import Unreader
from gunicorn.workers import gthread

from dropr.receiver import plain
from dropr.receiver.limits import BODY_TIMEOUT_ENV


class _Absent(Exception):
    """Stands in for an error class that an older gunicorn does not have."""


def _error_class(name):
    return getattr(gerrors, name, _Absent)


#: (error class, status, code) for the refusals that are not a plain 400; the
#: same statuses gunicorn gives them.
_STATUS = (
    (_error_class("LimitRequestLine"), 414, "uri_too_long"),
    (_error_class("LimitRequestHeaders"), 431, "request_header_fields_too_large"),
    (_error_class("ForbiddenProxyRequest"), 403, "forbidden"),
    (_error_class("ExpectationFailed"), 417, "expectation_failed"),
    (_error_class("UnsupportedTransferCoding"), 501, "not_implemented"),
)
#: Errors in the app's own answer, or in gunicorn's configuration: not the
#: client's fault, left to gunicorn (logged with a traceback, answered 500).
_NOT_THE_CLIENT = (_error_class("InvalidResponseHeader"),
                   _error_class("InvalidResponseHeaderName"),
                   _error_class("ConfigurationProblem"))
#: The most bytes of a request's head that the event loop gathers; a longer
#: head (gunicorn allows up to 100 header lines of 8 KiB) is handed to a
#: request thread as it is, to be read on there (or refused) by gunicorn.
HEAD_BUFFER_BYTES = 64 * 1024
#: Bytes asked of a connection at a time while its head is gathered.
HEAD_READ_BYTES = 16 * 1024
#: Headers a request may give once only. gunicorn keeps the last Content-Type
#: or Host and joins the others with commas, while a proxy or validator in
#: front may take the first: a request that gives one twice is refused.
SINGLE_HEADERS = frozenset(("HOST", "CONTENT-TYPE", "CONTENT-LENGTH", "TRANSFER-ENCODING",
                            "AUTHORIZATION", "IDEMPOTENCY-KEY", "DROPR-PRIORITY"))
_PHRASES = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long",
            417: "Expectation Failed", 431: "Request Header Fields Too Large",
            501: "Not Implemented"}


def refusal(exc):
    """``(status, code, message)`` for a request gunicorn could not parse, or
    ``None`` if ``exc`` is not such a refusal."""
    if not isinstance(exc, gerrors.ParseException) or isinstance(exc, _NOT_THE_CLIENT):
        return None
    status, code = next(((s, c) for cls, s, c in _STATUS if isinstance(exc, cls)),
                        (400, "malformed"))
    return status, code, str(exc) or type(exc).__name__


def error_response(status, code, message):
    """The bytes of a whole JSON error answer that closes the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {_PHRASES[status]}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def set_io_timeouts(sock, seconds):
    """Make every blocking read on ``sock`` fail after ``seconds`` without a
    byte, and every blocking write after about ``seconds`` in which the
    client took none of the answer (the kernel wakes a blocked write once a
    few KiB are free, so a client reading a few hundred bytes a second at
    the default 30 s is cut off too). gunicorn switches the socket between
    blocking and non-blocking mode, which resets Python's own socket
    timeout, but not these options of the kernel's. Over plain HTTP the read
    timeout is the body's timeout too (see ThreadWorker.load_wsgi): a read
    cut off fails with EAGAIN. A write cut off fails the same way: a client
    that asks and never reads its answers would otherwise hold a request
    thread for good. (Over TLS neither helps, as OpenSSL retries the call:
    limits.BodyTimeout bounds both there.)"""
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class _StalledClients(logging.Filter):
    """Turns gunicorn's "Socket error" (with a traceback) for a read or write
    cut off by :func:`set_io_timeouts` (or, over TLS, by Python's socket
    timeout) into a one-line warning: it is a client's doing, not the
    receiver's."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TimeoutError) or (
                isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)):
            record.msg, record.args, record.exc_info = (
                "Cut off a client that stalled: nothing sent or taken for body_timeout s",
                (), None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def gthread_gathers():
    """Whether gunicorn's threaded worker has what gathering heads in its
    event loop builds on (gunicorn 27: pending connections swept by
    murder_pending, enqueue_req, take_buffered); an older one serves as
    gunicorn does, heads read in request threads."""
    return (hasattr(gthread, "STOP_KEEPALIVE_LINGER") and hasattr(Unreader, "take_buffered")
            and all(hasattr(gthread.ThreadWorker, name)
                    for name in ("murder_pending", "enqueue_req", "finish_request")))


def head_complete(head, start=0):
    """Whether the bytes ``head`` hold the end of a request's head (an empty
    line), looking from ``start`` on."""
    start = max(0, start - 2)
    return head.find(b"\n\r\n", start) >= 0 or head.find(b"\n\n", start) >= 0


class ThreadWorker(plain.PlainServing, gthread.ThreadWorker):
    """gunicorn's ``gthread`` worker that refuses unparsable requests in JSON
    (``{"error": {"code", "message"}}``, as the app does), gathers request
    heads in its event loop under a total deadline, and cuts off clients that
    stall before their request is read. Runs as each receiver worker
    process; the head methods run in its main thread (the event loop)."""

    def init_process(self):
        """In the new worker process, before gunicorn's own set-up (which ends in run())."""
        self.log.error_log.addFilter(_StalledClients())
        config = getattr(self.app, "config", None)  # serve.Application's dropr config
        self.timeout_s = config.receiver.body_timeout if config is not None else None
        # Plain HTTP/1 only: over TLS gunicorn wraps the socket in the thread,
        # and with cleartext HTTP/2 it reads a preface from the socket first.
        self.gathers_heads = (self.timeout_s is not None and not self.cfg.is_ssl
                              and getattr(self.cfg, "http2_cleartext", "off") == "off"
                              and gthread_gathers())
        if self.timeout_s is not None and not gthread_gathers():
            self.log.warning("this gunicorn's threaded worker reads request heads in request "
                             "threads: clients that trickle their headers can hold them")
        self.heading = collections.deque()  # connections whose head is arriving, by deadline
        # Connections whose head a request thread reads: {conn: deadline}.
        self.reading = {}
        self.heads_cut_at = None  # when a stopping worker drops the heads still arriving
        # Plain requests (see plain.py) are read without gunicorn's parser; in
        # the event loop itself where the store answers without waiting (the
        # files store without fsync), else in a request thread.
        self.plain = plain.PlainRequests(self.cfg) if self.gathers_heads else None
        self.plain_inline = (self.plain is not None and config.store.backend == "files"
                             and not config.receiver.fsync)
        super().init_process()

    def handle(self, conn):
        """Serve one request of ``conn``, in a request thread. A stalled read
        ends in an OSError, which gunicorn logs and answers by closing."""
        if self.timeout_s is None:  # not the receiver's app: gunicorn as it is
            return super().handle(conn)
        head = getattr(conn, "head", None)
        if head is not None:  # gathered by the event loop
            conn.head = None
            conn.init()  # plain HTTP/1: makes the parser, once (gunicorn makes it blocking)
            conn.parser.unreader.unread(bytes(head))
            deadline = conn.head_deadline
        else:
            deadline = time.monotonic() + self.timeout_s
        if not getattr(conn, "io_timeouts_set", False):  # it stays with the socket
            set_io_timeouts(conn.sock, self.timeout_s)
            conn.io_timeouts_set = True
        self.reading[conn] = deadline  # until handle_request: the head is read
        try:
            return super().handle(conn)
        finally:
            self.reading.pop(conn, None)

    def load_wsgi(self):
        """Load the app; over plain HTTP, tell it with each request that the
        kernel times out the socket's reads (``handle`` sets that once per
        connection), so that limits.BodyTimeout need not switch the socket
        into Python's timeout mode and back for every request. (Over TLS a
        read that the kernel cuts off is not a plain EAGAIN: BodyTimeout
        does its part there.)"""
        super().load_wsgi()
        if self.timeout_s is None or self.cfg.is_ssl:
            return
        app, seconds = self.wsgi, self.timeout_s

        def wsgi(environ, start_response):
            environ[BODY_TIMEOUT_ENV] = seconds
            return app(environ, start_response)
        self.wsgi = wsgi

    def handle_request(self, req, conn):
        """Serve ``req`` (its head is read), in a request thread; a header of
        SINGLE_HEADERS given twice is refused (400) instead. The answer closes
        the connection once it has carried plain.KEEPALIVE_REQUESTS requests."""
        self.reading.pop(conn, None)
        conn.served = getattr(conn, "served", 0) + 1
        if conn.served >= plain.KEEPALIVE_REQUESTS:
            req.force_close()
        seen = set()
        for name, _ in req.headers:
            if name in SINGLE_HEADERS:
                if name in seen:
                    raise gerrors.InvalidHeader(f"{name.title()} given more than once", req=req)
                seen.add(name)
        try:
            return super().handle_request(req, conn)
        except (BlockingIOError, TimeoutError):
            # The answer waited body_timeout for the client to take some of it
            # (the kernel's send timeout; over TLS, BodyTimeout's): gunicorn logs
            # it, and the connection is reset rather than closed in turn.
            conn.cut_off = True
            raise

    # -- request heads, in the event loop ---------------------------------------

    def accept(self, *args):
        if not self.gathers_heads:
            return super().accept(*args)
        listener, = args
        try:
            client, address = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        # TConn makes the socket non-blocking, as the event loop needs it.
        conn = gthread.TConn(self.cfg, client, address, listener.getsockname())
        # Here, not in handle(): a plain request's answer that the socket does
        # not take at once is finished in a request thread without handle().
        set_io_timeouts(client, self.timeout_s)
        conn.io_timeouts_set = True
        self.gather_head(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection has the first bytes of its next request."""
        if not self.gathers_heads:
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.gather_head(conn)

    def finish_request(self, *args):
        """After a request: a kept-alive connection whose next request has
        begun to arrive with the last one gathers the rest of its head; one
        cut off for not taking its answer is reset (see close_lingering)."""
        conn, fs = args
        if getattr(conn, "cut_off", False):
            return self.close_lingering(conn)
        if not self.gathers_heads:
            return super().finish_request(*args)
        if (self.alive and not fs.cancelled()
                and fs.exception() is None and fs.result() is True
                and conn.parser.unreader.buf.getvalue()):
            conn.sock.setblocking(False)
            return self.gather_head(conn, conn.parser.unreader.take_buffered())
        if not fs.cancelled() and fs.exception() is None and fs.result() is False:
            return self.close_lingering(conn)  # not gunicorn's close, which waits here
        return super().finish_request(*args)

    def gather_head(self, conn, data=b""):
        """Read ``conn``'s request head in the event loop, without a thread,
        until it is complete (then a thread takes it), or cut it off at its
        deadline (see murder_pending). What has arrived is read at once: a
        kept-alive connection is here because its next request is."""
        conn.head = bytearray(data)
        conn.head_deadline = time.monotonic() + self.timeout_s
        if head_complete(conn.head) or self._read_head(conn):
            self.enqueue_req(conn)
        elif conn.head is None:  # gone
            self._drop_heading(conn)
        else:  # wait for the rest
            self.heading.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 functools.partial(self.on_head_readable, conn))

    def on_head_readable(self, conn, client):
        if self._read_head(conn):
            self.poller.unregister(conn.sock)
            self.heading.remove(conn)
            self.enqueue_req(conn)
        elif conn.head is None:  # gone
            self._drop_heading(conn)

    def _read_head(self, conn):
        """Read what has arrived of ``conn``'s head; True once it is complete
        (or too long to gather), False while it is not. ``conn.head`` is
        None if the client has left."""
        try:
            chunk = conn.sock.recv(HEAD_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            chunk = b""
        if not chunk:  # the client left before its head was complete
            conn.head = None
            return False
        seen = len(conn.head)
        conn.head += chunk
        if head_complete(conn.head, seen) or len(conn.head) >= HEAD_BUFFER_BYTES:
            conn.data_ready = True
            return True
        return False

    def murder_pending(self):
        """Called by the event loop about once a second (gunicorn closes
        connections that sent nothing here): also cut off the clients whose
        head has not arrived in whole by its deadline, without an answer."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive and self.heads_cut_at is None:
            # Stopping: as gunicorn does with kept-alive connections, wait briefly.
            self.heads_cut_at = now + gthread.STOP_KEEPALIVE_LINGER
        stopped = self.heads_cut_at is not None and now >= self.heads_cut_at
        while self.heading and (stopped or self.heading[0].head_deadline <= now):
            conn = self.heading[0]
            if not stopped:
                self.log.warning("Cut off a client (ip=%s) whose request line and headers "
                                 "took over %s s", _ip(conn.client), self.timeout_s)
            self._drop_heading(conn)
        for conn, deadline in list(self.reading.items()):
            if deadline <= now and self.reading.pop(conn, None) is not None:
                self.log.warning("Cut off a client (ip=%s) whose request line and headers "
                                 "took over %s s", _ip(conn.client), self.timeout_s)
                try:  # ends the request thread's read, which then closes it
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _drop_heading(self, conn):
        """Forget and close a connection whose head is not complete."""
        if conn in self.heading:
            self.heading.remove(conn)
            try:
                self.poller.unregister(conn.sock)
            except (OSError, KeyError, ValueError):
                pass
        self.nr_conns -= 1
        conn.close()

    def handle_error(self, req, client, addr, exc):
        refused = refusal(exc)
        if refused is None:
            return super().handle_error(req, client, addr, exc)
        self.log.warning("Invalid request from ip=%s: %s", _ip(addr), exc)
        try:
            util.write_nonblock(client, error_response(*refused))
        except Exception:  # the client is gone: nothing to tell it
            self.log.debug("Failed to send error message.")
        return None


def _ip(address):
    return address[0] if isinstance(address, tuple) and address else ""
