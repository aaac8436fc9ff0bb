"""Recording what a scenario does to a tree, for the crash-state explorer
(tests/support/crashstates.py, which has the rules).

:class:`Recorder` records, in this process, the file-system operations a
scenario makes under one root (the crashing host's tree) at the ``os`` level:
``open`` (a create), ``write``, ``fsync``, ``fdatasync``, ``syncfs``,
``rename``/``replace``, ``link``, ``unlink``, ``mkdir``, ``rmdir``, ``close``,
and files opened for writing with ``open()``, whose buffered writes are
recorded when they reach the kernel. :class:`State` is a tree as the explorer
models it: folders, names, and the bytes of each file.
"""

import builtins
import contextlib
import dataclasses
import hashlib
import io
import itertools
import os
import shutil
import stat

import dropr.fs
import dropr.store


@dataclasses.dataclass(frozen=True)
class Op:
    """One recorded operation. ``kind`` is one of create, write, truncate,
    fsync, fsyncdir, syncfs, rename, link, unlink, mkdir, rmdir, close,
    mark. Paths are relative to the recorded root."""

    kind: str
    path: str = None
    dest: str = None
    ino: int = None  # the recorder's own id of the file (inode numbers are reused)
    offset: int = 0
    data: bytes = b""
    is_dir: bool = False


class Recorder:
    """Records what this process does under ``root`` while it is active
    (``with Recorder(root) as rec:``). The tree's state when it starts is the
    durable starting point."""

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.ops = []
        self._ids = {}  # st_ino -> our id
        self._next = itertools.count(1)
        self.initial = self._snapshot()
        self._saved = []

    # -- the starting state --------------------------------------------------

    def _snapshot(self):
        dirs, entries, data = {""}, {}, {}
        for top, subdirs, files in os.walk(self.root):
            rel_top = os.path.relpath(top, self.root)
            rel_top = "" if rel_top == "." else rel_top
            for d in subdirs:
                dirs.add(os.path.join(rel_top, d))
            for f in files:
                path = os.path.join(top, f)
                st = os.lstat(path)
                ident = self._id_of(st.st_ino)
                entries[os.path.join(rel_top, f)] = ident
                if ident not in data:
                    with open(path, "rb") as fh:
                        data[ident] = fh.read()
        return State(dirs, entries, data)

    def _id_of(self, ino, *, new=False):
        if new or ino not in self._ids:
            self._ids[ino] = next(self._next)
        return self._ids[ino]

    # -- recording -------------------------------------------------------------

    def mark(self, key):
        """Something happened that is not on this disk: the scenario promised
        ``key`` (put() returned, ``stored`` answered), or another host received
        it. :func:`explore` tells each check the marks made before its crash."""
        self.ops.append(Op("mark", path=key))

    def _rel(self, path, dir_fd=None):
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        path = os.path.abspath(os.fspath(path))
        if path == self.root:
            return ""
        # Resolve the folder (not the last component: it may be a name being made).
        folder = os.path.realpath(os.path.dirname(path))
        path = os.path.join(folder, os.path.basename(path))
        if path.startswith(self.root + os.sep):
            return path[len(self.root) + 1:]
        return None

    def _fd_target(self, fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            rel = self._rel(os.readlink(f"/proc/self/fd/{fd}"))
            return ("dir", rel) if rel is not None else None
        if self._rel(os.readlink(f"/proc/self/fd/{fd}")) is None:
            return None
        return ("file", self._id_of(st.st_ino))

    def _open(self, real):
        def open_(path, flags, mode=0o777, *, dir_fd=None):
            rel = self._rel(path, dir_fd)
            existed = rel is not None and os.path.lexists(os.path.join(self.root, rel))
            fd = real(path, flags, mode, dir_fd=dir_fd)
            if rel is not None and not stat.S_ISDIR(os.fstat(fd).st_mode):
                st = os.fstat(fd)
                if not existed:
                    self.ops.append(Op("create", path=rel, ino=self._id_of(st.st_ino, new=True)))
                elif flags & os.O_TRUNC:
                    self.ops.append(Op("truncate", ino=self._id_of(st.st_ino)))
            return fd
        return open_

    def _write(self, real):
        def write(fd, data):
            target = self._fd_target(fd)
            offset = os.lseek(fd, 0, os.SEEK_CUR) if target else 0
            n = real(fd, data)
            if target and target[0] == "file":
                self.ops.append(Op("write", ino=target[1], offset=offset,
                                   data=bytes(memoryview(data)[:n])))
            return n
        return write

    def _sync(self, real, kind):
        def sync(fd):
            target = self._fd_target(fd)
            result = real(fd)
            if target is not None:
                if target[0] == "dir":
                    self.ops.append(Op("fsyncdir", path=target[1]))
                else:
                    self.ops.append(Op(kind, ino=target[1]))
            return result
        return sync

    def _close(self, real):
        def close(fd):
            with contextlib.suppress(OSError):
                target = self._fd_target(fd)
                if target is not None and target[0] == "file":
                    self.ops.append(Op("close", ino=target[1]))
            return real(fd)
        return close

    def _syncfs(self, real):
        def syncfs(fd):
            result = real(fd)
            if self._fd_target(fd) is not None:
                self.ops.append(Op("syncfs"))
            return result
        return syncfs

    def _move(self, real, kind):
        def move(src, dst, *, src_dir_fd=None, dst_dir_fd=None, **kwargs):
            rs, rd = self._rel(src, src_dir_fd), self._rel(dst, dst_dir_fd)
            st = os.lstat(src, dir_fd=src_dir_fd) if rs is not None else None
            result = real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kwargs)
            if rs is not None and rd is not None:
                is_dir = stat.S_ISDIR(st.st_mode)
                self.ops.append(Op(kind, path=rs, dest=rd, is_dir=is_dir,
                                   ino=None if is_dir else self._id_of(st.st_ino)))
            elif rd is not None or rs is not None:
                raise AssertionError(f"{kind} across the recorded root: {src} -> {dst}")
            return result
        return move

    def _path_op(self, real, kind):
        def op(path, *args, dir_fd=None, **kwargs):
            rel = self._rel(path, dir_fd)
            result = real(path, *args, dir_fd=dir_fd, **kwargs)
            if rel is not None:
                self.ops.append(Op(kind, path=rel))
            return result
        return op

    def _open_file(self, real_open):
        """``open()`` for writing under the root: the same object stack open()
        builds, over a raw file whose writes are recorded as they reach the OS."""
        recorder = self

        class RecordedFileIO(io.FileIO):
            def write(self, b):
                target = recorder._fd_target(self.fileno())
                offset = os.lseek(self.fileno(), 0, os.SEEK_CUR)
                n = super().write(b)
                if target and target[0] == "file" and n:
                    recorder.ops.append(Op("write", ino=target[1], offset=offset,
                                           data=bytes(memoryview(b)[:n])))
                return n

        def open_(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
                  closefd=True, opener=None):
            writing = any(c in mode for c in "wax+")
            if not writing or isinstance(file, int) or self._rel(file) is None:
                return real_open(file, mode, buffering, encoding, errors, newline, closefd,
                                 opener)
            raw_mode = mode.replace("t", "").replace("b", "")
            raw = RecordedFileIO(file, raw_mode, closefd, opener=opener or os.open)
            if "+" in mode:
                buffered = io.BufferedRandom(raw)
            else:
                buffered = io.BufferedWriter(raw)
            if "b" in mode:
                return buffered
            return io.TextIOWrapper(buffered, encoding or "utf-8", errors, newline)
        return open_

    def __enter__(self):
        patches = [
            (os, "open", self._open), (os, "write", self._write),
            (os, "fsync", lambda r: self._sync(r, "fsync")),
            (os, "fdatasync", lambda r: self._sync(r, "fsync")),
            (os, "close", self._close),
            (os, "rename", lambda r: self._move(r, "rename")),
            (os, "replace", lambda r: self._move(r, "rename")),
            (os, "link", self._link_patch),
            (os, "unlink", lambda r: self._path_op(r, "unlink")),
            (os, "remove", lambda r: self._path_op(r, "unlink")),
            (os, "mkdir", lambda r: self._path_op(r, "mkdir")),
            (os, "rmdir", lambda r: self._path_op(r, "rmdir")),
            (builtins, "open", self._open_file), (io, "open", self._open_file),
        ]
        if dropr.fs._SYNCFS is not None:
            patches.append((dropr.fs, "_SYNCFS", self._syncfs))
        for module, name, wrap in patches:
            real = getattr(module, name)
            self._saved.append((module, name, real))
            setattr(module, name, wrap(real))
        return self

    def _link_patch(self, real):
        def link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
            rs, rd = self._rel(src, src_dir_fd), self._rel(dst, dst_dir_fd)
            result = real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd,
                          follow_symlinks=follow_symlinks)
            if rd is not None:
                st = os.lstat(dst, dir_fd=dst_dir_fd)
                self.ops.append(Op("link", path=rs, dest=rd, ino=self._id_of(st.st_ino)))
            return result
        return link

    def __exit__(self, *exc):
        for module, name, real in reversed(self._saved):
            setattr(module, name, real)
        self._saved.clear()


