"""Exponential backoff with jitter and a cap, shared by every retry in dropr:
deferred messages, peers marked down, and workers the supervisor restarts."""

import random


def delay(attempt, *, base, factor=2.0, cap, jitter=0.0, rand=random.random):
    """Seconds to wait before attempt number ``attempt + 1`` (``attempt`` >= 1).

    ``base * factor**(attempt-1)``, at most ``cap``, then spread by +/-
    ``jitter`` (a fraction) so that many waiters do not wake together."""
    attempt = max(1, attempt)
    exponent = min(attempt - 1, 64)  # past 2**64 every sane cap has long been reached
    value = min(cap, base * factor**exponent)
    if jitter:
        value *= 1.0 + jitter * (2.0 * rand() - 1.0)
    return max(0.0, min(value, cap * (1.0 + jitter)))
