"""Filesystem primitives that both sides use, the client spool and the
server store: a folder's fsync, a write that writes everything, the folder a
process holds with ``flock`` for its whole life, free space, the errors of a
full disk, the modes and group of a tree shared with a group's members, and
syncfs(2).

Nothing here knows a layout: the spool module alone knows the client's, the
store package alone the server's.

syncfs(2) flushes a whole filesystem for many files (the spool's bulk put and
the store's batches). Linux reports a write-back error to every descriptor of
the filesystem that was open when the error happened and has not seen it yet
(``errseq``, from 5.8 on for syncfs). A descriptor opened *after* the error,
or a kernel before 5.8, may be told nothing: so the descriptor is opened
before anything is written, and where the kernel cannot report, callers
fsync each file instead.
"""

import ctypes
import errno
import fcntl
import grp
import logging
import os
import pwd
import stat
from pathlib import Path

from dropr.errors import ConfigError

log = logging.getLogger(__name__)

#: The file in a :class:`LockedDir` that its process holds with ``flock``.
LOCK = ".lock"

#: The errors of a full disk (no space, or over a quota).
FULL = (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path):
    """Make the entries of directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(root, paths, *, fsync):
    """Make the directories ``paths`` under ``root`` (idempotent). With ``fsync``
    a tree made now is synced, because a new directory lasts through an OS
    crash only once the directory that holds it is synced."""
    made = False
    for path in paths:
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            made = True
    if made and fsync:
        fsync_dir(root)
        fsync_dir(root.parent)


def write_all(fd, data):
    """Write all of ``data`` to ``fd`` (``os.write`` may write less)."""
    written = os.write(fd, data)  # nearly always all of it
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


def try_lock(fd, *, shared=False):
    """Take ``flock`` on ``fd`` without waiting: True if taken, False if
    another process holds it. The kernel drops the lock when the last
    descriptor of the open file closes, so when its process dies."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_file(path, *, create=True, mode=0o640):
    """Open ``path`` (made with ``mode`` if ``create``) and lock it without
    waiting: the descriptor, or None (and nothing left open) if another
    process holds the lock. ``FileNotFoundError`` if absent and not ``create``."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, mode)
    if try_lock(fd):
        return fd
    os.close(fd)
    return None


class LockedDir:
    """A directory whose ``.lock`` this process holds with ``flock`` for as long
    as it lives: a sender's claim directory, or a consumer's work folder in the
    store. The kernel drops the lock when the process dies, which is how others
    tell an orphaned directory from a live one."""

    def __init__(self, path, fd):
        self.path = path
        self._fd = fd

    def close(self):
        """Release the lock (the directory stays; the reaper removes it when empty)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def free_bytes(path):
    """Bytes free for this process's writes on the filesystem that holds ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def free_inodes(path):
    """Inodes free for this process's files on the filesystem that holds
    ``path`` (``None`` where the filesystem does not count them)."""
    st = os.statvfs(path)
    return st.f_favail if st.f_files else None


# -- a tree shared with a group -------------------------------------------------

def group_id(name, key="[client] group"):
    """The gid of group ``name``; ConfigError naming ``key`` if there is none."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"{key}: no group named {name!r} on this host") from None


def group_name(gid):
    """The name of group ``gid`` (its number where it has none)."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_name(uid):
    """The name of user ``uid`` (its number where it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def fix_folder(path, mode, gid, uid, group, problems):
    """Give the folder ``path`` ``mode`` and group ``gid`` (named ``group``)
    if this user ``uid`` owns it; the change made as a list of one line, or
    none. What it cannot fix is appended to ``problems``, with the commands
    that would."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        problems.append(f"{path} is not a folder (a symlink?): make it a folder owned by "
                        f"{user_name(uid)}")
        return []
    have = stat.S_IMODE(st.st_mode)
    if st.st_uid == uid and have == mode and st.st_gid == gid:
        return []
    fix = (f"chown {user_name(uid)}:{group} {path} && chmod {mode:04o} {path}")
    if st.st_uid != uid:
        problems.append(f"{path} belongs to {user_name(st.st_uid)}, not to "
                        f"{user_name(uid)} (droprd's user): as root, {fix}")
        return []
    try:
        if st.st_gid != gid:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
    except PermissionError:
        problems.append(f"{path}: cannot give it to group {group}: is {user_name(uid)} "
                        f"a member? (as root: usermod -a -G {group} {user_name(uid)})")
        return []
    return [f"{path}: mode {have:04o} group {group_name(st.st_gid)} -> "
            f"mode {mode:04o} group {group}"]


def share(root, modes, group, *, key):
    """A tree shared by its owner with the members of ``group`` (the server
    store with ``[receiver] group``): this process makes its new folders and
    files the group's (umask 007; the setgid folders give them the group), and
    sets ``modes`` ({relative folder: mode}, "" = ``root``) and the group on
    the folders it owns, and on their sub-folders (channels, consumers) the
    mode of their parent less its sticky bit. Folders of other owners are
    left as they are, with a warning."""
    gid, uid = group_id(group, key), os.geteuid()
    os.umask(0o007)
    problems, changes = [], []
    for rel, mode in modes.items():
        top = Path(root, rel)
        folders = [top] + (sorted(_subfolders_of(top, depth=2)) if rel and rel != "tmp" else [])
        for path in folders:
            want = mode if path == top else mode & ~stat.S_ISVTX
            if os.path.isdir(path):
                changes += fix_folder(path, want, gid, uid, group, problems)
    for change in changes:
        log.info("store: %s", change)
    for problem in problems:
        log.warning("store: %s", problem)


def _subfolders_of(top, depth):
    try:
        entries = [e for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, PermissionError):
        return []
    found = [Path(e.path) for e in entries]
    if depth > 1:
        for e in entries:
            found += _subfolders_of(e.path, depth - 1)
    return found


# -- syncfs(2) -----------------------------------------------------------------

def _syncfs_function():
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    return function


#: libc's syncfs(2), or None where there is none.
_SYNCFS = _syncfs_function()


def kernel_at_least(major, minor, release=None):
    """Is the running kernel (or ``release``) at least ``major.minor``?"""
    release = release or os.uname().release
    try:
        found = tuple(int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return found >= (major, minor)


#: syncfs(2) reports write-back errors only since Linux 5.8, and then to each
#: descriptor those that happened since it was opened (or since its last
#: syncfs). Before that it returns 0 even when data was lost: one fsync per file.
SYNCFS_REPORTS_ERRORS = _SYNCFS is not None and kernel_at_least(5, 8)


def syncfs(fd):
    """syncfs(2) through ``fd``, a descriptor opened before the first write it
    must vouch for: a descriptor opened later would miss an error that another
    process (another worker's syncfs, ``sync -f``) saw first."""
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class FsFlush:
    """A flush of the whole filesystem that holds ``path``, armed before the
    first write. Made and used in one process (a producer's put_many)."""

    def __init__(self, path):
        self._fd = (os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    if SYNCFS_REPORTS_ERRORS else None)

    @property
    def available(self):
        """False where syncfs cannot be trusted: fsync each file instead."""
        return self._fd is not None

    def flush(self):
        """Everything written on the filesystem since this was made is on disk,
        or ``OSError`` (the write-back error) is raised."""
        syncfs(self._fd)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
