"""The floor under a drain: the file-system work of one alone, without HTTP and
without Python beyond the loop, beside the raw loop of the same file system.

    python bench/drainfloor.py [--messages 20000] [--runs 3] [--fs ext4|tmpfs|here]

For each way of laying out the work it fills a spool's ``queue/`` on a fresh
file system, measures the raw loop (create + write + rename, the bench's
limit) there, then runs the sender's system calls per message and the
receiver's in two processes at once over the same messages, as a drain does,
and once more one after the other. Printed per layout: messages per second,
that as a fraction of the raw loop, and the CPU of each side per message
(medians of ``--runs``). Needs root for ``--fs ext4`` (the default) and
``tmpfs``.

The layouts: the one dropr uses (the sender claims a message by renaming it
into its ``active/`` folder, checks it with ``lstat`` before and after, reads
it and unlinks it once stored; the receiver writes it into ``tmp/``, links it
into ``queue/<channel>/`` and unlinks the ``tmp/`` name), and for comparison
what each side would cost without its own move: a receiver creating the file
in ``queue/<channel>/`` at once, a sender reading from ``queue/`` without
claiming. Neither of those keeps dropr's guarantees (a consumer would see a
half-written file; two senders, or an operator's ``hold``, would meet a
message in flight); they show what the guarantees cost in the file system.
"""

import argparse
import multiprocessing
import os
import statistics
import time

from dropr.bench import fs, limit

BODY = b"x" * 1024
HEADER = b"h" * 100  # a stored message's header line is about this long
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
LAYOUTS = {
    "as built": (True, True),
    "receiver creates in queue/<channel>/ at once": (True, False),
    "sender reads queue/ without claiming": (False, True),
    "both of these": (False, False),
}


def sender(root, names, go, claim, out):
    """What a sender does per message in the file system."""
    go.wait()
    start = os.times()
    queue, active = f"{root}/spool/queue", f"{root}/spool/active"
    for name in names:
        path = f"{queue}/{name}"
        if claim:
            os.lstat(path)
            os.rename(path, f"{active}/{name}")
            path = f"{active}/{name}"
            os.lstat(path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not claim:
            os.fstat(fd)  # the one-link check, on what is read
        os.read(fd, 2 * len(BODY))
        os.close(fd)
        os.unlink(path)
    out.put(("sender", _cpu_since(start)))


def receiver(root, names, go, staged, out):
    """What the receiver does per message in the file system."""
    go.wait()
    start = os.times()
    tmp, queue = f"{root}/store/tmp", f"{root}/store/queue/bench"
    for i, name in enumerate(names):
        path = f"{tmp}/{name}.1-{i}" if staged else f"{queue}/{name}"
        fd = os.open(path, CREATE, 0o640)
        os.write(fd, HEADER + BODY)
        os.close(fd)
        if staged:
            os.link(path, f"{queue}/{name}")
            os.unlink(path)
    out.put(("receiver", _cpu_since(start)))


def _cpu_since(start):
    now = os.times()
    return now.user - start.user + now.system - start.system


def one_run(kind, count, claim, staged, together):
    """(raw loop /s, drain /s, sender CPU s, receiver CPU s) on a fresh ``kind``."""
    with fs.fresh(kind) as root:
        raw = limit.rate(str(root / "raw"), count=count, size=len(BODY), fsync=False)
        for folder in ("spool/queue", "spool/active", "store/tmp", "store/queue/bench"):
            os.makedirs(root / folder)
        names = [f"5.{i:026d}.local.bench" for i in range(count)]
        for name in names:
            fd = os.open(f"{root}/spool/queue/{name}", CREATE, 0o640)
            os.write(fd, BODY)
            os.close(fd)
        os.sync()
        ctx = multiprocessing.get_context("fork")
        go, out = ctx.Event(), ctx.Queue()
        sides = [ctx.Process(target=sender, args=(root, names, go, claim, out)),
                 ctx.Process(target=receiver, args=(root, names, go, staged, out))]
        if together:
            for p in sides:
                p.start()
            time.sleep(0.3)  # both started and waiting
            started = time.perf_counter()
            go.set()
            for p in sides:
                p.join()
        else:
            go.set()
            started = time.perf_counter()
            for p in sides:
                p.start()
                p.join()
        rate = count / (time.perf_counter() - started)
        cpu = dict(out.get() for _ in sides)
        return raw, rate, cpu["sender"], cpu["receiver"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fs", choices=fs.KINDS, default="ext4")
    args = ap.parse_args(argv)
    n = args.messages
    print(f"{n} x 1 KiB, fsync off, a fresh {args.fs} per run; medians of {args.runs} runs")
    print(f"{'layout':46s} {'sides':8s} {'raw /s':>8s} {'drain /s':>9s} {'of raw':>7s} "
          f"{'sender µs':>10s} {'receiver µs':>12s}")
    for together in (True, False):
        for label, (claim, staged) in LAYOUTS.items():
            runs = [one_run(args.fs, n, claim, staged, together) for _ in range(args.runs)]
            raw, rate, s_cpu, r_cpu = (statistics.median(col) for col in zip(*runs))
            ratio = statistics.median(r / w for w, r, _, _ in runs)
            print(f"{label:46s} {'at once' if together else 'in turn':8s} {raw:8.0f} "
                  f"{rate:9.0f} {ratio:7.2f} {s_cpu / n * 1e6:10.1f} {r_cpu / n * 1e6:12.1f}")


if __name__ == "__main__":
    main()
