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

NAME_GRAMMAR = (
    "1-64 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit, no '..'"
)
ID_GRAMMAR = "1-64 ASCII letters, digits, '_' or '-', starting with a letter or digit"


def check_name(value, what="name"):
    """Return ``value`` if it is a valid channel/peer/client/consumer name."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, not {type(value).__name__}")
    if not value or len(value) > NAME_MAX or not _NAME.match(value):
        raise ValidationError(f"bad {what} {value!r}: expected {NAME_GRAMMAR}")
    return value


def check_id(value, what="message id"):
    """Return ``value`` if it is a valid message id."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, not {type(value).__name__}")
    if not value or len(value) > ID_MAX or not _ID.match(value):
        raise ValidationError(f"bad {what} {value!r}: expected {ID_GRAMMAR}")
    return value


def check_priority(value):
    """Return ``value`` as an int if it is a priority from 0 (most urgent) to 9."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"priority must be an integer 0-9, not {value!r}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValidationError(f"priority {value} out of range: expected 0 (most urgent) to 9")
    return value
