"""A sender's moves in the client spool: claim ``queue/`` → ``active/<name>.<pid>/``,
then ``sent/``, ``deferred/`` or ``dead/``. Claims take only regular files with
one link (:mod:`dropr.spool.files`). Mixed into :class:`dropr.spool.Spool`."""

import fcntl
import logging
import os
import time

from dropr.errors import ValidationError
from dropr.faults import crash_point
from dropr.fs import LOCK, LockedDir
from dropr.spool.files import REASON_SUFFIX, check_message, is_message_file
from dropr.spool.listing import Listing
from dropr.spool.filenames import parse

log = logging.getLogger("dropr.spool.spool")  # the name it always had

#: A claim listing keeps the first max(_KEEP_BATCHES * limit, _KEEP_MIN) names.
_KEEP_BATCHES = 100
_KEEP_MIN = 10_000
#: The prefix of a claim folder being made (renamed to its name once locked).
NEW_PREFIX = ".new-"


#: A sender's claim directory ``active/<name>.<pid>/`` (a space in the name is a ``-``).
ActiveDir = LockedDir


class Claims:
    """A sender's claims and their settling."""

    def open_active(self, name):
        """Make and lock a fresh claim directory ``active/<name>.<pid>``, where
        the worker's name (``sender 2``) is spelled without spaces (``sender-2``)."""
        stem = f"{name.replace(' ', '-')}.{os.getpid()}"
        final = self.dirs["active"] / stem
        fresh = self.dirs["active"] / f"{NEW_PREFIX}{stem}.{time.monotonic_ns()}"
        fresh.mkdir()
        fd = os.open(fresh / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        crash_point("send.after_new_active_dir")
        if final.exists():
            self._release_dir(final)
        os.rename(fresh, final)
        return ActiveDir(final, fd)

    def claim(self, active, *, limit, max_bytes, now_ms=None, skip_peers=frozenset()):
        """Move up to ``limit`` due messages (at most ``max_bytes``, but at least one)
        from ``queue/`` into ``active``; returns [(name, path, size)] in send order
        (``path`` a string).
        The messages of ``skip_peers`` stay in ``queue/``.

        Raw file names sort in send order, so only the names taken are parsed;
        anything that is not a regular file with a name dropr makes is left alone.
        The names come from a :class:`~dropr.spool.listing.Listing` kept between
        calls, so a deep queue is listed once for many batches (see there for
        how fresh it is)."""
        now_ms = self._now_ms() if now_ms is None else now_ms
        queue, dest = str(self.dirs["queue"]), str(active.path)
        listing, rescanned = self._listing_for(limit)
        claimed, total = [], 0
        while len(claimed) < limit:
            filename = listing.peek()
            if filename is None:
                if rescanned:
                    break
                listing, rescanned = self._rescan(limit), True
                continue
            item = self._claim_one(queue, dest, filename, now_ms, skip_peers)
            if item is not None and claimed and total + item[2] > max_bytes:
                break  # not moved: first in line for the next batch
            listing.advance()
            if item is None:
                continue
            path = dest + "/" + filename  # a plain string: a Path per message costs
            try:
                os.rename(item[1], path)
            except FileNotFoundError:
                continue  # another sender claimed it first
            crash_point("send.after_claim")
            size = self._claimed_size(path, item[1])
            if size is None:
                continue
            claimed.append((item[0], path, size))
            total += size
        return claimed

    def _claimed_size(self, path, back):
        """The size of the claimed ``path``, looked at again now that it is in
        our claim folder, where no producer can swap it any more (the look
        before the rename can be raced). Anything but a regular file with one
        link goes back to ``back`` in ``queue/``, where claims skip it; None."""
        st = os.lstat(path)
        if is_message_file(st):
            return st.st_size
        log.warning("spool: %s is not a regular file with one link: not sent, left in queue/",
                    back)
        os.rename(path, back)
        return None

    def _claim_one(self, queue, dest, filename, now_ms, skip_peers=frozenset()):
        """(name, source path, size) of ``filename`` if it is a due message still
        in ``queue/``; None to skip it."""
        try:
            name = parse(filename)
        except ValidationError:
            return None
        if name.due_ms > now_ms or name.peer in skip_peers:
            return None
        src = queue + "/" + filename
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return None  # another sender claimed it first
        return (name, src, st.st_size) if is_message_file(st) else None

    def _listing_for(self, limit):
        """(listing, True if just made): the kept one while it is fresh."""
        listing = self._listing
        if listing is None or listing.stale(self._monotonic()):
            return self._rescan(limit), True
        return listing, False

    def _rescan(self, limit):
        keep = max(_KEEP_BATCHES * limit, _KEEP_MIN)
        self._listing = Listing.scan(self._queue, keep=keep, clock=self._monotonic)
        return self._listing

    def unclaim(self, active):
        """Return every message still in the claim directory ``active`` to ``queue/``;
        its owner calls this before it lets go of the lock. Returns how many."""
        return self._back_to_queue(active.path)

    def to_sent(self, path, *, keep):
        """An acknowledged message: into ``sent/`` if ``keep``, else unlinked."""
        if keep:
            os.rename(path, f"{self.dirs['sent']}/{os.path.basename(path)}")
        else:
            os.unlink(path)
        crash_point("send.after_move_sent")

    def to_deferred(self, path, name, *, due_ms, count_attempt=True):
        """Move a claimed message to ``deferred/``, its next attempt due at ``due_ms``."""
        attempts = name.attempts + 1 if count_attempt else name.attempts
        new = name.replace(attempts=attempts, due_ms=due_ms)
        os.rename(path, self.dirs["deferred"] / str(new))
        crash_point("send.after_defer")
        return new

    def to_dead(self, path, name, reason):
        """Give up on a message: its reason first, then the message, into ``dead/``.
        ``SpoolFull`` if the disk has no room for the reason; the message stays put."""
        check_message(path)
        dead = self.dirs["dead"] / str(name)
        note = self.dirs["tmp"] / (f".reason-{os.getpid()}-" + str(name))
        self._write_note(note, reason.rstrip("\n") + "\n")
        crash_point("dead.after_reason_write")
        os.rename(note, dead.with_name(dead.name + REASON_SUFFIX))
        crash_point("dead.after_reason_rename")
        os.rename(path, dead)
        crash_point("dead.after_move")
