"""Where a drain's time goes: CPU per message of each process, and system
calls per message of the sender and of the receiver's workers.

    python bench/drainprofile.py [--messages 20000] [--runs 3] [--dir PATH]
                                 [--senders 1] [--strace]

Fills a spool under ``--dir`` (mount a fresh journaled ext4 or a tmpfs there)
with 1 KiB messages, fsync off on both sides, starts the receiver (gunicorn,
2 workers), drains the spool with ``--senders`` concurrent ``dropr send
--once`` and prints, per message: the senders' CPU (user, system; the CPU of
a ``dropr send --once`` on an empty spool, its start-up, taken off), the
receiver's (master and workers together), and the wall time; the median of
``--runs``. CPU time, unlike the wall time, does not depend on what else
runs on the machine. With ``--strace`` it drains once more with the sender
under ``strace -c -f`` and the receiver's workers under another, and prints
the system calls per message of each.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
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
        if m and m.group(2) != "total":
            rows.append((int(m.group(1)) / count, m.group(2)))
    return sorted(rows, reverse=True)


def clear(root):
    """Remove what a run stored and sent, so that every run starts alike."""
    for folder in (root / "server" / "queue", root / "client" / "sent"):
        for sub in folder.iterdir() if folder.is_dir() else ():
            shutil.rmtree(sub) if sub.is_dir() else sub.unlink()


def send(config, senders, trace=None):
    """Run ``senders`` concurrent ``dropr send --once`` (each under ``strace -c
    -f -o TRACE.<i>`` with ``trace``); (wall s, user s, system s)."""
    started = time.perf_counter()
    children = [subprocess.Popen([*(("strace", "-c", "-f", "-o", f"{trace}.{i}") if trace else ()),
                                  *procs.DROPR, "--config", str(config.path), "send", "--once"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for i in range(senders)]
    user = system = 0.0
    for child in children:
        _, status, ru = os.wait4(child.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"dropr send --once exited with {os.waitstatus_to_exitcode(status)}")
        user, system = user + ru.ru_utime, system + ru.ru_stime
    return time.perf_counter() - started, user, system


def print_calls(title, paths, n):
    calls = {}
    for path in paths:
        for per, name in strace_counts(path.read_text(), n):
            calls[name] = calls.get(name, 0) + per
    rows = sorted(((per, name) for name, per in calls.items()), reverse=True)
    print(f"{title}: {sum(per for per, _ in rows):.1f} system calls per message (strace -c -f)")
    for per, name in rows[:15]:
        print(f"  {per:7.2f} {name}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--dir", default=".")
    p.add_argument("--strace", action="store_true")
    args = p.parse_args()
    root = Path(args.dir) / f"drainprofile-{os.getpid()}"
    config = procs.write_config(root, fsync=False, notify=False)
    n = args.messages
    with procs.Receiver(config) as receiver:
        _, start_user, start_system = send(config, args.senders)  # empty spool: start-up alone
        rows = []
        for _ in range(args.runs):
            clear(root)
            fill(config, n)
            before = cpu(receiver.pids())
            wall, user, system = send(config, args.senders)
            after = cpu(receiver.pids())
            rows.append((n / wall, (user - start_user) / n * 1e6, (system - start_system) / n * 1e6,
                         (after[0] - before[0]) / n * 1e6, (after[1] - before[1]) / n * 1e6))
            print("run: {:,.0f} msg/s; sender {:.1f} + {:.1f} us; receiver {:.1f} + {:.1f} us"
                  .format(*rows[-1]), flush=True)
        rate, su, ss, ru, rs = (statistics.median(col) for col in zip(*rows))
        print(f"{n} messages, {args.senders} sender(s), median of {args.runs}: {rate:,.0f}/s wall")
        print(f"sender: {su:.1f} us user + {ss:.1f} us system per message (start-up taken off)")
        print(f"receiver: {ru:.1f} us user + {rs:.1f} us system per message")
        if args.strace:
            clear(root)
            fill(config, n)
            workers = receiver.pids()[1:]
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(root / "receiver.strace"),
                                       *(a for pid in workers for a in ("-p", str(pid)))],
                                      stderr=subprocess.DEVNULL)
            time.sleep(1)  # strace attaches
            send(config, args.senders, trace=root / "sender.strace")
            tracer.send_signal(signal.SIGINT)
            tracer.wait()
            print_calls("senders", [root / f"sender.strace.{i}" for i in range(args.senders)], n)
            print_calls("receiver workers", [root / "receiver.strace"], n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
