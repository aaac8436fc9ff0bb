"""A crash-state explorer: which on-disk states may an OS crash or a power loss
leave in the middle of a scenario, under the persistence rules below?

A :class:`~tests.support.crashrecord.Recorder` records the file-system operations a
scenario makes under one root. :func:`explore` then builds, for a
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

import dataclasses
import itertools
import os
import random

#: Combinations of one crash point checked at most (the rest is sampled).
MAX_PER_POINT = 128


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
