"""The spool file-name format: every piece of a message's metadata, in its name.

    P.ID.PEER.CHANNEL[.aATTEMPTS][.dDUE_MS][.eEXPIRES_MS]

``P`` is the priority digit (0 = most urgent), so a listing sorted by name is
the send order: priority, then the id (which starts with its creation time).
``PEER`` and ``CHANNEL`` are percent-encoded UTF-8: every byte outside
``[A-Za-z0-9_-]`` becomes ``%XX`` (``.`` included), so the name is safe on any
filesystem and the encoding is reversible. Optional fields follow in this
order: the attempts made so far, the time (ms since the epoch) before which
the message must not be sent again, and the time after which it expires.
A shell script can enqueue with ``5.$id.local.common`` written into ``tmp/``
then renamed into ``queue/``.
"""

import dataclasses
import functools
import re

from dropr import names
from dropr.errors import ValidationError

NAME_MAX_BYTES = 255
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ENCODED = re.compile(r"(?:[A-Za-z0-9_-]|%[0-9A-F]{2})*\Z")
_OPTIONAL = (("a", "attempts"), ("d", "due_ms"), ("e", "expires_ms"))


@functools.lru_cache(maxsize=1024)  # a producer quotes the same few peers and channels
def quote(text):
    """Percent-encode ``text`` so that it holds only ``[A-Za-z0-9_%-]``."""
    raw = text.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)


@functools.lru_cache(maxsize=1024)  # a sender's claims parse the same few peers and channels
def unquote(text):
    """Reverse :func:`quote`; ``ValidationError`` on anything it never makes."""
    if not _ENCODED.match(text):
        raise ValidationError(f"bad encoded field {text!r}")
    if "%" not in text:
        return text  # only safe characters: already canonical (the common case, and hot)
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "%":
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(text[i]))
            i += 1
    decoded = out.decode("utf-8", "surrogatepass")
    if quote(decoded) != text:
        raise ValidationError(f"encoded field {text!r} is not in canonical form")
    return decoded


@dataclasses.dataclass(frozen=True, order=True)
class SpoolName:
    """The parsed name of a spool file; ``str()`` gives the file name back."""

    priority: int
    id: str
    peer: str
    channel: str
    attempts: int = 0
    due_ms: int = 0
    expires_ms: int = 0

    def __str__(self):
        parts = [str(self.priority), self.id, quote(self.peer), quote(self.channel)]
        for letter, attr in _OPTIONAL:
            value = getattr(self, attr)
            if value:
                parts.append(f"{letter}{value}")
        name = ".".join(parts)
        if len(name.encode()) > NAME_MAX_BYTES:
            raise ValidationError(f"spool file name would be over {NAME_MAX_BYTES} bytes")
        return name

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def spool_name(priority, message_id, peer, channel, expires_ms=0):
    """The file name of a new message: ``str(SpoolName(...))`` without making
    one (the producer's hot path). The arguments are already checked."""
    name = f"{priority}.{message_id}.{quote(peer)}.{quote(channel)}"
    if expires_ms:
        name = f"{name}.e{expires_ms}"
    if len(name) > NAME_MAX_BYTES:  # quoted: ASCII, one byte a character
        raise ValidationError(f"spool file name would be over {NAME_MAX_BYTES} bytes")
    return name


def parse(name):
    """Parse a spool file name; ``ValidationError`` if it is not one."""
    parts = name.split(".")
    if len(parts) < 4 or len(parts[0]) != 1 or parts[0] not in "0123456789":
        raise ValidationError(f"not a spool file name: {name!r}")
    names.check_id(parts[1])
    fields = {}
    remaining = list(_OPTIONAL)
    for extra in parts[4:]:
        while remaining and remaining[0][0] != extra[:1]:
            remaining.pop(0)
        if not remaining or not extra[1:].isdigit() or not extra[1:].isascii():
            raise ValidationError(f"bad field {extra!r} in spool file name {name!r}")
        fields[remaining.pop(0)[1]] = int(extra[1:])
    return SpoolName(int(parts[0]), parts[1], unquote(parts[2]), unquote(parts[3]), **fields)
