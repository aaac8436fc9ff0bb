"""Multipart bodies for batch uploads, built by hand byte by byte, so a test
controls every boundary, header and CRLF the receiver sees."""

import json

BOUNDARY = b"dropr-test-boundary-7f3a"
CONTENT_TYPE = "multipart/form-data; boundary=" + BOUNDARY.decode()


def meta_part(meta, *, name=b"meta"):
    """The JSON meta part (``meta`` may be bytes to send them as they are)."""
    body = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return (b'Content-Disposition: form-data; name="' + name + b'"\r\n'
            b"Content-Type: application/json\r\n\r\n" + body)


def file_part(message_id, body):
    """A message part as the sender writes it."""
    mid = message_id.encode()
    return (b'Content-Disposition: form-data; name="' + mid + b'"; filename="' + mid + b'"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + body)


def form(*parts, boundary=BOUNDARY):
    """A multipart/form-data body of the given raw parts, closed properly."""
    out = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return out + b"--" + boundary + b"--\r\n"


def batch(messages, *, client="host-1"):
    """``(body, meta)`` for ``messages``: a list of ``(id, channel, priority, body)``."""
    meta = {"client": client, "messages": [
        {"id": mid, "channel": ch, "priority": prio, "size": len(body)}
        for mid, ch, prio, body in messages]}
    parts = [file_part(mid, body) for mid, _, _, body in messages]
    return form(meta_part(meta), *parts), meta
