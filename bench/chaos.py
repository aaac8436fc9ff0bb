"""Chaos run: put messages from several producers while a seeded random schedule
breaks the tree, then check that every message arrived exactly once, intact.

    python bench/chaos.py [--messages N] [--faults K] [--seed S] [--duration SEC]
                          [--producers P] [--dir DIR] [--keep]

The receiver (``dropr receiver``) runs on its own behind a fault-injecting
proxy (bench/faultproxy.py); the real ``droprd`` tree runs the senders, the
retry scanner and the reaper; a consumer acks messages into the store's
``done/`` (producers and consumer: bench/chaosroles.py; the processes and
disks: bench/chaostree.py; what it shares with bench/soak.py:
bench/chaosrun.py). The client spool and the server store each live on a small tmpfs
(mounted here: run as root). The faults, one at a time, ``--duration`` seconds
spread: kill -9 of a sender, of the retry scanner, of the reaper, of the
supervisor (then ``droprd start`` again), of a gunicorn worker, of the
receiver's master (then start it again), of the consumer; the proxy answering
500 or stalling (the receiver stores, the answer is lost); the client or the
store disk filled to the last byte for a while. Faults that last may overlap
the next ones.

Each producer records every id that put() returned with the sha256 of its body
(fsync-ed after each put). At the end, once the spool is empty, the store is
walked and one line is printed:

    put N, stored N, lost 0, duplicated 0, faults K, seed S

Exit status 0 only if every recorded id is stored once with identical bytes
and the store holds nothing else.
"""

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from chaosrun import TreeRun, finish, run_or_play, tracebacks
from chaostree import Disk
from faultproxy import ERROR, PASS, STALL, FaultProxy

from dropr.bench import configfile
from dropr.bench.procs import free_port

#: Fault kinds and how often each is drawn; every kind happens at least once.
FAULTS = {
    "kill-sender": 3, "kill-retry-scanner": 1, "kill-reaper": 1, "kill-supervisor": 1,
    "kill-receiver-worker": 2, "kill-receiver-master": 1, "kill-consumer": 1,
    "http-500": 2, "stall": 2, "client-disk-full": 2, "store-disk-full": 2,
}
MiB = 1 << 20


