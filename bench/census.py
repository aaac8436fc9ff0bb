"""What counting the client spool for the metrics costs at a deep queue.

    python bench/census.py [--messages N] [--peers P] [--dir DIR] [--runs R]

Fills a fresh spool's ``queue/`` with N small messages (spread over P peers,
one in ten in ``deferred/``), then takes the census that droprd's metrics
worker takes (:func:`dropr.spool.census.take`) R times and prints the
fastest and slowest, and what that means for the metrics worker's refresh
(it recounts at most every ``REFRESH_FACTOR`` times the CPU time the last
count took, and no sooner than ``IDLE_FACTOR`` times its duration).
``--keep DIR`` fills DIR/spool once and counts it again on later runs.
The first run after filling finds the directory entries in the page cache,
as a metrics worker polling a live spool does.
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dropr.metrics.host import IDLE_FACTOR, REFRESH_FACTOR
from dropr.ids import IdGenerator
from dropr.spool import Spool, census
from dropr.spool.filenames import SpoolName


def fill(spool, messages, peers):
    """Write ``messages`` files of 100 bytes straight into queue/ and deferred/."""
    new_id, body = IdGenerator(), b"x" * 100
    for i in range(messages):
        name = SpoolName(5, new_id(), f"peer{i % peers}", "bench")
        state = "deferred" if i % 10 == 0 else "queue"
        fd = os.open(spool.dirs[state] / str(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, body)
        os.close(fd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to make the spool (default: TMPDIR)")
    p.add_argument("--keep", default=None, help="a folder whose spool is kept and used again")
    args = p.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="dropr-census-", dir=args.dir))
    try:
        filled = (root / "spool").is_dir()
        spool = Spool(root / "spool", fsync=False).create()
        if not filled:
            began = time.monotonic()
            fill(spool, args.messages, args.peers)
            print(f"filled {args.messages} messages in {time.monotonic() - began:.1f} s",
                  flush=True)
        costs, cpu = [], []
        for _ in range(args.runs):
            began, began_cpu = time.monotonic(), time.thread_time()
            result = census.take(spool)
            costs.append(time.monotonic() - began)
            cpu.append(time.thread_time() - began_cpu)
        waiting = sum(sum(result.counts[s].values()) for s in census.WAITING)
        assert filled or waiting == args.messages, (waiting, args.messages)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"census of {waiting} waiting messages: "
              f"fastest {min(costs):.2f} s, slowest {max(costs):.2f} s over {args.runs} runs "
              f"(CPU {min(cpu):.2f} to {max(cpu):.2f} s); "
              f"refreshed at most every "
              f"{max(REFRESH_FACTOR * min(cpu), IDLE_FACTOR * min(costs)):.0f} s "
              f"(<= {100 / REFRESH_FACTOR:.0f}% of one core); peak RSS {rss:.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
