"""Where the bench measures: a fresh journaled ext4 made in a file and
loop-mounted, a fresh tmpfs, or the current directory's filesystem. Runs in
the bench process; mounting needs root."""

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from dropr.errors import BenchError

KINDS = ("ext4", "tmpfs", "here")
GiB = 1 << 30


def mount_of(path):
    """(mount point, fs type, options) of the filesystem holding ``path``."""
    path = os.path.realpath(path)
    best = ("/", "?", "")
    with open("/proc/mounts") as f:
        for line in f:
            dev, point, fstype, options = line.split()[:4]
            point = point.replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):
                best = (point, fstype, options)
    return best


def describe(path):
    """A one-line description of the filesystem at ``path`` for the header."""
    point, fstype, options = mount_of(path)
    journal = ""
    if fstype == "ext4":
        journal = ", journaled" if _has_journal(point) else ", NO journal"
    return f"{fstype}{journal} at {point} ({options})"


def _has_journal(point):
    # /proc/fs/ext4/<dev>/options lists no "journal" word; ask the superblock
    # of the mounted device instead, where dumpe2fs is available.
    dev = _device_of(point)
    if dev is None or shutil.which("dumpe2fs") is None:
        return True
    out = subprocess.run(["dumpe2fs", "-h", dev], capture_output=True, text=True).stdout
    return "has_journal" in out


def _device_of(point):
    with open("/proc/mounts") as f:
        for line in f:
            dev, mp = line.split()[:2]
            if mp == point and dev.startswith("/dev/"):
                return dev
    return None


@contextlib.contextmanager
def fresh(kind, *, base=None, size=2 * GiB, inodes=None):
    """A fresh directory on a filesystem of ``kind``; unmounted and removed on
    the way out, also on Ctrl-C. ``here`` is a temporary folder in ``base``."""
    if kind not in KINDS:
        raise BenchError(f"unknown filesystem kind {kind!r}: expected one of {', '.join(KINDS)}")
    top = Path(tempfile.mkdtemp(prefix="dropr-bench-", dir=base))
    mnt = top / "mnt"
    mnt.mkdir()
    mounted = False
    try:
        if kind != "here":
            _need_root(kind)
            _mount(kind, top, mnt, size=size, inodes=inodes)
            mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def _need_root(kind):
    if os.geteuid() != 0:
        raise BenchError(f"--fs {kind} mounts a fresh filesystem and needs root; "
                         "use --fs here to measure the current directory's filesystem")


def _mount(kind, top, mnt, *, size, inodes):
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]
        _run(cmd)
        return
    image = top / "ext4.img"
    _run(["truncate", "-s", str(size), str(image)])
    mkfs = ["mkfs.ext4", "-q", "-F", "-j"]
    if inodes:
        mkfs += ["-N", str(inodes)]
    _run([*mkfs, str(image)])
    _run(["mount", "-o", "loop", str(image), str(mnt)])


def _run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
