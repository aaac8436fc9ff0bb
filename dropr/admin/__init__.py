"""The operator's toolbox behind ``dropr spool`` and ``dropr store``: listings
and counts (also as JSON, one object per line, as ``postqueue -j``), hold and
release, pause and resume, dead letters, purge, and ``dropr trace``. Runs in
the ``dropr`` command's process; the spool and the store modules own the
files, this package only chooses what to move and says what it did."""

import json
import sys


def emit(obj, out=None):
    """One JSON object on one line."""
    print(json.dumps(obj, separators=(",", ":"), sort_keys=False), file=out or sys.stdout)
