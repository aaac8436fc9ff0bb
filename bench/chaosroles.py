"""The producer and consumer processes of a chaos run (bench/chaos.py).

    chaos.py produce --config PATH --count N --rate R --seed S --out FILE
    chaos.py consume --config PATH

A producer puts ``count`` messages of random size, channel and priority at
``rate`` per second and appends ``ID CHANNEL PRIORITY SHA256`` to ``out`` for
each id that put() returned, fsync-ed before the next put. A full spool
(QueueFull, SpoolFull) is counted and tried again with a new message id; the
refused id was never returned, so it is not expected in the store. The
consumer claims and acks every message of the store until SIGTERM, so that
re-sent duplicates meet their original in ``done/`` as well as in ``queue/``.
"""

import argparse
import collections
import hashlib
import json
import os
import random
import signal
import time

from dropr import config as config_mod
from dropr.client import Client
from dropr.errors import QueueFull, SpoolFull
from dropr.store import Store

CHANNELS = ("alpha", "beta", "gamma")
CONSUMER = "chaos"


def parse_role(argv):
    """(role function, args) for ``produce ...`` or ``consume ...``; else None."""
    if argv[:1] == ["produce"]:
        p = argparse.ArgumentParser(prog="chaos.py produce")
        p.add_argument("--config", required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--rate", type=float, required=True)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--out", required=True)
        return produce, p.parse_args(argv[1:])
    if argv[:1] == ["consume"]:
        p = argparse.ArgumentParser(prog="chaos.py consume")
        p.add_argument("--config", required=True)
        return consume, p.parse_args(argv[1:])
    return None


def produce(args):
    """Put ``count`` messages at ``rate`` per second; record each returned id."""
    client, rng = Client(args.config), random.Random(args.seed)
    stats = collections.Counter()
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    started = time.monotonic()
    for i in range(args.count):
        ahead = started + i / args.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        size = rng.randrange(20_000, 100_000) if rng.random() < 0.02 else rng.randrange(1, 2000)
        body, channel, priority = rng.randbytes(size), rng.choice(CHANNELS), rng.randrange(10)
        message_id = _put(client, body, channel, priority, stats)
        line = f"{message_id} {channel} {priority} {hashlib.sha256(body).hexdigest()}\n"
        os.write(fd, line.encode())
        os.fsync(fd)
        stats["put"] += 1
    os.close(fd)
    print(json.dumps(stats), flush=True)
    return 0


def _put(client, body, channel, priority, stats):
    while True:
        try:
            return client.put(body, "local", channel, priority, timeout=0.5)
        except QueueFull:
            stats["queue_full"] += 1
        except SpoolFull:
            stats["spool_full"] += 1
            time.sleep(0.05)


def consume(args):
    """Claim and ack every message of the store until SIGTERM."""
    config = config_mod.load(args.config)
    store = Store(config.receiver.store, fsync=config.receiver.fsync)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    work = store.open_work(CONSUMER)
    acked = 0
    while not stopping:
        claimed = [m for ch in store.channels() for m in store.claim(ch, CONSUMER, limit=50)]
        for message in claimed:
            store.ack(message)
        acked += len(claimed)
        if not claimed:
            time.sleep(0.05)
    store.unclaim(work)
    print(json.dumps({"acked": acked}), flush=True)
    return 0
