"""Message ids: unique across hosts and processes, sortable by time, short,
and safe in URLs and file names.

An id is a ULID: 48 bits of milliseconds since the epoch and 80 random bits,
written as 26 characters of Crockford's base32. Within one generator the ids
strictly increase, so the messages of one producer sort in the order they
were put even within a millisecond.
"""

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1
#: Every pair of characters, by the 10 bits it writes.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_SHIFTS = tuple(range(120, -1, -10))


def _ulid(value):
    """The 26 characters of a 130-bit ``value``, ten bits at a time (the hot path)."""
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in _SHIFTS])


def timestamp_ms(message_id):
    """The creation time (ms since the epoch) of an id made here, else None."""
    if len(message_id) != 26:
        return None
    try:
        value = 0
        for c in message_id[:10]:
            value = value * 32 + _DECODE[c]
    except KeyError:
        return None
    return value


class IdGenerator:
    """Makes ULIDs; one per producer object (it holds the last id it made)."""

    def __init__(self, *, clock=time.time, urandom=os.urandom):
        self._clock = clock
        self._urandom = urandom
        self._last_ms = -1
        self._last_random = 0
        # The first 24 characters of the last id: they change only with the
        # millisecond or once in 1,024 ids of one millisecond (the hot path).
        self._head_key = None
        self._head = ""

    def __call__(self):
        ms = int(self._clock() * 1000)
        if ms <= self._last_ms and self._last_random < _RANDOM_MAX:
            ms, rnd = self._last_ms, self._last_random + 1
        else:
            rnd = int.from_bytes(self._urandom(10), "big")
        self._last_ms, self._last_random = ms, rnd
        key = (ms, rnd >> 10)
        if key != self._head_key:
            self._head_key, self._head = key, _ulid(ms << _RANDOM_BITS | rnd)[:24]
        return self._head + _PAIRS[rnd & 1023]
