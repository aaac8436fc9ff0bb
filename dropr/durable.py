"""syncfs(2), where the kernel reports write-back errors through it: one
flush of a whole filesystem for many files, used by the client spool's bulk
put and the server store's batches.

Linux reports a write-back error to every descriptor of the filesystem that
was open when the error happened and has not seen it yet (``errseq``, from
5.8 on for syncfs). A descriptor opened *after* the error, or a kernel before
5.8, may be told nothing: so the descriptor is opened before anything is
written, and where the kernel cannot report, callers fsync each file instead.
"""

import ctypes
import os


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
