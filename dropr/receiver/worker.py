"""The gunicorn worker class of the receiver: gunicorn's threaded worker,
with two changes for clients that misbehave before the app sees a request:

- the requests gunicorn refuses itself (a malformed request line or header,
  an over-long URL, a broken chunked body) are answered with the same JSON
  error body as every other refusal instead of gunicorn's HTML page;
- a client that stops sending in the middle of its request line or headers
  is cut off after ``[receiver] body_timeout`` seconds; gunicorn would wait
  for it for good, one request thread each, and a handful of such clients
  would leave no thread to serve anyone else.

Runs in receiver worker processes.
"""

import errno
import json
import logging
import socket
import struct

from gunicorn import util
from gunicorn.http import errors as gerrors
from gunicorn.workers import gthread


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


def set_read_timeout(sock, seconds):
    """Make every blocking read on ``sock`` fail after ``seconds`` without a
    byte. gunicorn switches the socket between blocking and non-blocking
    mode, which resets Python's own socket timeout, but not this option of
    the kernel's (and reads in Python's timeout mode poll first, so the app's
    body reads keep the timeout that limits.BodyTimeout gives them)."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))


class _StalledClients(logging.Filter):
    """Turns gunicorn's "Socket error" (with a traceback) for a read cut off
    by :func:`set_read_timeout` into a one-line warning: it is a client's
    doing, not the receiver's."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            record.msg, record.args, record.exc_info = (
                "Cut off a client that stalled before its request was read", (), None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class ThreadWorker(gthread.ThreadWorker):
    """gunicorn's ``gthread`` worker that refuses unparsable requests in JSON
    (``{"error": {"code", "message"}}``, as the app does) and cuts off clients
    that stall before their request is read. Runs as each receiver worker
    process."""

    def init_process(self):
        """In the new worker process, before gunicorn's own set-up (which ends in run())."""
        self.log.error_log.addFilter(_StalledClients())
        super().init_process()

    def handle(self, conn):
        """Serve one request of ``conn``, in a request thread. A stalled read
        ends in an OSError, which gunicorn logs and answers by closing."""
        config = getattr(self.app, "config", None)  # serve.Application's dropr config
        if config is not None:
            set_read_timeout(conn.sock, config.receiver.body_timeout)
        return super().handle(conn)

    def handle_error(self, req, client, addr, exc):
        refused = refusal(exc)
        if refused is None:
            return super().handle_error(req, client, addr, exc)
        ip = addr[0] if addr else ""
        self.log.warning("Invalid request from ip=%s: %s", ip, exc)
        try:
            util.write_nonblock(client, error_response(*refused))
        except Exception:  # the client is gone: nothing to tell it
            self.log.debug("Failed to send error message.")
        return None
