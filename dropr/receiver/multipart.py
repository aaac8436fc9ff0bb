"""A streaming reader of ``multipart/form-data`` bodies (RFC 7578), for the
batch upload.

Falcon's own form parser is general and pure Python, and at a thousand
small parts per batch it cost more than storing them. This one reads the
body in large chunks and finds each delimiter with ``bytes.find``; a part's
body is handed out as it arrives, so a part of any size streams through a
bounded buffer. It reads the same wire format (curl ``-F`` makes it): a
preamble is skipped, transport padding after a delimiter is allowed, the
epilogue after the closing delimiter is ignored. Anything else that is not
well-formed is a 400 (``falcon.HTTPBadRequest``).

It reads strictly, so that a validator or proxy in front cannot read the same
bytes otherwise: a parameter given twice (``boundary``, ``name``), a part
header given twice (as a CRLF injected into a filename makes), two parts of
one name, a boundary outside RFC 2046's characters, an unclosed quote, a
quoted-pair, a folded header line, a part without a Content-Disposition or
with an encoding other than 7bit, 8bit or binary are all refused. Headers
and parameters are read by ``str.find`` and a loop per parameter, never a
regular expression, so their cost is linear in their length.
"""

import string

import falcon

#: Bytes asked of the request body at a time. A read blocks until it has them
#: all (or the body ends), so more would delay staging what has arrived.
READ_BYTES = 64 * 1024
#: The most bytes of headers one part may have.
MAX_HEADER_BYTES = 8192
_MAX_BOUNDARY = 70  # RFC 2046
#: RFC 2046's bchars: what a boundary may hold (a space, but not at its end).
_BCHARS = frozenset(string.ascii_letters + string.digits + "'()+_,-./:=? ")
#: RFC 9110's tchar: what a header name, a parameter name or a bare value may hold.
_TCHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_OWS = " \t"
#: The part headers RFC 7578 gives a meaning to; others are ignored (but not twice).
_DISPOSITION, _ENCODING = "content-disposition", "content-transfer-encoding"
_PLAIN_ENCODINGS = ("7bit", "8bit", "binary")
#: A message part's headers as dropr's sender writes them (and curl -F with a
#: file), read by exact comparison instead of line by line: name, then the
#: same filename, in the characters of a message id.
_USUAL_START = b'Content-Disposition: form-data; name="'
_USUAL_END = b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
_USUAL_NAME = frozenset(string.ascii_letters.encode() + string.digits.encode() + b"_-")
_USUAL_MAX = 128
#: Control characters but HTAB, for str.translate to remove (and so to find).
_CONTROLS = dict.fromkeys([c for c in range(0x20) if c != 0x09] + [0x7F])


def _has_control(text):
    # isprintable() is quick and true for nearly all; it is also false for a
    # tab and for bytes 0x80-0xA0 (read as Latin-1), which may be allowed.
    return not text.isprintable() and len(text.translate(_CONTROLS)) != len(text)


def _malformed(description):
    return falcon.HTTPBadRequest(title="malformed multipart body", description=description)


def parameters(value, expected, what):
    """The parameters of a header ``value`` that must be ``expected`` (a
    media or disposition type, any case) followed by ``; name=value`` pairs,
    as ``{lower-case name: value}``; names are tokens, values tokens or
    quoted strings. Refuses a name given twice, an unclosed quote, a
    quoted-pair (nothing here needs one) and control characters."""
    first, _, rest = value.partition(";")
    if first.strip(_OWS).lower() != expected:
        raise _malformed(f"{what} must be {expected}")
    params, i, n = {}, len(first) + 1, len(value)
    while i < n:
        i = n - len(value[i:].lstrip(_OWS))
        if value.startswith(";", i) or i == n:  # an empty parameter, as RFC 9110 allows
            i += 1
            continue
        equals = value.find("=", i)
        name = value[i:equals].lower()
        if equals < 0 or not name or not _TCHARS.issuperset(name):
            raise _malformed(f"{what} has a parameter that is not name=value")
        if value.startswith('"', equals + 1):
            end = value.find('"', equals + 2)
            if end < 0:
                raise _malformed(f"{what} has an unclosed quote")
            param = value[equals + 2:end]
            if "\\" in param or _has_control(param):
                raise _malformed(f"{what} has a backslash or a control character in a quote")
            i = end + 1
        else:
            i = value.find(";", equals)
            i = n if i < 0 else i
            param = value[equals + 1:i].rstrip(_OWS)
            if not param or not _TCHARS.issuperset(param):
                raise _malformed(f"{what} has a parameter value that is neither a token "
                                 f"nor quoted")
        if name in params:
            raise _malformed(f"{what} has the parameter {name!r} more than once")
        params[name] = param
        after = value.find(";", i)
        after = n if after < 0 else after
        if value[i:after].strip(_OWS):
            raise _malformed(f"{what} has something after a parameter's value")
        i = after + 1
    return params


