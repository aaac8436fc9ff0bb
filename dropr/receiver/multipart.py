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
"""

import re

import falcon
from falcon.util import parse_header

#: Bytes asked of the request body at a time. A read blocks until it has them
#: all (or the body ends), so more would delay staging what has arrived.
READ_BYTES = 64 * 1024
#: The most bytes of headers one part may have.
MAX_HEADER_BYTES = 8192
_MAX_BOUNDARY = 70  # RFC 2046
#: ``form-data; name="..."[; filename="..."]`` without escapes or other parameters.
_PLAIN_DISPOSITION = re.compile(rb'form-data; name="([^"\\]*)"(?:; filename="[^"\\]*")?\Z')


def _malformed(description):
    return falcon.HTTPBadRequest(title="malformed multipart body", description=description)


def boundary_of(content_type):
    """The boundary that the request's Content-Type gives, as bytes."""
    _, params = parse_header(content_type or "")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > _MAX_BOUNDARY or not boundary.isascii():
        raise _malformed("multipart/form-data needs a boundary of 1 to 70 ASCII characters")
    return boundary.encode("ascii")


class Part:
    """One part: its headers, and ``stream.read(n)`` for its body (the part is its
    own stream). Valid until the reader moves to the next part."""

    def __init__(self, reader, headers):
        self._reader = reader
        self._headers = headers
        self.stream = self
        self._done = False

    @property
    def name(self):
        """The ``name`` of its Content-Disposition (None if none); raises
        ``UnicodeDecodeError`` if it is not UTF-8."""
        value = self._headers.get(b"content-disposition")
        if value is None:
            return None
        plain = _PLAIN_DISPOSITION.match(value)
        if plain:  # as senders and curl -F write it: no need for the general parser
            return plain.group(1).decode("utf-8")
        _, params = parse_header(value.decode("utf-8"))
        return params.get("name")

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
        while self.body_bytes(READ_BYTES):
            pass
        self._pos = self._end + len(self._delimiter)
        self._end = None

    def _after_delimiter(self):
        """The part after a delimiter, or None after the closing one."""
        self._need(2)
        if self._buf.startswith(b"--", self._pos):
            return None  # the closing delimiter: the epilogue is ignored
        while True:  # transport padding, then CRLF
            self._need(2)
            if self._buf.startswith(b"\r\n", self._pos):
                self._pos += 2
                return Part(self, self._headers())
            if self._buf[self._pos] not in b" \t":
                raise _malformed("a multipart delimiter must end its line")
            self._pos += 1

    def _headers(self):
        self._need(2)
        if self._buf.startswith(b"\r\n", self._pos):
            self._pos += 2
            return {}  # a part without headers
        end = self._buf.find(b"\r\n\r\n", self._pos)
        while end < 0:
            if len(self._buf) - self._pos > MAX_HEADER_BYTES or not self._more():
                raise _malformed("a part's headers are too long, or never end")
            end = self._buf.find(b"\r\n\r\n", self._pos)
        if end - self._pos > MAX_HEADER_BYTES:
            raise _malformed("a part's headers are too long")
        headers = {}
        for line in self._buf[self._pos:end].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                raise _malformed("a part's header line has no colon")
            headers[name.strip().lower()] = value.strip()
        self._pos = end + 4
        return headers

    # -- bodies -----------------------------------------------------------------

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
