"""The names of the server store's message files, and the mark of their format.

A message is known by its channel, priority, client and id: its file in
``queue/<channel>/`` (and later ``work/``, ``done/``, ``dead/``) is
``P.CLIENT@ID``. The client (the one its bearer token names) is part of the
name, so one client cannot pre-empt another's ids, while a re-send by the
same client finds its earlier copy and is a duplicate.

Stores made before carry ``P.ID`` names. A store made since holds the file
``.format``; one without it is an older store, where :class:`dropr.store.Store`
also looks for a ``P.ID`` copy of the same client, until
:func:`old_names_left` finds none and the store is marked (by the reaper).
Used by :mod:`dropr.store` alone, which owns the layout.
"""

import contextlib
import os

#: Beside a message in ``dead/<channel>/``: why a consumer gave it up.
REASON_SUFFIX = ".reason"

#: Written into a store whose names are ``P.CLIENT@ID``.
FORMAT_FILE = ".format"
FORMAT = b"dropr-store 2\n"


def is_message(name):
    """Is ``name`` (in a channel's folder) a message, not a lock or reason file?"""
    return not name.startswith(".") and not name.endswith(REASON_SUFFIX)


def entry_name(priority, client, message_id):
    """The file name of a message: ``P.CLIENT@ID``. Neither a client name nor
    an id holds an ``@``, and an id holds no dot, so the name ends in the id
    (never in ``.reason``) and reads back unambiguously."""
    return f"{priority}.{client}@{message_id}"


def old_name(priority, message_id):
    """The name the same message had in a store made before: ``P.ID``."""
    return f"{priority}.{message_id}"


def id_of(name):
    """The message id in a file name (``P.CLIENT@ID``, or an older ``P.ID``)."""
    return name.partition(".")[2].rpartition("@")[2]


def marked(root):
    """Does the store at ``root`` (a string) hold ``.format``?"""
    return os.path.exists(f"{root}/{FORMAT_FILE}")


def mark(root):
    """Write ``.format`` into the store at ``root`` (a Path that exists);
    several processes may race here, the first one writes it."""
    try:
        fd = os.open(root / FORMAT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        return
    try:
        os.write(fd, FORMAT)
    finally:
        os.close(fd)


def old_names_left(root):
    """Is a ``P.ID`` name left in the folders duplicates are looked for in?

    They are listed in the order messages move (``queue/``, each ``work/``,
    ``done/``), so a message that moves on meanwhile is met again further on;
    twice, for one that a consumer gave back to ``queue/`` meanwhile. A
    listing stops at the first ``P.ID`` name."""
    for _ in range(2):
        for folder in _dedupe_folders(root):
            with contextlib.suppress(FileNotFoundError), os.scandir(folder) as it:
                if any(is_message(e.name) and "@" not in e.name for e in it):
                    return True
    return False


def _subfolders(path):
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as it:
        return [e.path for e in it if e.is_dir(follow_symlinks=False)]
    return []


def _dedupe_folders(root):
    for state in ("queue", "work", "done"):
        tops = _subfolders(f"{root}/work") if state == "work" else [f"{root}/{state}"]
        for top in tops:
            yield from _subfolders(top)
