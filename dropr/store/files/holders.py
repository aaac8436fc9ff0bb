"""Where a stored message may already be, besides ``queue/``: the receiver's
duplicate check (:mod:`dropr.store.files.intake`) asks :class:`Holders`
before and after it links a message into ``queue/<channel>/``."""

import contextlib
import os


class Holders:
    """The folders that may hold an earlier copy of a message, per channel: the
    channel's folder in each consumer's ``work/``, then its ``done/`` and its
    ``dead/`` folders, each only if it exists when first asked. Made in a
    receiver worker, for one batch (or one message) at a time.

    A message moves only forward (``queue/`` to ``work/`` to ``done/`` or
    ``dead/``), and the link into ``queue/`` fails while a copy is there. So a
    copy that was in some ``work/``, in ``done/`` or in ``dead/`` when a message
    was linked is seen by holders listed after that link: its ``work/`` folder
    exists then, or, if it has moved on since, its ``done/`` or ``dead/`` folder
    (listed last) does. One listing after all the links of a batch therefore
    serves them all; where no consumer has touched a channel, checking a
    message costs no system call at all."""

    def __init__(self, root):
        self._root = root
        self._consumers = None
        self._dirs = {}

    def hold(self, channel, name):
        """True if ``name`` is in one of ``channel``'s folders."""
        dirs = self._dirs.get(channel)
        if dirs is None:
            dirs = self._of(channel)
        return bool(dirs) and any(os.path.lexists(f"{d}/{name}") for d in dirs)

    def find(self, channel, name):
        """The path of ``name`` in one of ``channel``'s folders, or ``None``."""
        return next((f"{d}/{name}" for d in self._of(channel)
                     if os.path.lexists(f"{d}/{name}")), None)

    def _of(self, channel):
        dirs = self._dirs.get(channel)
        if dirs is None:
            if self._consumers is None:
                self._consumers = []
                with contextlib.suppress(FileNotFoundError), os.scandir(f"{self._root}/work") as it:
                    self._consumers = [e.path for e in it]
            dirs = [f"{c}/{channel}" for c in self._consumers]
            dirs += [f"{self._root}/done/{channel}", f"{self._root}/dead/{channel}"]
            dirs = self._dirs[channel] = [d for d in dirs if os.path.isdir(d)]
        return dirs


class NoHolders:
    """The holders of a message whose id was made just now: none."""

    def hold(self, channel, name):
        return False

    def find(self, channel, name):
        return None


NO_HOLDERS = NoHolders()
