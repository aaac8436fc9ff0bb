"""The names of the server store's message files, and the mark of their format.

A message is known by its channel, priority, client and id: its file in
``queue/<channel>/`` (and later ``work/``, ``done/``, ``dead/``) is
``P.CLIENT@ID``. The client (the one its bearer token names) is part of the
name, so one client cannot pre-empt another's ids, while a re-send by the
same client finds its earlier copy and is a duplicate.

Stores made before carry ``P.ID`` names. A store made since holds the file
``.format``; one without it is an older store, where :class:`dropr.store.files.Store`
also looks for a ``P.ID`` copy of the same client, until
:func:`old_names_left` finds none and the store is marked (by the reaper).
Used by :mod:`dropr.store.files` alone, which owns the layout.
"""

import contextlib
import functools
import json
import os
from pathlib import Path

from dropr.errors import ValidationError
from dropr.store import Message

MAGIC = b"DROPR1 "
HEADER_MAX = 4096

#: Bytes of disk a stored message may take beyond its body and the rounding of
#: its last block: its header line (ids, channel and client of at most 64
#: characters each) and its directory entry.
MESSAGE_OVERHEAD = 512

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


def header_line(message_id, channel, priority, client, received_at, legacy_id=None):
    """The first line of a stored file. Formatted by hand, as json.dumps would
    with these separators: id and channel are checked names that need no
    escaping (the caller checks them first), and the client is encoded once."""
    legacy = f',"legacy_id":{json.dumps(legacy_id)}' if legacy_id is not None else ""
    return (f'DROPR1 {{"id":"{message_id}","channel":"{channel}","priority":{priority:d},'
            f'"client":{_json_string(client)},"received_at":{_float_text(received_at)}'
            f'{legacy}}}\n').encode()


@functools.lru_cache(maxsize=1024)
def _json_string(text):
    return json.dumps(text)


@functools.lru_cache(maxsize=16)
def _float_text(value):
    """``repr(float(value))``: the messages of a batch share one time, spelled once."""
    return repr(float(value))


def read_message(path):
    """The :class:`Message` stored at ``path``; ``ValidationError`` if it is not one."""
    with open(path, "rb") as f:
        line = f.readline(HEADER_MAX)
        size = os.fstat(f.fileno()).st_size
    if not line.startswith(MAGIC) or not line.endswith(b"\n"):
        raise ValidationError(f"{path}: not a dropr message file")
    meta = json.loads(line[len(MAGIC):])
    return Message(meta["id"], meta["channel"], meta["priority"], meta["client"],
                   meta["received_at"], size - len(line), Path(path), len(line),
                   meta.get("legacy_id"))
