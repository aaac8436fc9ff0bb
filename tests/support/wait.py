"""Waiting for a condition with a deadline, never sleep-and-hope; without
pytest, so that the chaos and soak scripts in bench/ use it too."""

import time


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition", error=AssertionError):
    """Poll ``predicate`` until it returns a truthy value and return that;
    raise ``error`` (an exception class) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return value
