"""One strict reading of what a request carries, for every route: its raw
target, the framing of its body, numbers in its headers and JSON in its
body. Whatever a proxy or a validator in front of the receiver may read
otherwise is refused (400, 411) instead of guessed at: an encoded separator
in the path, a body of unknown length, a number padded with any whitespace
but HTTP's, a JSON key given twice.

Runs in receiver worker processes.
"""

import json

import falcon

from dropr import names
from dropr.errors import ValidationError

#: HTTP's optional whitespace (RFC 9110 section 5.6.3): nothing else around a value.
OWS = " \t"
_DIGITS = "0123456789"
#: What a percent-escape in a path must not encode: characters that some
#: server or proxy takes as a separator of the path (or of its parameters,
#: query or fragment), and "%" itself (a second round of decoding).
_SEPARATORS = {"2f": "/", "5c": "\\", "3b": ";", "3f": "?", "23": "#", "25": "%"}


def check_target(raw):
    """Refuse a raw request target (as sent, before any decoding) whose path
    has an encoded separator, a backslash or an empty segment: the receiver
    routes on the decoded path, where ``%2F`` is a ``/`` and ``//`` one, while
    a proxy rule sees something else."""
    path = raw.partition("?")[0]
    if "\\" in path:
        raise ValidationError("the request path has a backslash: paths use '/' alone")
    _, absolute, rest = path.partition("://")
    if "//" in ("/" + rest.partition("/")[2] if absolute else path):  # after the host
        raise ValidationError("the request path has an empty segment ('//')")
    at = path.find("%")
    while at >= 0:
        escape = path[at + 1:at + 3].lower()
        if escape in _SEPARATORS:
            raise ValidationError(f"the request path has an encoded {_SEPARATORS[escape]!r} "
                                  f"(%{escape.upper()}): separators are never encoded")
        at = path.find("%", at + 1)


def header_number(value, header, max_digits):
    """The whole number a header's ``value`` holds: ASCII digits only, at most
    ``max_digits`` of them, with nothing around them but spaces and tabs
    (``str.strip()`` and ``int()`` take far more: a no-break space, an
    ideographic space, '+', '_', digits of other scripts)."""
    digits = value.strip(OWS)
    if not digits or len(digits) > max_digits or digits.strip(_DIGITS):
        raise ValidationError(f"{header} must be a number of at most {max_digits} ASCII "
                              f"digits, not {names.shown(value)}")
    return int(digits)


class Framing:
    """Falcon middleware: the one place that reads the raw request target
    and the framing of the body before any resource does. Refuses an
    encoded separator in the path (400), a body that is neither
    Content-Length nor chunked (411: an HTTP/1.0 POST without a length would
    be read as empty), a transfer coding but chunked alone, and a
    Content-Length that is not plain digits."""

    def process_request(self, req, resp):
        raw = req.env.get("RAW_URI")  # gunicorn's raw target; PATH_INFO is decoded
        if raw is not None:
            check_target(raw)
        length = req.env.get("CONTENT_LENGTH")
        coding = req.env.get("HTTP_TRANSFER_ENCODING")
        if coding is not None and coding.strip(OWS).lower() != "chunked":
            # gunicorn takes "gzip, chunked" and hands the body over gzipped.
            raise ValidationError(f"Transfer-Encoding must be chunked alone, not "
                                  f"{names.shown(coding)}")
        if length is not None and length != "":
            header_number(length, "Content-Length", 18)
        elif req.method == "POST" and coding is None:
            raise falcon.HTTPLengthRequired(
                description="a POST is sent with a Content-Length or chunked")


def _object(what):
    def pairs(items):
        obj = {}
        for key, value in items:
            if key in obj:
                raise ValidationError(f"{what} has the key {names.shown(key)} more than once")
            obj[key] = value
        return obj
    return pairs


def _not_a_number(what):
    def refuse(name):
        raise ValidationError(f"{what} is not valid JSON: {name} is not a JSON number")
    return refuse


def load_json(text, what):
    """``json.loads(text)``, but a key given twice in an object (a validator
    in front may keep the first, Python keeps the last) and ``NaN`` or
    ``Infinity`` (not JSON) are a ``ValidationError``."""
    return json.loads(text, object_pairs_hook=_object(what), parse_constant=_not_a_number(what))


def exact_int(value):
    """Whether ``value`` is a JSON integer as a schema means it: not a
    boolean, not a float, not a string of digits."""
    return isinstance(value, int) and not isinstance(value, bool)