def boundary_of(content_type):
    """The boundary that the request's Content-Type gives, as bytes."""
    what = "the Content-Type of a batch"
    boundary = parameters(content_type or "", "multipart/form-data", what).get("boundary")
    if (not boundary or len(boundary) > _MAX_BOUNDARY or not _BCHARS.issuperset(boundary)
            or boundary.endswith(" ")):
        raise _malformed("multipart/form-data needs a boundary of 1 to 70 of RFC 2046's "
                         "characters (letters, digits, ' ( ) + _ , - . / : = ? and space, "
                         "not at its end)")
    return boundary.encode("ascii")


def _name_of(headers):
    """The raw ``name`` of a part's headers; refuses a part that RFC 7578 does not allow."""
    disposition = headers.get(_DISPOSITION)
    if disposition is None:
        raise _malformed("a part has no Content-Disposition")
    encoding = headers.get(_ENCODING)
    if encoding is not None and encoding.lower() not in _PLAIN_ENCODINGS:
        raise _malformed("a part's Content-Transfer-Encoding must be 7bit, 8bit or binary")
    what = "a part's Content-Disposition"
    params = parameters(disposition, "form-data", what)
    if "name" not in params or not set(params) <= {"name", "filename"}:
        raise _malformed(f"{what} has a name and may have a filename, nothing else")
    return params["name"]


class Part:
    """One part: its headers, and ``stream.read(n)`` for its body (the part is its
    own stream). Valid until the reader moves to the next part."""

    def __init__(self, reader, headers, raw_name):
        self._reader = reader
        self._headers = headers
        self._raw_name = raw_name  # as sent, read as Latin-1
        self.stream = self
        self._done = False

    @property
    def content_type(self):
        """Its Content-Type header, as sent (None if none)."""
        return self._headers.get("content-type")

    @property
    def name(self):
        """The ``name`` of its Content-Disposition; raises
        ``UnicodeDecodeError`` if it is not UTF-8."""
        return self._raw_name.encode("latin-1").decode("utf-8")

    def read(self, size=-1):
        """Up to ``size`` bytes of the body (all the rest if ``size`` < 0); b"" at its end."""
        if self._done:
            return b""
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_BYTES), b""))
        data = self._reader.body_bytes(size)
        if len(data) == size or not data:
            self._done = not data
            return data
        if self._reader.at_part_end():  # the rest of the part was in the buffer
            self._done = True
            return data
        chunks, got = [data], len(data)  # as a file does: short only at the end
        while got < size and (more := self._reader.body_bytes(size - got)):
            chunks.append(more)
            got += len(more)
        return b"".join(chunks)


