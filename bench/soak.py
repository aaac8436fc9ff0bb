"""Soak run: put messages at a steady rate for a long time while the tree is
broken every few minutes, then check that every message arrived exactly once
and that no process grew.

    python bench/soak.py [--duration SEC] [--rate MSG_PER_S] [--fault-every SEC]
                         [--producers P] [--seed S] [--dir DIR] [--keep]

Not part of the test suite (the default is an hour). The real ``droprd`` tree
runs the senders, the retry scanner and the reaper; ``dropr receiver``
(gunicorn) runs on its own; producers and a consumer are the chaos run's
(bench/chaosroles.py). Every ``--fault-every`` seconds (+/- a third) one fault,
drawn in turn from a shuffled list: kill -9 of a sender, of the retry scanner,
of the reaper, of a gunicorn worker, of the receiver's master (then a new
receiver), or the receiver stopped for a sixth to two thirds of ``--fault-every`` (30 to
120 s by default), then started again.

At the start (after a minute of warm-up) and at the end it prints each
process's RSS and open file descriptors (a producer's end: its last
sample while it ran, at most 30 s before it finished), by role (``sender 1``,
``receiver worker``...): a process replaced by a fault is matched by its role.
Every ten minutes a progress line. At the end, once the spool is empty:

    put N, stored N, lost 0, duplicated 0, faults K, seed S

Exit status 0 only if every recorded id is stored once with identical bytes.
"""

import argparse
import collections
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import psutil
from chaosrun import TreeRun, finish, run_or_play, tracebacks
from chaostree import title

from dropr.bench import configfile
from dropr.bench.procs import free_port
from dropr.spool import Spool

FAULTS = ("kill-sender", "kill-receiver-worker", "kill-receiver-master", "stop-receiver",
          "kill-sender", "kill-retry-scanner", "kill-reaper", "stop-receiver")
MiB = 1 << 20


def parse_args(argv):
    """The run's options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of producing")
    p.add_argument("--rate", type=float, default=20.0, help="messages per second, all producers")
    p.add_argument("--fault-every", type=float, default=180.0, help="seconds between faults")
    p.add_argument("--producers", type=int, default=2)
    p.add_argument("--seed", type=int, default=None, help="default: random, printed")
    p.add_argument("--warmup", type=float, default=60.0,
                   help="seconds before the first snapshot of RSS and open files")
    p.add_argument("--dir", default=None, help="where to make the work folder (default: TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    return p.parse_args(argv)


def write_config(root, *, port):
    """A config close to the shipped defaults (fsync on, default backoffs and
    timeouts), with restarts that never turn a killed worker fatal."""
    peer = {"url": f"http://127.0.0.1:{port}", "connect_timeout": 2.0, "timeout": 20.0}
    return configfile.write_config(root, port=port, peers={"local": peer}, sections={
        "client": {"spool": root / "spool"},
        "retry": {"cap": 60.0},
        "reaper": {"done_retention": 86400.0},
        "receiver": {"store": root / "store", "min_free_bytes": 0, "workers": 2},
        "workers": {"sender": 2, "receiver": 0},
        "supervisor": {"max_restarts": 1000000},
    })


def say(*parts):
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


class Soak(TreeRun):
    """One soak run: its folder, processes and faults. Lives in the soak
    process; the tree, the receiver, producers and consumer are children."""

    script = Path(__file__)

    def __init__(self, args, root):
        super().__init__(args, root)
        self.last = {}  # the latest snapshot taken while the producers ran

    def report(self, line):
        say(line)

    def setup(self):
        self.start_tree(write_config(self.root, port=free_port()))

    def start_producers(self):
        per = self.args.rate / self.args.producers
        count = int(per * self.args.duration)
        for _ in range(self.args.producers):
            self.start_producer(count, per)

    # -- processes by role ------------------------------------------------------

    def processes(self):
        """{role: [psutil.Process]} of every process of the run."""
        roles = collections.defaultdict(list)
        pid = self.daemon.pid()
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                sup = psutil.Process(pid)
                roles["supervisor"].append(sup)
                for child in sup.children():
                    roles[title(child).removeprefix("dropr: ") or "worker"].append(child)
        if self.receiver.proc is not None and self.receiver.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                roles["receiver master"].append(psutil.Process(self.receiver.proc.pid))
                roles["receiver worker"].extend(self.receiver.workers())
        for i, producer in enumerate(self.producers):
            if producer.running():
                roles[f"producer {i}"].append(psutil.Process(producer.proc.pid))
        if self.consumer is not None and self.consumer.running():
            roles["consumer"].append(psutil.Process(self.consumer.proc.pid))
        return roles

    def snapshot(self):
        """{role: (RSS MiB, open fds)}, the largest of a role's processes."""
        out = {}
        for role, procs in self.processes().items():
            rss = fds = 0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    rss = max(rss, proc.memory_info().rss / MiB)
                    fds = max(fds, proc.num_fds())
            out[role] = (round(rss, 1), fds)
        return out

    # -- faults -------------------------------------------------------------------

    def inject(self, kind):
        """Start fault ``kind``; True if it found something to break."""
        if kind == "kill-receiver-master":
            self.receiver.kill_master()
            return True
        if kind == "stop-receiver":
            down = self.args.fault_every * self.rng.uniform(1 / 6, 2 / 3)
            self.receiver.stop()
            say(f"receiver stopped for {down:.0f} s")
            time.sleep(down)
            self.receiver.start()
            return True
        return self.kill_one(kind.removeprefix("kill-"), 10)

    def run_faults(self, began):
        """Until the producers are done: a fault every ``fault_every`` s,
        a progress line every ten minutes."""
        kinds, next_fault, next_report = [], began + self._gap(), began + 600
        next_snapshot = 0.0
        while any(p.running() for p in self.producers):
            now = time.monotonic()
            if now >= next_snapshot:
                self.last = {**self.last, **self.snapshot()}
                next_snapshot = now + 30
            if now >= next_fault:
                if not kinds:
                    kinds = list(FAULTS)
                    self.rng.shuffle(kinds)
                kind = kinds.pop()
                ok = self.inject(kind)
                self.injected[kind] += ok
                say(f"fault {kind}" + ("" if ok else " found nothing to break"))
                self.receiver.ensure()
                next_fault = time.monotonic() + self._gap()
            if now >= next_report:
                self.report_progress(now - began)
                next_report += 600
            time.sleep(0.5)

    def _gap(self):
        return self.args.fault_every * self.rng.uniform(2 / 3, 4 / 3)

    def report_progress(self, elapsed):
        spool = Spool(self.config.client.spool, fsync=False)
        say(f"{elapsed / 60:.0f} min: spool {spool.counts()}; faults {sum(self.injected.values())}; "
            f"status exit {self.daemon.status()}; "
            f"rss/fds {json.dumps(self.snapshot())}")


