"""Errors to HTTP, in one place. Every error answer has the JSON body
``{"error": {"code": "<short_snake_code>", "message": "<human text>"}}``; an
unexpected exception is logged with its traceback and answered 500 with
nothing but "internal error". Runs in receiver worker processes."""

import errno
import http
import logging

import falcon
from gunicorn.http.errors import NoMoreData, ParseException

from dropr.errors import (Forbidden, NotFound, StoreFull, StoreUnavailable, TooLarge, Unauthorized,
                          ValidationError)
from dropr.receiver.limits import BODY_TIMEOUT_ENV
from dropr.receiver.worker import refusal

log = logging.getLogger("dropr.receiver")

# Falcon picks the most specific class of an exception, so TooLarge (a
# ValidationError) gets 413, not 400.
STATUS = {
    ValidationError: (400, "invalid"),
    TooLarge: (413, "too_large"),
    StoreFull: (507, "store_full"),
    StoreUnavailable: (503, "store_unavailable"),
    NotFound: (404, "not_found"),
    Forbidden: (403, "forbidden"),
}


def install(app):
    """Register the handlers on the Falcon ``app``."""
    app.add_error_handler(Exception, _internal_error)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(TimeoutError, _body_timeout)
    app.add_error_handler(BlockingIOError, _read_stalled)
    app.add_error_handler(ParseException, _unparsable_body)
    app.add_error_handler(NoMoreData, _unparsable_body)
    for cls, (status, code) in STATUS.items():
        app.add_error_handler(cls, _dropr_error(status, code))
    app.add_error_handler(Unauthorized, _unauthorized)
    app.add_error_handler(StoreFull, _store_full)


def answer(resp, status, code, message):
    """Set ``resp`` to the JSON error answer."""
    resp.status = status
    resp.media = {"error": {"code": code, "message": message}}


def _dropr_error(status, code):
    def handle(req, resp, ex, params):
        answer(resp, status, code, str(ex))
    return handle


def _http_error(req, resp, ex, params):
    """Errors Falcon raises itself (bad multipart, unknown route, wrong method)."""
    status = ex.status_code
    phrase = http.HTTPStatus(status).phrase
    # A 400 from Falcon is always a request it could not parse.
    code = "malformed" if status == 400 else phrase.lower().replace(" ", "_").replace("-", "_")
    resp.set_headers(ex.headers or {})
    answer(resp, status, code, ex.description or f"{req.method} {req.path}: {phrase.lower()}")


def _body_timeout(req, resp, ex, params):
    """Reading the body stalled (limits.BodyTimeout). gunicorn closes the
    connection after the answer, since the body was not read to its end."""
    seconds = req.env.get(BODY_TIMEOUT_ENV)
    waited = f" for {seconds} s" if seconds is not None else ""
    answer(resp, 408, "body_timeout",
           f"no bytes of the request body arrived{waited}; nothing was stored")


def _read_stalled(req, resp, ex, params):
    """A read of the body failed with EAGAIN: the kernel's read timeout that
    the receiver's worker sets on the socket ran out (limits.BodyTimeout)."""
    if ex.errno in (errno.EAGAIN, errno.EWOULDBLOCK) and req.env.get(BODY_TIMEOUT_ENV):
        return _body_timeout(req, resp, ex, params)
    return _internal_error(req, resp, ex, params)


def _unparsable_body(req, resp, ex, params):
    """gunicorn could not read the body the app asked for (a broken chunked
    encoding, or the client went away in the middle)."""
    refused = refusal(ex) if isinstance(ex, ParseException) else (
        400, "malformed", "the request body ended before it was complete")
    if refused is None:
        _internal_error(req, resp, ex, params)
    else:
        answer(resp, *refused)


def _store_full(req, resp, ex, params):
    """507: the path of a full store goes to the log, not to the client."""
    if ex.path is not None:
        log.warning("%s %s: store %s: %s", req.method, req.path, ex.path, ex)
    answer(resp, 507, "store_full", str(ex))


def _unauthorized(req, resp, ex, params):
    """401 with the challenge RFC 6750 asks for, saying what was wrong if anything came."""
    challenge = 'Bearer realm="dropr"'
    if ex.error:
        challenge += f', error="{ex.error}"'
    resp.set_header("WWW-Authenticate", challenge)
    answer(resp, 401, "unauthorized", str(ex))


def _internal_error(req, resp, ex, params):
    log.error("%s %s failed", req.method, req.path, exc_info=ex)
    answer(resp, 500, "internal_error", "internal error")
