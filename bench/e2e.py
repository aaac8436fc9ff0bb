"""Quick throughput check: put, then drain, once, on the current filesystem.

    python bench/e2e.py [--dir DIR] [--messages N] [--fsync]

A thin wrapper of ``dropr bench --fs here --runs 1 --only put,drain`` run in
--dir (default: the system temp folder); see docs/benchmarks.md for the full
instrument.
"""

import argparse
import sys
import tempfile

from dropr.cli import main


def bench_argv(argv=None):
    """The ``dropr bench`` arguments for these options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where to make the work folder")
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--fsync", action="store_true", help="fsync on both sides (default: off)")
    args = p.parse_args(argv)
    return args.dir, ["bench", "--fs", "here", "--runs", "1", "--only", "put,drain",
                      "--messages", str(args.messages), "--fsync", "on" if args.fsync else "off"]


if __name__ == "__main__":
    import os

    where, argv = bench_argv()
    os.chdir(where)
    sys.exit(main(argv))
