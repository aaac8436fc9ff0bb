"""A census of the client spool: messages and bytes per state and peer, and
the oldest message not yet delivered, for the producer host's metrics.

One directory listing per state (and per claim folder under ``active/``), a
``stat()`` per file for its size, no full parse of the names: the peer is the
third field of a name and the creation time the first ten characters of its
id (a ULID; ids dropr did not make fall back to the file's mtime, as the
retry scanner does). ``bench/census.py`` measures it at a deep spool.
"""

import dataclasses
import os

from dropr import ids
from dropr.errors import ValidationError
from dropr.spool.filenames import unquote
from dropr.spool.files import REASON_SUFFIX

#: The states counted, as the spool's directories (``tmp/`` and ``hold/`` are not).
STATES = ("queue", "active", "deferred", "sent", "dead")
#: The states whose messages are not yet delivered.
WAITING = ("queue", "active", "deferred")


@dataclasses.dataclass
class Census:
    """What the spool held at one moment. ``counts[state][peer]`` and
    ``sizes[state][peer]``; ``oldest_ms[peer]``: the creation time (ms since
    the epoch) of its oldest waiting message (absent: none waits)."""

    counts: dict
    sizes: dict
    oldest_ms: dict
    peers: set

    def oldest_age(self, peer, now):
        """Seconds since the oldest waiting message of ``peer`` was made; 0 when none waits."""
        created = self.oldest_ms.get(peer)
        return 0.0 if created is None else max(0.0, now - created / 1000.0)


#: Files between two calls of ``progress``.
PROGRESS_EVERY = 10_000


def take(spool, *, progress=None):
    """Count ``spool`` (a :class:`~dropr.spool.Spool`) now; returns a :class:`Census`.
    ``progress()`` is called every PROGRESS_EVERY files (a worker's heartbeat:
    a deep spool takes seconds)."""
    counts = {state: {} for state in STATES}
    sizes = {state: {} for state in STATES}
    oldest = {}  # peer -> [smallest id, smallest mtime of a foreign id]
    peers = {}  # the encoded peer field -> peer name (None: not a dropr name)
    for state in STATES:
        folders = spool.active_dirs() if state == "active" else [spool.dirs[state]]
        for folder in folders:
            _count(folder, counts[state], sizes[state],
                   oldest if state in WAITING else None, peers, progress)
    oldest_ms = {}
    for peer, (smallest_id, smallest_mtime) in oldest.items():
        made = [t for t in (ids.timestamp_ms(smallest_id) if smallest_id else None,
                            smallest_mtime) if t is not None]
        if made:
            oldest_ms[peer] = min(made)
    return Census(counts, sizes, oldest_ms, {p for p in peers.values() if p is not None})


def _count(folder, counts, sizes, oldest, peers, progress):
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        # Listed by descriptor, each stat() is relative to it: no path walk per file.
        with os.scandir(fd) as it:
            for n, entry in enumerate(it, 1):
                if progress is not None and n % PROGRESS_EVERY == 0:
                    progress()
                _count_one(entry, counts, sizes, oldest, peers)
    finally:
        os.close(fd)


def _count_one(entry, counts, sizes, oldest, peers):
    parts = entry.name.split(".", 3)
    if len(parts) < 4 or len(parts[0]) != 1 or entry.name.endswith(REASON_SUFFIX):
        return  # a lock, a dead message's reason, a file dropr did not name
    peer = peers.get(parts[2], "")
    if peer == "":
        peer = peers[parts[2]] = _peer(parts[2])
    if peer is None:
        return
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return  # moved on since the listing
    counts[peer] = counts.get(peer, 0) + 1
    sizes[peer] = sizes.get(peer, 0) + st.st_size
    if oldest is not None:
        _older(oldest, peer, parts[1], st.st_mtime)


def _peer(field):
    try:
        return unquote(field)
    except ValidationError:
        return None


def _older(oldest, peer, message_id, mtime):
    seen = oldest.get(peer)
    if seen is None:
        seen = oldest[peer] = [None, None]
    if len(message_id) == 26:  # a ULID: ids sort by creation time
        if seen[0] is None or message_id < seen[0]:
            seen[0] = message_id
    elif seen[1] is None or mtime * 1000 < seen[1]:
        seen[1] = int(mtime * 1000)
