"""The states of a supervised worker, as operators see them.

Imports nothing but the standard library, so that any tool can read the
status file with these names. The words and their meaning follow supervisord:

    STOPPED   not running: not started yet, or stopped on request
    STARTING  forked; has not reported since it booted
    RUNNING   has reported since it booted
    BACKOFF   exited before it ever reported, or right after; waits for its
              restart delay (or, when throttled, until ``throttled_until``)
    STOPPING  asked to stop (SIGTERM); SIGKILL follows after a deadline
    EXITED    exited after it had been running; waits for its restart delay
    FATAL     cannot boot (failed at start too often within a window); not
              restarted until an operator says so
"""

import enum


class State(enum.Enum):
    """A worker's state in the supervisor; ``str()`` is the lower-case word."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FATAL = "fatal"

    def __str__(self):
        return self.value


#: A process exists for the worker.
ALIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})
#: No process; the supervisor restarts it when its delay has passed.
WAITING = frozenset({State.BACKOFF, State.EXITED})
