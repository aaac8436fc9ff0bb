"""The reaper's side of the files store: acknowledged messages expire out of
``done/``, and ``tmp/`` files left by a crash go. Mixed into
:class:`dropr.store.files.Store`; runs in the reaper process.
"""

import contextlib
import os

from dropr.faults import crash_point


class ExpiryMixin:
    """Expiry in the files :class:`~dropr.store.files.Store`."""

    def expire_done(self, retention, *, now=None):
        """Unlink ``done/`` messages acknowledged more than ``retention`` s ago."""
        limit = (self._clock() if now is None else now) - retention
        removed = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / "done") as chans:
            for chan in chans:
                if chan.is_dir(follow_symlinks=False):
                    removed += _unlink_older(chan.path, "st_ctime", limit)
        return removed

    def remove_stale_tmp(self, max_age, *, now=None):
        """Unlink ``tmp/`` files older than ``max_age`` s (uploads cut off by a crash)."""
        limit = (self._clock() if now is None else now) - max_age
        return _unlink_older(self.root / "tmp", "st_mtime", limit)


def _unlink_older(directory, field, limit):
    """Unlink the files in ``directory`` whose ``field`` (a stat time) is before
    ``limit``; returns how many. Run by the reaper."""
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
        for e in it:
            with contextlib.suppress(FileNotFoundError):
                if getattr(e.stat(), field) < limit:
                    os.unlink(e.path)
                    removed += 1
                    crash_point("reaper.after_store_unlink")
    return removed
