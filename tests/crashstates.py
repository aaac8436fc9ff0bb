"""A crash-state explorer: which on-disk states may an OS crash or a power loss
leave in the middle of a scenario, under the persistence rules below?

:class:`Recorder` records, in this process, the file-system operations a
scenario makes under one root (the crashing host's tree) at the ``os`` level:
``open`` (a create), ``write``, ``fsync``, ``fdatasync``, ``syncfs``,
``rename``/``replace``, ``link``, ``unlink``, ``mkdir``, ``rmdir``, ``close``,
and files opened for writing with ``open()``, whose buffered writes are
recorded when they reach the kernel. :func:`explore` then builds, for a
crash after every operation, the states the disk may hold, and a scenario
runs recovery on each and checks its invariants (tests/test_crash_states.py).

The rules (docs/reliability.md, "The crash-state explorer", says why each):

1. The disk holds the tree as it was before the scenario, plus a selection of
   the operations made before the crash.
2. An operation is *covered* when something made after it, before the
   crash, makes it durable: a file's writes by an fsync or fdatasync of that
   file; an entry made or removed in a directory (create, mkdir, link,
   unlink, the new name of a rename) by an fsync of that directory; a rename
   whole by an fsync of its source directory; everything by a syncfs. An
   fsync of a file does not cover its name, nor a directory's fsync its
   children's data. A covered operation is on disk.
3. The entry operations that are not covered persist in program order: a
   crash keeps a prefix of them (ext4's and XFS's journals, and btrfs's
   transactions, commit in order) and drops the rest. Covered ones persist
   even when an earlier uncovered one does not (what btrfs's log tree does
   for what an fsync covers).
4. A rename is atomic while neither of its halves is covered. Once its new
   name is (the destination synced, not the source), that name is on disk and
   the removal of the old one persists or not by rule 3: the file may be found
   under both names.
5. A file's uncovered writes persist in order, a prefix of them, and the last
   one kept may be cut in half (a partial write); independently of the entry
   operations and of other files' writes (ext4 data=writeback, delayed
   allocation: the name may be there and the data not).
6. An entry whose folder is not on disk is lost (fsck puts it in lost+found).

A crash point may yield more combinations than :data:`MAX_PER_POINT`; then a
deterministic sample (seeded by the scenario and the point) is checked, and
the figures say how many were produced and how many checked.
"""

import builtins
import contextlib
import dataclasses
import hashlib
import io
import itertools
import os
import random
import shutil
import stat

import dropr.store

#: Combinations of one crash point checked at most (the rest is sampled).
MAX_PER_POINT = 128


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
            if (not writing or isinstance(file, int) or opener is not None
                    or self._rel(file) is None):
                return real_open(file, mode, buffering, encoding, errors, newline, closefd,
                                 opener)
            raw_mode = mode.replace("t", "").replace("b", "")
            raw = RecordedFileIO(file, raw_mode, closefd, opener=os.open)
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
        if dropr.store._SYNCFS is not None:
            patches.append((dropr.store, "_SYNCFS", self._syncfs))
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


@dataclasses.dataclass(frozen=True)
class _Half:
    """An entry operation as rules 2-4 see it: ``parts`` are what it does to the
    tree; ``dirs`` are the folders whose fsync covers it."""

    index: int
    parts: tuple
    dirs: tuple


def _entry_ops(ops):
    """The entry operations of ``ops`` as halves (a rename is two)."""
    out = []
    for i, op in enumerate(ops):
        if op.kind in ("create", "mkdir", "rmdir", "unlink", "link"):
            parent = os.path.dirname(op.dest if op.kind == "link" else op.path)
            out.append(_Half(i, (op,), (parent,)))
        elif op.kind == "rename":
            src, dst = os.path.dirname(op.path), os.path.dirname(op.dest)
            out.append(_Half(i, (("add", op),), (dst, src)))
            out.append(_Half(i, (("del", op),), (src,)))
    return out


