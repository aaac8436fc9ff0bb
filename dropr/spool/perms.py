"""Who may do what in a client spool shared with producers of other users
(``[client] group``), after Postfix's ``maildrop/``.

    spool/          0710  owner: droprd's user  group: [client] group
    spool/tmp/      3730  (setgid, sticky)  producers create their message here
    spool/queue/    3730  (setgid, sticky)  ... and publish it here with rename()
    the others      0700  active/ deferred/ hold/ sent/ dead/ peers/: droprd's alone

A member of the group may create a file in ``tmp/`` and rename it into
``queue/`` (write and search), but may not list either folder (no read), and
the sticky bit keeps it from renaming or removing a file it does not own.
droprd's user owns both folders, so the sticky bit does not stop its senders
from claiming (renaming out of ``queue/``) or its reaper from removing stale
``tmp/`` files. Everything past ``queue/`` is droprd's alone.

A producer's file belongs to the producer. droprd reads it through a default
POSIX ACL on ``tmp/`` that every new file inherits: ``user:<droprd>:r``,
``group::---``, ``other::---``; so droprd may read it and the other members of
the group may not, even knowing its name. On a filesystem without POSIX ACLs
the file's group (the folder's, by setgid) lets droprd read it, and so may any
member who learns a file name (names carry 80 random bits, and the folders
cannot be listed); granting droprd CAP_DAC_READ_SEARCH instead and running
producers with umask 077 keeps the guarantee there (README, "Users and
permissions").
"""

import errno
import logging
import os
import struct
from pathlib import Path

from dropr.errors import AccessDenied, DroprError
from dropr.fs import fix_folder as _fix
from dropr.fs import group_id
from dropr.fs import user_name as _name_of_user

log = logging.getLogger(__name__)

ROOT_MODE = 0o710
DROP_MODE = 0o3730
PRIVATE_MODE = 0o700
#: The folders producers write into.
DROP_DIRS = ("tmp", "queue")
ACL_XATTR = "system.posix_acl_default"
_NO_ACL = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENODATA)
# Linux's posix_acl_xattr layout: a version, then (tag, perm, id) entries in tag order.
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_NO_ID = 0xFFFFFFFF
_R, _W = 4, 2


def default_acl(reader_uid):
    """The default ACL (xattr bytes) that lets ``reader_uid`` read new files, and
    nobody but their owner otherwise."""
    entries = ((_USER_OBJ, _R | _W, _NO_ID), (_USER, _R, reader_uid), (_GROUP_OBJ, 0, _NO_ID),
               (_MASK, _R, _NO_ID), (_OTHER, 0, _NO_ID))
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def layout(spool):
    """[(folder, mode)] of the spool for a shared group, the root first."""
    wanted = [(spool.root, ROOT_MODE)]
    for state, path in (*spool.dirs.items(), ("peers", spool.peers_dir)):
        wanted.append((path, DROP_MODE if state in DROP_DIRS else PRIVATE_MODE))
    return wanted


def prepare(spool, group, *, strict):
    """Make the spool's folders that are missing, and set the modes, group and
    ACL of those this user owns, for producers in ``group``. What it cannot set
    (a folder of another owner) is a problem: with ``strict`` (``droprd
    start``) a DroprError lists each with the commands that fix it; otherwise
    a warning. Returns the list of changes made."""
    gid, uid = group_id(group), os.geteuid()
    if not strict and os.path.isdir(spool.root) and os.stat(spool.root).st_uid != uid:
        return []  # another user's spool (root looking with `dropr spool ls`): not ours to judge
    changes, problems = [], []
    for path, mode in layout(spool):
        if not os.path.lexists(path):
            _make(path, mode, gid, group)
            log.info("spool: made %s", path)
            continue
        changes += _fix(path, mode, gid, uid, group, problems)
    if uid != 0:  # root reads every file anyway
        changes += _fix_acl(spool.dirs["tmp"], uid, problems)
    for change in changes:  # a warning: the operator should know the spool was changed
        log.warning("spool: fixed %s", change)
    if problems and strict:
        raise DroprError(f"spool {spool.root} is not set up for [client] group = {group!r}:\n  "
                         + "\n  ".join(problems))
    for problem in problems:
        log.warning("spool: %s", problem)
    return changes


