"""A real disk whose writes of new data fail: an ext4 filesystem on a loop
device whose backing file lives on a tmpfs that is full.

The backing file is sparse. mkfs writes the filesystem's metadata (inode
tables too: no lazy init) and the test makes its folders while the tmpfs has
room; then a filler file takes every free page of the tmpfs. From then on a
write into a block the filesystem had never used needs a new page of the
backing file, the tmpfs refuses it, and the loop device fails that write:
the page cache takes the data, write-back fails (ENOSPC from the loop
device), and the error is reported the way the kernel reports write-back
errors, by fsync(2) and syncfs(2), once per descriptor. Overwrites of
blocks in use and metadata updates still succeed, so the filesystem stays up.

Needs root, ``losetup`` and ``mkfs.ext4``; :func:`failing_disk` skips the test
with the reason otherwise.
"""

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _run(*args):
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def _need():
    if os.geteuid() != 0:
        return "needs root (mount, losetup)"
    for program in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(program) is None:
            return f"needs {program}"
    return None


class FailingDisk:
    """The mounted filesystem at ``root``; :meth:`fail` fills the tmpfs under it."""

    def __init__(self, base):
        self.base = base
        self.root = base / "mnt"

    def fail(self):
        """From now on, writes of data into new blocks fail at write-back."""
        with open(self.base / "filler", "wb") as f, contextlib.suppress(OSError):
            block = b"\0" * (1 << 20)
            while True:
                f.write(block)
                f.flush()

    def sync_elsewhere(self):
        """``sync -f`` in another process: it sees (and so takes) a write-back
        error first, as another receiver worker's syncfs would."""
        return _run("sync", "-f", str(self.root))


@contextlib.contextmanager
def failing_disk(base):
    """A :class:`FailingDisk` under the folder ``base`` (skip if it cannot be made)."""
    reason = _need()
    if reason:
        pytest.skip(reason)
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    mounted, loop = [], None
    try:
        r = _run("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(base))
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounted.append(base)
        (base / "mnt").mkdir()
        backing = base / "backing"
        backing.touch()
        os.truncate(backing, 64 << 20)
        r = _run("mkfs.ext4", "-q", "-O", "^has_journal", "-E",
                 "lazy_itable_init=0,nodiscard", str(backing))
        assert r.returncode == 0, r.stderr
        r = _run("losetup", "-f", "--show", str(backing))
        if r.returncode:
            pytest.skip(f"no loop device: {r.stderr.strip()}")
        loop = r.stdout.strip()
        r = _run("mount", loop, str(base / "mnt"))
        assert r.returncode == 0, r.stderr
        mounted.append(base / "mnt")
        yield FailingDisk(base)
    finally:
        for path in reversed(mounted):
            _run("umount", "-l", str(path))
        if loop:
            _run("losetup", "-d", loop)