def _covered_entries(halves, ops, k):
    """The halves made before op ``k`` that something before ``k`` covers."""
    covered = set()
    syncs = [(j, op) for j, op in enumerate(ops[:k]) if op.kind in ("fsyncdir", "syncfs")]
    for h in halves:
        if h.index >= k:
            continue
        for j, op in syncs:
            if j > h.index and (op.kind == "syncfs" or op.path in h.dirs):
                covered.add(h)
                break
    return covered


def _sequence(halves, covered, k):
    """The uncovered entry operations before ``k``, in order: a rename whose two
    halves are both uncovered stays one atomic step (rule 4)."""
    seq = []
    for h in halves:
        if h.index >= k or h in covered:
            continue
        if seq and seq[-1][0].index == h.index:
            seq[-1] = seq[-1] + (h,)
        else:
            seq.append((h,))
    return seq


def _data_choices(ops, k):
    """Per file: (covered write indexes, [choices]); a choice is (writes kept, partial)."""
    per_file = {}
    for i, op in enumerate(ops[:k]):
        if op.kind in ("write", "truncate"):
            per_file.setdefault(op.ino, []).append(i)
    choices = {}
    for ident, idxs in per_file.items():
        last_sync = max((j for j, op in enumerate(ops[:k])
                         if op.kind == "syncfs" or (op.kind == "fsync" and op.ino == ident)),
                        default=-1)
        covered = [i for i in idxs if i < last_sync]
        loose = [i for i in idxs if i > last_sync]
        opts = [(0, False)]
        for n in range(1, len(loose) + 1):
            if ops[loose[n - 1]].kind == "write" and len(ops[loose[n - 1]].data) > 1:
                opts.append((n, True))
            opts.append((n, False))
        choices[ident] = (covered, loose, opts)
    return choices


def _apply_entry(state, part):
    if isinstance(part, tuple):
        half, op = part
        if op.is_dir:
            if half == "add":
                _move_dir(state, op.path, op.dest)
            return
        if half == "add":
            state.entries[op.dest] = op.ino
        elif state.entries.get(op.path) == op.ino:
            del state.entries[op.path]
        return
    op = part
    if op.kind == "create":
        state.entries[op.path] = op.ino
        state.data.setdefault(op.ino, bytearray())
    elif op.kind == "link":
        state.entries[op.dest] = op.ino
    elif op.kind == "unlink":
        state.entries.pop(op.path, None)
    elif op.kind == "mkdir":
        state.dirs.add(op.path)
    elif op.kind == "rmdir":
        state.dirs.discard(op.path)


def _move_dir(state, src, dst):
    """A folder's rename: it and everything under it change name together."""
    if src not in state.dirs:
        return
    def moved(p):
        return dst + p[len(src):] if p == src or p.startswith(src + os.sep) else p
    state.dirs = {moved(d) for d in state.dirs}
    state.entries = {moved(n): i for n, i in state.entries.items()}


