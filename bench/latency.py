"""Put-to-stored latency through an idle droprd tree, once, on the current
filesystem.

    python bench/latency.py [--quick] [--no-fsync]

A thin wrapper of ``dropr bench --fs here --runs 1 --only latency`` (1,000
puts; 200 with --quick); see docs/benchmarks.md for the full instrument.
"""

import argparse
import sys

from dropr.cli import main


def bench_argv(argv=None):
    """The ``dropr bench`` arguments for these options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 puts instead of 1,000")
    p.add_argument("--no-fsync", action="store_true", help="fsync off on both sides")
    args = p.parse_args(argv)
    return ["bench", "--fs", "here", "--runs", "1", "--only", "latency",
            "--fsync", "off" if args.no_fsync else "on", *(["--quick"] if args.quick else [])]


if __name__ == "__main__":
    sys.exit(main(bench_argv()))
