"""Errors to HTTP, in one place. Every error answer has the JSON body
``{"error": {"code": "<short_snake_code>", "message": "<human text>"}}``; an
unexpected exception is logged with its traceback and answered 500 with
nothing but "internal error". Runs in receiver worker processes."""

import http
import logging

import falcon

from dropr.errors import NotFound, StoreFull, TooLarge, ValidationError

log = logging.getLogger("dropr.receiver")

# Falcon picks the most specific class of an exception, so TooLarge (a
# ValidationError) gets 413, not 400.
STATUS = {
    ValidationError: (400, "invalid"),
    TooLarge: (413, "too_large"),
    StoreFull: (507, "store_full"),
    NotFound: (404, "not_found"),
}


def install(app):
    """Register the handlers on the Falcon ``app``."""
    app.add_error_handler(Exception, _internal_error)
    app.add_error_handler(falcon.HTTPError, _http_error)
    for cls, (status, code) in STATUS.items():
        app.add_error_handler(cls, _dropr_error(status, code))


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


def _internal_error(req, resp, ex, params):
    log.error("%s %s failed", req.method, req.path, exc_info=ex)
    answer(resp, 500, "internal_error", "internal error")
