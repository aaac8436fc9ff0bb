"""Where a drain's time goes: CPU per message of each process, and system
calls per message of the sender and of the receiver's workers.

    python bench/drainprofile.py [--messages 20000] [--dir PATH] [--strace]

Fills a spool under ``--dir`` (mount a fresh journaled ext4 or a tmpfs there)
with 1 KiB messages, fsync off on both sides, starts the receiver (gunicorn,
2 workers), drains the spool with one ``dropr send --once`` and prints, per
message: the sender's CPU (user, system), the receiver's (master and workers
together), and the wall time. With ``--strace`` it drains a second spool
under ``strace -c -f`` (sender) and prints the system calls per message;
then again attached to the receiver's workers.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

from dropr.bench import procs


def cpu(pids):
    user = system = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            user, system = user + t.user + t.children_user, system + t.system + t.children_system
        except psutil.Error:
            pass
    return user, system


def fill(config, count):
    procs.probes(("put", config.path, count, 1024, 0))


def strace_counts(text, count):
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m:
            rows.append((int(m.group(1)) / count, m.group(2)))
    return sorted(rows, reverse=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--dir", default=".")
    p.add_argument("--strace", action="store_true")
    args = p.parse_args()
    root = Path(args.dir) / f"drainprofile-{os.getpid()}"
    config = procs.write_config(root, fsync=False, notify=False)
    n = args.messages
    with procs.Receiver(config) as receiver:
        fill(config, n)
        before = cpu(receiver.pids())
        started = time.perf_counter()
        sender = subprocess.Popen([*procs.DROPR, "--config", str(config.path), "send", "--once"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(sender.pid, 0)
        sender.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        after = cpu(receiver.pids())
        print(f"{n} messages drained in {wall:.2f} s ({n / wall:,.0f}/s), exit {sender.returncode}")
        print(f"sender: {ru.ru_utime / n * 1e6:.1f} us user + {ru.ru_stime / n * 1e6:.1f} us "
              "system per message (start-up included)")
        print(f"receiver: {(after[0] - before[0]) / n * 1e6:.1f} us user + "
              f"{(after[1] - before[1]) / n * 1e6:.1f} us system per message")
        if args.strace:
            fill(config, n)
            traced = subprocess.run(["strace", "-c", "-f", "-o", str(root / "sender.strace"),
                                     *procs.DROPR, "--config", str(config.path), "send", "--once"],
                                    capture_output=True)
            print("sender system calls per message (strace -c -f):")
            for per, name in strace_counts((root / "sender.strace").read_text(), n)[:15]:
                print(f"  {per:7.2f} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
