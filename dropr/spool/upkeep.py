"""The client spool's upkeep: the operator's moves (requeue, expire, hold,
release, purge) and the reaper's (orphaned claims back to ``queue/``, old
``sent/`` and ``tmp/`` files, stale notes). Mixed into
:class:`dropr.spool.Spool`."""

import contextlib
import os
import shutil

from dropr.faults import crash_point
from dropr.fs import LOCK, lock_file
from dropr.spool.claims import NEW_PREFIX
from dropr.spool.files import REASON_SUFFIX, check_message


class Upkeep:
    """The operator's and the reaper's moves."""

    def requeue(self, state, name, **changes):
        """Move ``name`` from ``state`` (deferred or dead) back into ``queue/``."""
        src = self.dirs[state] / str(name)
        new = name.replace(**changes) if changes else name
        check_message(src)
        os.rename(src, self.dirs["queue"] / str(new))
        crash_point("retry.after_requeue")
        if state == "dead":
            with contextlib.suppress(FileNotFoundError):
                (self.dirs["dead"] / (str(name) + REASON_SUFFIX)).unlink()
        return new

    def expire(self, state, name, reason):
        """Move ``name`` from ``state`` into ``dead/`` with ``reason``."""
        self.to_dead(self.dirs[state] / str(name), name, reason)

    def hold(self, state, name):
        """Move ``name`` from ``state`` (queue or deferred) into ``hold/``, as it
        is: its id, metadata and attempts stay in its name. False if it is no
        longer there (a sender claimed it meanwhile)."""
        try:
            os.rename(self.dirs[state] / str(name), self.dirs["hold"] / str(name))
        except FileNotFoundError:
            return False
        crash_point("hold.after_move")
        return True

    def release(self, name):
        """Move a held message back into ``queue/``, due at once (its attempts
        and expiry kept). False if it is no longer held."""
        try:
            os.rename(self.dirs["hold"] / str(name), self.dirs["queue"] / str(name.replace(due_ms=0)))
        except FileNotFoundError:
            return False
        crash_point("release.after_move")
        return True

    def purge(self, state, name):
        """Remove ``name`` from ``state`` for good (and its reason, from ``dead/``).
        False if it was no longer there."""
        try:
            os.unlink(self.dirs[state] / str(name))
        except FileNotFoundError:
            return False
        if state == "dead":
            with contextlib.suppress(FileNotFoundError):
                (self.dirs["dead"] / (str(name) + REASON_SUFFIX)).unlink()
        return True

    def recover_orphans(self):
        """Return the files of every claim directory whose owner is gone to ``queue/``;
        returns how many messages went back."""
        moved = 0
        for d in self.active_dirs():
            moved += self._release_dir(d)
        return moved

    def _release_dir(self, path):
        try:
            fd = lock_file(path / LOCK, create=False)
        except FileNotFoundError:
            # A claim directory gets its lock before it gets its name, so one
            # without a lock was being removed when its remover died: finish that.
            return self._empty_and_remove(path)
        if fd is None:
            return 0  # its sender is alive
        try:
            return self._empty_and_remove(path)
        finally:
            os.close(fd)

    def _empty_and_remove(self, path):
        moved = self._back_to_queue(path)
        crash_point("active.before_remove_dir")
        shutil.rmtree(path, ignore_errors=True)
        return moved

    def _back_to_queue(self, path):
        moved = 0
        for name in self.names(None, directory=path):
            with contextlib.suppress(FileNotFoundError):
                os.rename(path / str(name), self.dirs["queue"] / str(name))
                moved += 1
            crash_point("active.after_return_to_queue")
        return moved

    def remove_older(self, state, max_age, *, now=None):
        """Unlink files in ``state`` whose last change is older than ``max_age`` s."""
        limit = (self._clock() if now is None else now) - max_age
        removed = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dirs[state]) as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file() and entry.stat().st_ctime < limit:
                        os.unlink(entry.path)
                        removed += 1
                        crash_point("reaper.after_unlink")
        return removed

    def remove_orphan_reasons(self, max_age, *, now=None):
        """Unlink ``dead/`` reason files whose message is gone (purged by hand, or
        the writer died between the two renames of :meth:`to_dead`), once they are
        older than ``max_age`` s: a younger one may be waiting for its message."""
        limit = (self._clock() if now is None else now) - max_age
        removed, entries = 0, []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dirs["dead"]) as it:
            entries = list(it)
        present = {e.name for e in entries}
        for e in entries:
            message = e.name.removesuffix(REASON_SUFFIX)
            if message == e.name or message in present:
                continue
            with contextlib.suppress(FileNotFoundError):
                if e.stat().st_ctime < limit:
                    os.unlink(e.path)
                    removed += 1
        return removed

    def remove_stale_new_dirs(self, max_age):
        """Remove half-made claim directories of senders that died while making them."""
        limit = self._clock() - max_age
        with contextlib.suppress(FileNotFoundError), os.scandir(self.dirs["active"]) as it:
            for e in it:
                if e.name.startswith(NEW_PREFIX) and e.stat().st_mtime < limit:
                    shutil.rmtree(e.path, ignore_errors=True)
