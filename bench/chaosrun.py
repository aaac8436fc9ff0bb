"""What a chaos run (bench/chaos.py) and a soak run (bench/soak.py) share: the
tree started on one config, the producers and the consumer (the run's own
script started again as ``produce`` or ``consume``, bench/chaosroles.py), a
kill -9 of one process of a kind, the wait for the producers and for the spool
to drain, the check of the store against what the producers recorded, and the
teardown. Each run brings its config and its faults.
"""

import collections
import contextlib
import hashlib
import json
import random
import shutil
import sys

from chaosroles import CONSUMER, parse_role
from chaostree import Daemon, ReceiverProcess, Role, kill9, wait_for

from dropr.ipc import Notices
from dropr.spool import Spool
from dropr.store import Store


class TreeRun:
    """One run: its folder, its processes and the faults it injected. Lives
    in the run's process; the tree, the receiver, producers and consumer are
    children. A subclass sets :attr:`script` and :meth:`report`."""

    #: The run's script (``Path(__file__)``): it plays the producers and the consumer.
    script = None

    def __init__(self, args, root):
        self.args = args
        self.root = root
        self.rng = random.Random(args.seed)
        self.receiver = self.daemon = self.config = self.consumer = None
        self.producers = []
        self.injected = collections.Counter()

    def report(self, line):
        """Say ``line`` where the run reports."""
        raise NotImplementedError

    def start_tree(self, config):
        """Make the spool and the store of ``config``; start the receiver,
        droprd and the consumer."""
        self.config = config
        Spool(config.client.spool, fsync=False).create()
        Store(config.receiver.store, fsync=False)
        self.receiver = ReceiverProcess(config, self.root / "receiver.log")
        self.receiver.start()
        self.daemon = Daemon(config)
        self.daemon.start()
        self.consumer = self._consumer().start()

    def _consumer(self):
        return Role(self.script, ["consume", "--config", str(self.config.path)],
                    self.root / "consumer.log")

    def start_producer(self, count, rate):
        """Start one more producer: ``count`` messages at ``rate`` per second."""
        i = len(self.producers)
        args = ["produce", "--config", str(self.config.path), "--count", str(count),
                "--rate", str(rate), "--seed", str(self.args.seed * 1000 + i),
                "--out", str(self.root / f"producer-{i}.ids")]
        self.producers.append(Role(self.script, args, self.root / f"producer-{i}.log").start())

    def kill_one(self, what, timeout):
        """kill -9 one live process of kind ``what`` (``receiver-worker``, or
        a worker's title after ``dropr: ``); False if none showed up in time."""
        victims = []
        with contextlib.suppress(RuntimeError):
            victims = wait_for(lambda: self._victims(what), timeout, f"a live {what}")
        return bool(victims) and kill9(self.rng.choice(victims).pid)

    def _victims(self, what):
        if what == "receiver-worker":
            return self.receiver.workers()
        return self.daemon.workers("dropr: " + what)

    def wait_producers(self):
        """Wait for every producer to end; the sum of their counts."""
        stats = collections.Counter()
        for producer in self.producers:
            producer.proc.wait()
            out = producer.stop().strip().splitlines()
            if producer.proc.returncode != 0 or not out:
                raise RuntimeError(f"producer failed; see {producer.log_path}")
            stats.update(json.loads(out[-1]))
        return stats

    def wait_idle(self, timeout, interval):
        """Wait until queue/, active/ and deferred/ are empty."""
        spool = Spool(self.config.client.spool, fsync=False)

        def idle():
            return spool.backlog()[0] == 0 and spool.count("active") == 0
        try:
            wait_for(idle, timeout, "the spool to drain", interval=interval)
        except RuntimeError as e:
            self.report(f"{e}: {spool.counts()}")
        return spool

    def check(self, spool):
        """Stop the consumer and compare the store with what the producers
        recorded: (droprd status exit, the counts of :func:`verify`, the dead
        messages of ``spool`` with their reasons)."""
        daemon_status = self.daemon.status()
        self.consumer.stop()
        result = verify(expected_ids(self.root), stored_copies(Store(self.config.receiver.store)))
        dead = [(n.id, spool.reason(n).strip()) for n in spool.names("dead")]
        return daemon_status, result, dead

    def teardown(self):
        """Stop every process of the run (by pid) and remove its SysV queue."""
        for role in [*self.producers, self.consumer]:
            if role is not None:
                role.kill()
        if self.daemon is not None:
            self.daemon.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.config is not None:
            notices = Notices.open(self.config.client.spool)
            if notices is not None:
                notices.remove()


# -- the check ------------------------------------------------------------------

def expected_ids(root):
    """{id: sha256} of every id a producer recorded."""
    expected = {}
    for path in sorted(root.glob("producer-*.ids")):
        for line in path.read_text().splitlines():
            message_id, _channel, _priority, digest = line.split()
            expected[message_id] = digest
    return expected


def stored_copies(store):
    """{id: [sha256 of each stored copy]} over every channel, queue/ and done/."""
    with contextlib.suppress(Exception):
        store.open_work(CONSUMER).close()  # what a killed consumer left goes back to queue/
    found = collections.defaultdict(list)
    for channel in store.channels():
        for state in ("queue", "done", "dead"):
            for message in store.messages(channel, state=state):
                found[message.id].append(hashlib.sha256(message.read()).hexdigest())
    return found


def verify(expected, found):
    """Counts of the comparison: stored, lost, duplicated, corrupt, unexpected."""
    stored = sum(1 for mid in expected if mid in found)
    corrupt = sum(1 for mid, digest in expected.items()
                  if any(d != digest for d in found.get(mid, ())))
    return {"stored": stored, "lost": len(expected) - stored,
            "duplicated": sum(len(copies) - 1 for copies in found.values()),
            "corrupt": corrupt, "unexpected": sum(1 for mid in found if mid not in expected)}


def tracebacks(root):
    """{log file name: how many tracebacks it holds} of the run's folder."""
    return {p.name: p.read_text(errors="replace").count("Traceback")
            for p in sorted(root.glob("*.log"))}


def finish(root, ok, *, keep, say):
    """The run's exit status; its folder removed if ``ok`` unless ``keep``."""
    if ok and not keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        say(f"logs kept in {root}")
    return 0 if ok else 1


def run_or_play(run, parse_args, argv=None):
    """The script's entry: ``produce ...`` or ``consume ...`` plays that role
    (bench/chaosroles.py); anything else is the run itself."""
    argv = sys.argv[1:] if argv is None else argv
    role = parse_role(argv)
    if role is not None:
        return role[0](role[1])
    return run(parse_args(argv))
