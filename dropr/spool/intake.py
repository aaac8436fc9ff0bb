"""A producer's writes into the client spool: a message is written in ``tmp/``
(made afresh, never through a symlink) and renamed into ``queue/``; a bulk
put makes the whole batch durable with one flush. Mixed into
:class:`dropr.spool.Spool`."""

import contextlib
import os

from dropr.errors import SpoolFull, ValidationError
from dropr.faults import crash_point
from dropr.fs import FULL as _FULL
from dropr.fs import FsFlush, fsync_dir
from dropr.fs import write_all as _write_all
from dropr.spool import perms

_CHUNK = 1 << 20


def _copy_into(fd, data):
    """Write ``data`` (bytes, a path, or a binary file object) to ``fd``, streaming."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        written = os.write(fd, data)
        if written < len(data):  # rare: a signal, or a file past its first few MiB
            _write_all(fd, memoryview(data)[written:])
    elif isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(fd, src.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
    elif hasattr(data, "read"):
        while chunk := data.read(_CHUNK):
            _write_all(fd, chunk)
    else:
        raise ValidationError(f"data must be bytes, a path or a binary file, not {type(data).__name__}")


def _create_afresh(path, tries=5):
    """A new file at ``path`` (O_EXCL, O_NOFOLLOW), whatever was there removed;
    a few tries, in case a producer keeps putting something there."""
    for _ in range(tries - 1):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with contextlib.suppress(FileExistsError):
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o644)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


class Intake:
    """Producers' writes: ``tmp/`` → ``queue/``."""

    def put(self, data, name):
        """Write ``data`` under ``name`` (a :class:`SpoolName` or its string) into
        ``tmp/``, then rename it into ``queue/``; returns the path in ``queue/``.

        Raises ``SpoolFull`` on a full disk, after removing the partial file."""
        filename = str(name)
        # Plain strings, not Paths: this is the producer's hot path.
        tmp, queued = f"{self._tmp}/{filename}", f"{self._queue}/{filename}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            try:
                _copy_into(fd, data)
                crash_point("put.after_tmp_write")
                if self.fsync:
                    os.fsync(fd)
                crash_point("put.after_fsync")
            finally:
                os.close(fd)
            os.rename(tmp, queued)
            crash_point("put.after_rename")
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(tmp)
            if isinstance(e, OSError) and e.errno in _FULL:
                raise SpoolFull(f"spool {self.root} is full: {e.strerror}") from None
            if isinstance(e, PermissionError):
                folder = self._tmp if e.filename == tmp and e.filename2 is None else self._queue
                raise perms.denied(folder, "write and search (wx)", self.group) from None
            raise
        if self.fsync:
            self._sync_queue(queued)
        crash_point("put.after_dir_fsync")
        return queued

    def put_many(self, items):
        """Spool each ``(data, name)`` of ``items`` with one flush for them all:
        every body is written into ``tmp/``, the filesystem is flushed once
        (syncfs, armed before the first write; an fsync per file where the
        kernel cannot report write-back errors through syncfs), then each is
        renamed into ``queue/`` and ``queue/`` is synced once. A crash leaves
        each message whole in ``queue/`` or only in ``tmp/``, which the reaper
        clears. On any error every message of the call is taken back (but one
        a sender claimed in the instant between its rename and the error) and
        the error is raised: ``SpoolFull`` for a full disk."""
        written, queued = [], []
        flush = FsFlush(self._tmp) if self.fsync else None
        try:
            for data, name in items:
                written.append(self._write_tmp(str(name), data, fsync=flush is not None
                                               and not flush.available))
                crash_point("put_many.after_tmp_write")
            if flush is not None and flush.available:
                flush.flush()
            crash_point("put_many.after_flush")
            for filename in written:
                os.rename(f"{self._tmp}/{filename}", f"{self._queue}/{filename}")
                queued.append(filename)
                crash_point("put_many.after_rename")
            if self.fsync:
                fsync_dir(self._queue)
            crash_point("put_many.after_dir_fsync")
        except BaseException as e:
            self._take_back(written, queued)
            if isinstance(e, OSError) and e.errno in _FULL:
                raise SpoolFull(f"spool {self.root} is full: {e.strerror}") from None
            if isinstance(e, PermissionError):
                folder = self._queue if e.filename2 is not None else self._tmp
                raise perms.denied(folder, "write and search (wx)", self.group) from None
            raise
        finally:
            if flush is not None:
                flush.close()

    def _write_tmp(self, filename, data, *, fsync):
        """Create ``tmp/filename`` holding ``data``; returns ``filename``. A
        partial file is removed before the error is raised."""
        tmp = f"{self._tmp}/{filename}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            _copy_into(fd, data)
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.close(fd)
        return filename

    def _take_back(self, written, queued):
        """Undo a failed put_many: back out of ``queue/`` (unless already claimed),
        then out of ``tmp/``."""
        for filename in queued:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.rename(f"{self._queue}/{filename}", f"{self._tmp}/{filename}")
        for filename in written:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(f"{self._tmp}/{filename}")

    def _sync_queue(self, queued):
        """Make the rename into ``queue/`` durable. If that fails, take the message
        back out before raising, so that a caller who puts it again does not make
        a second one. (Should a sender have claimed it in that instant, it may be
        delivered as well: twice is better than a success that an OS crash undoes.)"""
        try:
            fsync_dir(self._queue)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(queued)
            raise