def print_snapshots(start, end):
    """One line per role: RSS and open fds at the start and at the end."""
    print(f"{'process':<18} {'RSS start':>10} {'RSS end':>10} {'fds start':>10} {'fds end':>8}")
    for role in sorted(set(start) | set(end)):
        s, e = start.get(role, ("-", "-")), end.get(role, ("-", "-"))
        print(f"{role:<18} {s[0]:>10} {e[0]:>10} {s[1]:>10} {e[1]:>8}")


def run(args):
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    root = Path(tempfile.mkdtemp(prefix="dropr-soak-", dir=args.dir))
    soak, began = Soak(args, root), time.monotonic()
    say(f"soak: {args.duration:.0f} s at {args.rate:g}/s, a fault every ~{args.fault_every:g} s, "
        f"seed {args.seed}, in {root}")
    try:
        soak.setup()
        soak.start_producers()
        time.sleep(min(args.warmup, args.duration / 2))
        start = soak.snapshot()
        say("start: " + json.dumps(start))
        soak.run_faults(began)
        soak.receiver.ensure()
        soak.daemon.ensure()
        stats = soak.wait_producers()
        spool = soak.wait_idle(600, interval=0.5)
        end = {**{k: v for k, v in soak.last.items() if k.startswith("producer")},
               **soak.snapshot()}
        say("end: " + json.dumps(end))
        daemon_status, result, dead = soak.check(spool)
    finally:
        soak.teardown()
    faults = sum(soak.injected.values())
    logs = tracebacks(root)
    print_snapshots(start, end)
    print(f"put {stats['put']}, stored {result['stored']}, lost {result['lost']}, "
          f"duplicated {result['duplicated']}, faults {faults}, seed {args.seed}", flush=True)
    print(f"soak: {time.monotonic() - began:.0f} s; faults {dict(soak.injected)}; "
          f"put refused: {stats['queue_full']} queue full, {stats['spool_full']} spool full; "
          f"corrupt {result['corrupt']}, unexpected {result['unexpected']}, "
          f"dead {len(dead)} {dead[:5]}; droprd status exit {daemon_status}; "
          f"tracebacks {logs}", flush=True)
    ok = (result["lost"] == 0 and result["duplicated"] == 0 and result["corrupt"] == 0
          and result["unexpected"] == 0 and daemon_status == 0)
    return finish(root, ok, keep=args.keep, say=lambda line: print(f"soak: {line}", flush=True))


def main(argv=None):
    return run_or_play(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
