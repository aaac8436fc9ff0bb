"""The server store: the receiver writes it, consumers read it.

    .format                      names are P.CLIENT@ID (absent: an older store,
                                 see :mod:`dropr.store.files.format`)
    tmp/                         bodies being received
    queue/<channel>/P.CLIENT@ID  stored, waiting for a consumer
    work/<consumer>/<channel>/   claimed by a consumer
    work/<consumer>/.lock        flock-ed by a consumer process while it lives
    retry/<channel>/P.CLIENT@ID  failures of a message that waits for a new try
    done/<channel>/              acknowledged; expired by the reaper
    dead/<channel>/              given up by a consumer (``dropr consume``);
                                 ``P.CLIENT@ID.reason`` beside it says why

This package alone knows the layout. A stored file is a one-line header
(``DROPR1 {json}\\n`` with id, channel, priority, client and received_at)
followed by the message body byte for byte, so a message and its metadata
appear together or not at all. A message is published by ``os.link`` of the
finished, fsync-ed ``tmp/`` file into ``queue/<channel>/``: the link fails if
the name exists, so two uploads of the same id cannot both win.

A message is known by its channel, priority, client and id (its name,
:mod:`dropr.store.files.format`). In a store made before client names (no
``.format``) a message is also a duplicate of an old ``P.ID`` copy of the same
client, so that a re-send across the upgrade is not stored twice, until the
reaper marks the store (:meth:`Store.adopt_format`).

Its parts, each mixed into :class:`Store`: :mod:`.format` (the record
format and the names), :mod:`.intake` (the receiver's staging and
publishing), :mod:`.claims` (consumers: claim, ack, retry, bury),
:mod:`.expiry` (the reaper's) and :mod:`.operator` (pause, dead letters,
purge, trace). The interface it shares with the JetStream store is
:class:`dropr.store.Backend`.
"""

import contextlib
import itertools
import os
import time
from pathlib import Path

from dropr import fs
from dropr.fs import fsync_dir, make_dirs
from dropr.store.files import format as store_names
from dropr.store.files.claims import ClaimsMixin
from dropr.store.files.expiry import ExpiryMixin
from dropr.store.files.intake import IntakeMixin
from dropr.store.files.operator import OperatorMixin

#: With ``[receiver] group``: members (consumer accounts) may pass the root,
#: claim, read, ack, retry and bury (the rest), and write their failure notes
#: into ``tmp/`` but neither list it nor touch the bodies being received there.
SHARED_MODES = {"": 0o2750, "tmp": 0o3730, "queue": 0o2770, "work": 0o2770, "done": 0o2770,
                "dead": 0o2770, "retry": 0o2770}


class Store(IntakeMixin, ClaimsMixin, ExpiryMixin, OperatorMixin):
    """The filesystem store at ``root``. Used by receiver workers, consumers,
    the reaper and the admin commands, each in its own process."""

    def __init__(self, root, *, fsync=True, group="", clock=time.time):
        self.root = Path(root)
        self._root = str(self.root)  # the receiver's hot path joins plain strings, not Paths
        self.fsync = fsync
        self._clock = clock
        self._serial = itertools.count()  # next() is atomic: safe for the request threads
        # (channel, client) pairs that passed the name checks (see stage()); a
        # set's add and membership test are atomic for the request threads.
        self._good_names = set()
        # Read once: a Store copied into a forked child makes the same names
        # as its parent, and O_EXCL then moves it on to the next number.
        self._pid = os.getpid()
        if not (self.root / "queue").is_dir():  # a new store: marked before its folders
            self.root.mkdir(parents=True, exist_ok=True)
            store_names.mark(self.root)
        make_dirs(self.root, [self.root / sub for sub in ("tmp", "queue", "work", "done", "dead")],
                  fsync=fsync)
        if group:
            fs.share(self.root, SHARED_MODES, group, key="[receiver] group")
        # A store older than P.CLIENT@ID names may hold P.ID copies of what comes again.
        self._legacy = not store_names.marked(self._root)

    def close(self):
        """Nothing to release (the JetStream store closes its connection)."""

    def _make_dir(self, path, *, always_sync=False):
        """Make the folder ``path`` inside the store, and its missing parents. With
        fsync, the parent of each one made is synced: a new folder, and whatever
        is moved into it, survives an OS crash only once its parent is synced.
        ``always_sync``: sync the parent even if another process made it."""
        path = Path(path)
        if path.is_dir() and not always_sync:
            return
        if not path.parent.is_dir():
            self._make_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        if self.fsync:
            fsync_dir(path.parent)


__all__ = ["SHARED_MODES", "Store"]
