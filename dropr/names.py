"""The grammar of every name dropr accepts: channels, peers, clients, consumers,
message ids and priorities.

One module so that the client, the receiver and the store refuse the same
things with the same words. Names are plain ASCII on purpose: no path
separators, no ``..``, no control characters, no look-alike Unicode.
"""

import re

from dropr.errors import ValidationError

NAME_MAX = 64
ID_MAX = 64
PRIORITY_MIN, PRIORITY_MAX = 0, 9
DEFAULT_PRIORITY = 5

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.))*\Z")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
#: A message id's grammar but its length (ID_MAX), for hot paths that check it inline.
ID_PATTERN = _ID

NAME_GRAMMAR = (
    "1-64 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit, no '..'"
)
ID_GRAMMAR = "1-64 ASCII letters, digits, '_' or '-', starting with a letter or digit"


def _check(value, what, pattern, limit, grammar):
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, not {type(value).__name__}")
    if not value or len(value) > limit or not pattern.match(value):
        raise ValidationError(f"bad {what} {shown(value)}{_flaw(value, limit)}: expected {grammar}")
    return value


def check_name(value, what="name"):
    """Return ``value`` if it is a valid channel/peer/client/consumer name."""
    return _check(value, what, _NAME, NAME_MAX, NAME_GRAMMAR)


def check_id(value, what="message id"):
    """Return ``value`` if it is a valid message id."""
    return _check(value, what, _ID, ID_MAX, ID_GRAMMAR)


def shown(value, limit=80):
    """``repr(value)`` cut to about ``limit`` characters, for error messages
    that quote what a client sent (which may be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _flaw(value, max_len):
    """What breaks the grammar, in a few words (look-alike letters and control
    characters are invisible in the quoted value itself)."""
    if not value:
        return " (empty)"
    if len(value) > max_len:
        return f" ({len(value)} characters, over {max_len})"
    for c in value:
        if not c.isascii():
            return f" (non-ASCII character U+{ord(c):04X})"
        if not c.isprintable():
            return f" (control character U+{ord(c):04X})"
    if "/" in value or "\\" in value:
        return " (a path separator)"
    return " (contains '..')" if ".." in value else ""


def check_priority(value):
    """Return ``value`` as an int if it is a priority from 0 (most urgent) to 9."""
    # A few ASCII digits only: str.isdigit() also takes '²' (which int()
    # refuses) and look-alikes such as the fullwidth '５' (which int() takes),
    # and int() refuses thousands of digits.
    digits = value.strip() if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 3:
        value = int(digits)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"priority must be an integer 0-9, not {shown(value)}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValidationError(f"priority {value} out of range: expected 0 (most urgent) to 9")
    return value