class FormReader:
    """Reads the parts of a multipart body from ``read(n)`` (the request's
    bounded stream). Runs in receiver worker processes, one per request."""

    def __init__(self, read, boundary):
        self._read = read
        self._delimiter = b"\r\n--" + boundary
        # A body starts with a delimiter without its CRLF: lend it one.
        self._buf = b"\r\n"
        self._pos = 0
        self._end = None  # where the current part's body ends in _buf, once found
        self._eof = False
        self._names = set()  # of the parts so far

    def parts(self):
        """The parts, in order; each is skipped to its end when the next is asked for."""
        self._skip_to_delimiter()
        while True:
            part = self._after_delimiter()
            if part is None:
                return
            yield part
            self._skip_to_delimiter()

    # -- the buffer ---------------------------------------------------------

    def _more(self):
        """Read another chunk into the buffer; False at the end of the body."""
        if self._eof:
            return False
        chunk = self._read(READ_BYTES)
        if not chunk:
            self._eof = True
            return False
        if self._pos:
            if self._end is not None:
                self._end -= self._pos
            self._buf = self._buf[self._pos:] + chunk
            self._pos = 0
        else:
            self._buf += chunk
        return True

    def _need(self, n):
        """Make at least ``n`` bytes available from _pos; else a cut-off body."""
        while len(self._buf) - self._pos < n:
            if not self._more():
                raise _malformed("the multipart body ended before its closing delimiter")

    # -- delimiters and headers -------------------------------------------------

    def _skip_to_delimiter(self):
        """Skip what is left of the current part (or the preamble), up to and
        including the next delimiter."""
        if self._end is None or self._pos < self._end:  # else read to its end already
            while self.body_bytes(READ_BYTES):
                pass
        self._pos = self._end + len(self._delimiter)
        self._end = None

    def _after_delimiter(self):
        """The part after a delimiter, or None after the closing one."""
        if self._buf.startswith(b"\r\n", self._pos):  # nearly always: no padding, in the buffer
            self._pos += 2
            return self._part()
        self._need(2)
        if self._buf.startswith(b"--", self._pos):
            return None  # the closing delimiter: the epilogue is ignored
        while True:  # transport padding, then CRLF
            self._need(2)
            if self._buf.startswith(b"\r\n", self._pos):
                self._pos += 2
                return self._part()
            if self._buf[self._pos] not in b" \t":
                raise _malformed("a multipart delimiter must end its line")
            self._pos += 1

    def _part(self):
        """The part whose headers start at _pos."""
        headers, name = self._usual_headers() or self._any_headers()
        if name in self._names:
            raise _malformed(f"two parts are named {name!r}")
        self._names.add(name)
        return Part(self, headers, name)

    def _any_headers(self):
        headers = self._headers()
        return headers, _name_of(headers)

    def _usual_headers(self):
        """(headers, name) of a part whose headers are exactly the usual ones
        (``_USUAL_START``, a name, ``"; filename="``, the same name,
        ``_USUAL_END``), all in the buffer; what :meth:`_headers` and
        :func:`_name_of` make of the same bytes, at a fraction of the cost.
        None for anything else."""
        buf, pos = self._buf, self._pos
        if not buf.startswith(_USUAL_START, pos):
            return None
        start = pos + len(_USUAL_START)
        quote = buf.find(b'"', start, start + _USUAL_MAX + 1)
        raw = buf[start:quote]
        if quote <= start or not _USUAL_NAME.issuperset(raw):
            return None
        rest = b'"; filename="' + raw + _USUAL_END
        if not buf.startswith(rest, quote):
            return None
        self._pos = quote + len(rest)
        name = raw.decode("ascii")
        return {_DISPOSITION: f'form-data; name="{name}"; filename="{name}"',
                "content-type": "application/octet-stream"}, name

    def _headers(self):
        self._need(2)
        if self._buf.startswith(b"\r\n", self._pos):
            self._pos += 2
            return {}  # a part without headers (refused: it has no name)
        end = self._buf.find(b"\r\n\r\n", self._pos)
        while end < 0:
            if len(self._buf) - self._pos > MAX_HEADER_BYTES or not self._more():
                raise _malformed("a part's headers are too long, or never end")
            end = self._buf.find(b"\r\n\r\n", self._pos)
        if end - self._pos > MAX_HEADER_BYTES:
            raise _malformed("a part's headers are too long")
        headers = {}
        # Latin-1 maps each byte to one character, as the server does for the request's headers.
        for line in self._buf[self._pos:end].decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if not colon or not name or not _TCHARS.issuperset(name):
                raise _malformed("a part's header line is not 'Name: value' (or is folded)")
            value = value.strip(_OWS)
            if _has_control(value):
                raise _malformed("a part's header has a control character (a lone CR or LF?)")
            name = name.lower()
            if name in headers:
                raise _malformed(f"a part has the header {name!r} more than once")
            headers[name] = value
        self._pos = end + 4
        return headers

    # -- bodies -----------------------------------------------------------------

    def usual_body(self, name, size):
        """The body of the next part if that part is exactly as dropr's sender
        writes it (the usual headers for ``name``, a message id; a body of
        ``size`` bytes; then a delimiter) and all of it is in the buffer: the
        reader then stands at that part's end, as after reading it from
        :meth:`parts`, whose next part is the one after it. ``None``, with
        nothing read, for anything else (:meth:`parts` then reads the same
        part the long way) and while the current part is not read to its end."""
        end = self._end
        if end is None or self._pos < end:
            return None
        buf, delimiter = self._buf, self._delimiter
        start = end + len(delimiter)
        if not buf.startswith(b"\r\n", start) or name in self._names:
            return None
        raw = name.encode()
        head = b"".join((_USUAL_START, raw, b'"; filename="', raw, _USUAL_END))
        start += 2
        if not buf.startswith(head, start):
            return None
        start += len(head)
        stop = start + size
        if not buf.startswith(delimiter, stop):
            return None  # a body of another size, or not all here yet
        # No delimiter may begin inside the body. Each begins with CR: where the
        # body has none (JSON, most text), one memchr proves it.
        if (buf.find(b"\r", start, stop) >= 0
                and buf.find(delimiter, start, stop + len(delimiter) - 1) >= 0):
            return None
        self._names.add(name)
        self._pos = self._end = stop
        return buf[start:stop]

    def at_part_end(self):
        """True once the current part's body has been read to its end."""
        return self._end is not None and self._pos >= self._end

    def body_bytes(self, size):
        """Up to ``size`` bytes of the current part's body; b"" at its end."""
        while True:
            if self._end is None:
                found = self._buf.find(self._delimiter, self._pos)
                if found >= 0:
                    self._end = found
            limit = self._end
            if limit is None:
                # Keep a tail that may be the start of a delimiter split by the read.
                limit = len(self._buf) - len(self._delimiter) + 1
            if limit > self._pos or self._end is not None:
                take = min(size, limit - self._pos)
                if take > 0 or self._end is not None:
                    data = self._buf[self._pos:self._pos + max(take, 0)]
                    self._pos += len(data)
                    return data
            if not self._more():
                raise _malformed("the multipart body ended before its closing delimiter")
