"""The machine's own limit: a plain Python loop that creates, writes and
renames a file of the given size, with or without fsync (of the file and of
the directory, as a durable put does). Runs in the bench process, or in
``procs`` forked copies of it at once."""

import multiprocessing
import os
import time


def raw_loop(root, *, count, size, fsync, tag="0"):
    """Create ``count`` files of ``size`` bytes in ``root/tmp`` and rename each
    into ``root/queue``; returns (started, ended) wall-clock times."""
    tmp, queue = os.path.join(root, "tmp"), os.path.join(root, "queue")
    os.makedirs(tmp, exist_ok=True)
    os.makedirs(queue, exist_ok=True)
    body = os.urandom(min(size, 1 << 20))
    started = time.time()
    qfd = os.open(queue, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            name = f"{tag}-{i:09d}"
            src = os.path.join(tmp, name)
            fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            _write(fd, body, size)
            if fsync:
                os.fsync(fd)
            os.close(fd)
            os.rename(src, os.path.join(queue, name))
            if fsync:
                os.fsync(qfd)
    finally:
        os.close(qfd)
    return started, time.time()


def _write(fd, body, size):
    left = size
    while left > 0:
        left -= os.write(fd, memoryview(body)[: min(left, len(body))])


def _child(args):
    return raw_loop(*args[:1], count=args[1], size=args[2], fsync=args[3], tag=args[4])


def rate(root, *, count, size, fsync, procs=1):
    """Files per second of the raw loop, over ``procs`` processes at once."""
    if procs == 1:
        started, ended = raw_loop(root, count=count, size=size, fsync=fsync)
        return count / max(ended - started, 1e-9)
    ctx = multiprocessing.get_context("fork")
    jobs = [(root, count, size, fsync, str(p)) for p in range(procs)]
    with ctx.Pool(procs) as pool:
        spans = pool.map(_child, jobs)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return count * procs / max(wall, 1e-9)


def mib_per_s(root, *, size, fsync):
    """MiB/s of the raw loop for one file of ``size`` bytes."""
    started, ended = raw_loop(root, count=1, size=size, fsync=fsync, tag="big")
    return size / (1 << 20) / max(ended - started, 1e-9)
