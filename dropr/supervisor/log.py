"""Logging for droprd: stdlib logging, one line per record, each line carrying
the process title and pid (``dropr: sender 2[4711]``), so the lines of the
supervisor and of every worker it forks can be told apart in one file.

In the foreground the lines go to stderr; a daemon's stderr (and stdout) is
the log file, so the workers' own output lands there too.
"""

import logging
import sys

import setproctitle

FORMAT = "%(asctime)s %(title)s[%(process)d] %(levelname)s %(name)s: %(message)s"


class TitleFilter(logging.Filter):
    """Adds ``record.title``: the process title at the time of the record, which
    a forked worker changes after fork (in whichever process logs)."""

    def filter(self, record):
        record.title = setproctitle.getproctitle()
        return True


def setup(level="info", stream=None):
    """Send every record of this process to ``stream`` (default stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(TitleFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level):
    """Change the level of the root logger (``debug``, ``info``, ...)."""
    logging.getLogger().setLevel(level.upper())
