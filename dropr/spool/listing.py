"""A sender's kept listing of the spool's ``queue/``: see :class:`Listing`."""

import contextlib
import itertools
import os


class Listing:
    """The first ``keep`` names of ``queue/`` in send order, from one directory
    listing, handed out one by one to the claims of one sender process.

    Listing a deep queue costs far more than claiming a batch from it, so the
    listing is kept until it runs out or until it is older than STALE_FACTOR
    times what it took to make: listing then costs at most about 1/STALE_FACTOR
    of the sender's time, whatever the depth, and a message put meanwhile
    (an urgent one too) waits at most that long to be seen. A short queue is
    listed in microseconds, so for it every claim sees a fresh listing.
    Only ``keep`` names are held, so memory stays bounded however deep it is."""

    STALE_FACTOR = 20

    def __init__(self, names, *, made_at, cost):
        self.names = names
        self.pos = 0
        self.fresh_until = made_at + self.STALE_FACTOR * cost

    @classmethod
    def scan(cls, path, *, keep, clock):
        """List ``path`` (the regular files only) and keep its first ``keep`` names."""
        started, names = clock(), []
        with contextlib.suppress(FileNotFoundError), os.scandir(path) as it:
            raw = (e.name for e in it if e.is_file(follow_symlinks=False))
            # Sorting blocks into the kept names is about twice as fast as a heap
            # (heapq.nsmallest), and holds at most 5 * keep names at a time.
            while block := list(itertools.islice(raw, 4 * keep)):
                names += block
                names.sort()
                del names[keep:]
        done = clock()
        return cls(names, made_at=done, cost=done - started)

    def stale(self, now):
        """True once the listing is too old to hand out more names."""
        return now >= self.fresh_until

    def peek(self):
        """The next name, or None when this listing has run out."""
        return self.names[self.pos] if self.pos < len(self.names) else None

    def advance(self):
        """Move past the name that :meth:`peek` gave."""
        self.pos += 1
