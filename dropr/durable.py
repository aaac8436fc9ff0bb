"""One flush for many files: syncfs(2) through a descriptor held from before
the first write.

Linux reports a write-back error to every descriptor of the filesystem that
was open when the error happened and has not seen it yet (``errseq``, from
5.8 on for syncfs). A descriptor opened *after* the error, or a kernel before
5.8, may be told nothing: so the descriptor is opened before anything is
written, and where the kernel cannot report, callers fsync each file instead.
"""

import ctypes
import os
import platform


def _syncfs_function():
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    return function


def _reports_errors(release):
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


#: libc's syncfs(2) where it exists and the kernel reports write-back errors through it.
_SYNCFS = _syncfs_function() if _reports_errors(platform.release().split("-")[0]) else None


class FsFlush:
    """A flush of the whole filesystem that holds ``path``, armed before the
    first write. Made and used in one process (a producer's put_many)."""

    def __init__(self, path):
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if _SYNCFS else None

    @property
    def available(self):
        """False where syncfs cannot be trusted: fsync each file instead."""
        return self._fd is not None

    def flush(self):
        """Everything written on the filesystem since this was made is on disk,
        or ``OSError`` (the write-back error) is raised."""
        if _SYNCFS(self._fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