def parse_args(argv):
    """The run's options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--faults", type=int, default=30)
    p.add_argument("--seed", type=int, default=None, help="default: random, printed")
    p.add_argument("--duration", type=float, help="seconds of faults (default: 1 per fault)")
    p.add_argument("--producers", type=int, default=4)
    p.add_argument("--max-backlog", type=int, default=200,
                   help="[client] max_messages, so that producers meet QueueFull")
    p.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                   help="where to make the work folder (default /dev/shm)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    return p.parse_args(argv)


# -- set-up -------------------------------------------------------------------

def write_config(root, *, receiver_port, proxy_port, max_backlog):
    """The chaos config: small timeouts and backoffs so that the tree heals fast,
    and restarts that never give up (every kill -9 counts as a failure)."""
    proxy = {"url": f"http://127.0.0.1:{proxy_port}", "connect_timeout": 1.0, "timeout": 3.0}
    return configfile.write_config(root, port=receiver_port, peers={"local": proxy}, sections={
        "client": {"spool": root / "client-disk" / "spool", "fsync": False,
                   "max_messages": max_backlog},
        "sender": {"batch_messages": 200, "wait": 0.2, "peer_backoff_base": 0.1,
                   "peer_backoff_cap": 1.0},
        "retry": {"base": 0.1, "cap": 0.5, "interval": 0.1},
        "reaper": {"interval": 1.0, "tmp_max_age": 10.0, "done_retention": 86400.0},
        "receiver": {"store": root / "store-disk" / "store", "fsync": False,
                     "min_free_bytes": MiB, "workers": 2, "timeout": 10.0},
        "workers": {"sender": 2},
        "supervisor": {"tick": 0.1, "backoff_base": 0.05, "backoff_cap": 0.5,
                       "max_restarts": 1000000, "stop_timeout": 5.0, "kill_timeout": 2.0},
    })


def schedule(rng, faults, duration):
    """[(seconds from the start, kind)]: every kind once, the rest drawn by weight."""
    kinds = list(FAULTS)[:faults]
    kinds += rng.choices(list(FAULTS), weights=list(FAULTS.values()), k=faults - len(kinds))
    rng.shuffle(kinds)
    gap = duration / max(1, faults)
    return [((i + rng.random() * 0.5) * gap, kind) for i, kind in enumerate(kinds)]


class Run(TreeRun):
    """One chaos run: its folder, disks, processes and fault schedule. Lives in
    the chaos process; producers and the consumer are child processes."""

    script = Path(__file__)

    def __init__(self, args, root):
        super().__init__(args, root)
        self.duration = args.duration or float(args.faults)
        avg = 3000  # bytes a small message takes on tmpfs, page rounding included
        self.client_disk = Disk(root / "client-disk", 64 * MiB)
        store_size = 64 * MiB + args.messages * (4096 + 2 * avg)
        self.store_disk = Disk(root / "store-disk", store_size)
        self.proxy = None
        self.timers = []

    def report(self, line):
        print(f"chaos: {line}", file=sys.stderr)

    def setup(self):
        self.client_disk.mount()
        self.store_disk.mount()
        receiver_port = free_port()
        self.proxy = FaultProxy(receiver_port).start()
        self.start_tree(write_config(self.root, receiver_port=receiver_port,
                                     proxy_port=self.proxy.port,
                                     max_backlog=self.args.max_backlog))

    def start_producers(self):
        n, p = self.args.messages, self.args.producers
        for i in range(p):
            count = n // p + (1 if i < n % p else 0)
            self.start_producer(count, max(1.0, count / self.duration))

    # -- faults -----------------------------------------------------------------

    def inject_all(self):
        started = time.monotonic()
        for at, kind in schedule(self.rng, self.args.faults, self.duration):
            wait = started + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if self._inject(kind):
                self.injected[kind] += 1
            else:
                print(f"chaos: fault {kind} found nothing to break", file=sys.stderr)

    def _inject(self, kind):
        """Start fault ``kind``. A fault that lasts (500s, a stall, a full disk)
        ends by a timer, so the next one may begin meanwhile: faults overlap."""
        hold = self.rng.uniform(0.5, 2.0)
        if kind.startswith("kill-") and kind != "kill-supervisor":
            return self._kill(kind.removeprefix("kill-"))
        if kind == "kill-supervisor":
            return self.daemon.kill_supervisor()
        if kind in ("http-500", "stall"):
            mode = ERROR if kind == "http-500" else STALL
            self.proxy.set_mode(mode)
            self._end_later(hold, lambda: self.proxy.mode == mode and self.proxy.set_mode(PASS))
            return True
        disk = self.client_disk if kind == "client-disk-full" else self.store_disk
        disk.fill()
        self._end_later(hold, disk.free)
        return True

    def _end_later(self, seconds, end):
        timer = threading.Timer(seconds, end)
        timer.start()
        self.timers.append(timer)

    def _kill(self, what):
        if what == "receiver-master":
            self.receiver.kill_master()
            return True
        if what == "consumer":
            self.consumer.kill()
            self.consumer = self._consumer().start()
            return True
        return self.kill_one(what, 5)

    # -- the end ------------------------------------------------------------------

    def heal(self):
        """Every fault off, every process up."""
        for timer in self.timers:
            timer.cancel()
            timer.join()
        self.proxy.set_mode(PASS)
        self.client_disk.free()
        self.store_disk.free()
        self.receiver.ensure()
        self.daemon.ensure()
        if not self.consumer.running():
            self.consumer = self._consumer().start()

    def teardown(self):
        super().teardown()
        if self.proxy is not None:
            self.proxy.close()
        self.client_disk.unmount()
        self.store_disk.unmount()


def run(args):
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    root = Path(tempfile.mkdtemp(prefix="dropr-chaos-", dir=args.dir))
    chaos, began = Run(args, root), time.monotonic()
    try:
        chaos.setup()
        chaos.start_producers()
        chaos.inject_all()
        chaos.heal()
        stats = chaos.wait_producers()
        spool = chaos.wait_idle(60 + args.messages / 500, interval=0.2)
        daemon_status, result, dead = chaos.check(spool)
    finally:
        chaos.teardown()
    faults = sum(chaos.injected.values())
    logs = tracebacks(root)
    put = stats["put"]
    print(f"put {put}, stored {result['stored']}, lost {result['lost']}, "
          f"duplicated {result['duplicated']}, faults {faults}, seed {args.seed}", flush=True)
    print(f"chaos: {time.monotonic() - began:.1f} s; faults {dict(chaos.injected)}; "
          f"put refused: {stats['queue_full']} queue full, {stats['spool_full']} spool full; "
          f"corrupt {result['corrupt']}, unexpected {result['unexpected']}, "
          f"dead {len(dead)} {dead[:5]}; droprd status exit {daemon_status}; "
          f"tracebacks {sum(logs.values())} {logs}", file=sys.stderr)
    # A worker that crashed is a finding even when nothing was lost: under the
    # default restart policy a crash loop ends in a fatal worker.
    ok = (put == args.messages and result["lost"] == 0 and result["duplicated"] == 0
          and result["corrupt"] == 0 and result["unexpected"] == 0 and daemon_status == 0
          and logs.get("droprd.log", 0) == 0 and logs.get("consumer.log", 0) == 0)
    return finish(root, ok, keep=args.keep, say=chaos.report)


def main(argv=None):
    return run_or_play(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