def _apply_data(state, op, partial):
    buf = state.data.setdefault(op.ino, bytearray())
    if op.kind == "truncate":
        del buf[:]
        return
    data = op.data[: len(op.data) // 2] if partial else op.data
    end = op.offset + len(data)
    if len(buf) < op.offset:
        buf.extend(b"\0" * (op.offset - len(buf)))
    buf[op.offset:end] = data


def build(initial, ops, k, steps, data_pick, halves):
    """The state after a crash before op ``k`` that keeps the covered entry
    operations, the uncovered ones whose positions are in ``steps``, and per
    file the writes ``data_pick`` says."""
    covered = _covered_entries(halves, ops, k)
    seq = _sequence(halves, covered, k)
    kept = set(covered)
    for n in steps:
        kept.update(seq[n])
    state = initial.copy()
    kept_parts = {}
    for h in kept:
        kept_parts.setdefault(h.index, []).extend(h.parts)
    writes = {}
    for ident, (covered_w, loose, (n, partial)) in data_pick.items():
        for i in covered_w:
            writes[i] = False
        for m, i in enumerate(loose[:n]):
            writes[i] = partial and m == n - 1
    for i, op in enumerate(ops[:k]):
        for part in sorted(kept_parts.get(i, ()), key=lambda p: 0 if not isinstance(p, tuple)
                           else (0 if p[0] == "add" else 1)):
            _apply_entry(state, part)
        if i in writes:
            _apply_data(state, op, writes[i])
    return state


def explore(recorder, check, workdir, *, seed, max_per_point=MAX_PER_POINT, ordered=True):
    """Build the states a crash after each of the recorded operations may leave
    (every combination rules 1-6 allow, sampled down to ``max_per_point`` per
    crash point), write each distinct one at ``workdir`` and call
    ``check(workdir, marks)``, where ``marks`` are the :meth:`Recorder.mark`
    keys made before the crash. Returns the :class:`Figures`; an
    AssertionError from ``check`` is raised again naming the state.

    ``ordered=False`` drops rule 3: any subset of the uncovered entry
    operations may persist, as on a filesystem that orders nothing it was not
    asked to sync (none of ext4, XFS and btrfs is one)."""
    ops = recorder.ops
    halves = _entry_ops(ops)
    figures, seen, marks = Figures(), set(), []
    for k in range(len(ops) + 1):
        if k > 0 and ops[k - 1].kind == "mark":
            marks.append(ops[k - 1].path)
        if k > 0 and ops[k - 1].kind == "close":
            continue  # the same disk and marks as one step earlier
        covered = _covered_entries(halves, ops, k)
        seq = _sequence(halves, covered, k)
        data = _data_choices(ops, k)
        idents = sorted(data)
        entry_axes = [range(len(seq) + 1)] if ordered else [range(2)] * len(seq)
        axes = entry_axes + [range(len(data[i][2])) for i in idents]
        total = 1
        for axis in axes:
            total *= len(axis)
        figures.points += 1
        figures.produced += total
        for combo in _pick(axes, total, random.Random(f"{seed}:{k}"), max_per_point):
            split = len(entry_axes)
            entries, picks = combo[:split], combo[split:]
            steps = range(entries[0]) if ordered else [n for n, on in enumerate(entries) if on]
            data_pick = {i: (data[i][0], data[i][1], data[i][2][p]) for i, p in zip(idents, picks)}
            state = build(recorder.initial, ops, k, steps, data_pick, halves)
            key = (state.digest(), tuple(marks))
            figures.sampled += 1
            if key in seen:
                continue
            seen.add(key)
            state.materialize(workdir)
            try:
                check(workdir, tuple(marks))
            except AssertionError as e:
                last = describe(ops[k - 1]) if k else "nothing"
                writes = [data[i][2][p] for i, p in zip(idents, picks)]
                raise AssertionError(
                    f"crash after op {k} ({last}), keeping uncovered entry steps "
                    f"{list(steps)} of {len(seq)} and writes {writes}: {e}\nops:\n"
                    + "\n".join(f"{n + 1:3} {describe(o)}" for n, o in enumerate(ops[:k]))
                ) from None
            figures.checked += 1
    return figures


def describe(op):
    """One line for an operation, for a failure message."""
    if op.kind in ("write",):
        return f"write #{op.ino} @{op.offset} {len(op.data)} bytes"
    if op.kind in ("fsync", "truncate", "close"):
        return f"{op.kind} #{op.ino}"
    if op.kind in ("rename", "link"):
        return f"{op.kind} {op.path} -> {op.dest}"
    return f"{op.kind} {op.path or ''}".rstrip()


def _pick(axes, total, rng, limit):
    if total <= limit:
        return list(itertools.product(*axes))
    # Always the extremes (nothing kept, everything kept), then a sample.
    picks = {tuple(0 for _ in axes), tuple(len(a) - 1 for a in axes)}
    while len(picks) < limit:
        picks.add(tuple(rng.randrange(len(a)) for a in axes))
    return sorted(picks)


@dataclasses.dataclass
class Figures:
    """Crash points; combinations the rules allow (produced); those built
    (sampled: all, unless a point had more than the limit); the distinct
    states among them, each recovered and checked."""

    points: int = 0
    produced: int = 0
    sampled: int = 0
    checked: int = 0

    def __str__(self):
        return (f"{self.points} crash points, {self.produced} states produced, "
                f"{self.sampled} built, {self.checked} distinct checked")