@dataclasses.dataclass
class State:
    """A tree in the model: folders, names -> file ids, file id -> bytes."""

    dirs: set
    entries: dict
    data: dict

    def copy(self):
        return State(set(self.dirs), dict(self.entries),
                     {k: bytearray(v) for k, v in self.data.items()})

    def digest(self):
        h = hashlib.blake2b(digest_size=16)
        for d in sorted(self.reachable_dirs()):
            h.update(b"D" + d.encode() + b"\0")
        for name, ident in sorted(self.reachable_entries().items()):
            h.update(b"F" + name.encode() + b"\0" + str(ident).encode() + b"\0")
            h.update(hashlib.blake2b(bytes(self.data.get(ident, b""))).digest())
        return h.hexdigest()

    def reachable_dirs(self):
        """Folders whose every ancestor is on disk too (rule 6)."""
        out = set()
        for d in sorted(self.dirs, key=len):
            if d == "" or os.path.dirname(d) in out:
                out.add(d)
        return out

    def reachable_entries(self):
        dirs = self.reachable_dirs()
        return {n: i for n, i in self.entries.items() if os.path.dirname(n) in dirs}

    def materialize(self, target):
        """Write this state as a real tree at ``target`` (replacing what is there)."""
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        for d in sorted(self.reachable_dirs()):
            if d:
                os.mkdir(os.path.join(target, d))
        first = {}
        for name, ident in sorted(self.reachable_entries().items()):
            path = os.path.join(target, name)
            if ident in first:
                os.link(first[ident], path)  # one file under two names, as the disk has it
                continue
            with open(path, "wb") as f:
                f.write(bytes(self.data.get(ident, b"")))
            first[ident] = path


# -- building crash states ------------------------------------------------------