def _make(path, mode, gid, group):
    os.mkdir(path, 0o700)
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        user = _name_of_user(os.geteuid())
        raise DroprError(f"{path}: cannot give it to group {group}: {user} is not a member "
                         f"(as root: usermod -a -G {group} {user})") from None
    os.chmod(path, mode)  # after chown, which may clear the setgid bit; not under the umask


def acl_state(path, uid):
    """'ok', 'missing' (wrong or none) or 'unsupported' for the default ACL of ``path``."""
    try:
        return "ok" if os.getxattr(path, ACL_XATTR) == default_acl(uid) else "missing"
    except OSError as e:
        if e.errno == errno.ENODATA:
            return "missing"
        if e.errno in _NO_ACL:
            return "unsupported"
        raise


def _fix_acl(path, uid, problems):
    state = acl_state(path, uid)
    if state == "ok":
        return []
    if state == "unsupported":
        log.warning("spool: the filesystem of %s has no POSIX ACLs: droprd reads producers' "
                    "files through their group, so a producer who learns another's file name "
                    "can read it (README: Users and permissions)", path)
        return []
    if os.lstat(path).st_uid != uid:
        problems.append(f"{path}: no default ACL for {_name_of_user(uid)}: as its owner, "
                        f"setfacl -d -m u::rw,u:{_name_of_user(uid)}:r,g::-,m::r,o::- {path}")
        return []
    try:
        os.setxattr(path, ACL_XATTR, default_acl(uid))
    except OSError as e:
        if e.errno not in _NO_ACL:
            raise
        log.warning("spool: %s takes no POSIX ACL (%s)", path, e.strerror)
        return []
    return [f"{path}: default ACL user:{_name_of_user(uid)}:r for producers' files"]


def reach(spool, group):
    """A producer's check (it never makes or changes folders in a shared spool):
    it can search the root and write into ``tmp/`` and ``queue/``."""
    if not os.path.isdir(spool.root) and os.access(spool.root.parent, os.X_OK):
        raise DroprError(f"spool {spool.root} does not exist: droprd makes it when it "
                         "starts (droprd start)")
    for path in (spool.root, spool.dirs["tmp"], spool.dirs["queue"]):
        need, what = ((os.X_OK, "search (x)") if path == spool.root
                      else (os.W_OK | os.X_OK, "write and search (wx)"))
        if not os.access(path, need, effective_ids=True):
            raise denied(path, what, group)


def denied(path, what, group, key="[client] group"):
    """The AccessDenied for ``path``, with what to do about it."""
    path = Path(path)
    for folder in list(reversed(path.parents))[1:]:
        if not os.access(folder, os.X_OK, effective_ids=True):
            path, what = folder, "search (x)"
            break
    if group:
        hint = (f"members of group {group} have it ({key} = \"{group}\"; README: Users and "
                "permissions)")
    else:
        hint = f"users other than the owner need {key} (README: Users and permissions)"
    return AccessDenied(path, what, hint)


def explain(error, group, key):
    """AccessDenied for a PermissionError of any file operation: the folder on
    the way that cannot be searched, else the file that cannot be read, else
    the folder that cannot be written."""
    path = Path(error.filename or ".")
    if os.path.lexists(path) and not os.access(path, os.R_OK, effective_ids=True):
        return denied(path, "read (r)", group, key)
    if not os.access(path.parent, os.W_OK | os.X_OK, effective_ids=True):
        return denied(path.parent, "write and search (wx)", group, key)
    return denied(path, "read and write", group, key)
