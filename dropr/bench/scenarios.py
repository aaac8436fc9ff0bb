"""The bench scenarios that measure message rates and latency. Each runs in
the bench process, on a fresh directory ``root`` (see :mod:`dropr.bench.fs`),
starts what it needs, and returns {figure: (value, limit)} for one run; the
limit is the raw loop of :mod:`dropr.bench.limit` measured in the same run."""

import contextlib
import dataclasses
import statistics
import time

from dropr import Client, Store
from dropr.bench import cluster, limit, procs
from dropr.errors import BenchError, NotFound, StoreUnavailable
from dropr.store import open_store
from dropr.spool import Spool

KiB, MiB = 1 << 10, 1 << 20


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each scenario moves; ``fsync_share`` scales the counts down
    for the fsync-on runs, which are slower by the disk's flush time."""

    messages: int = 20_000
    size: int = KiB
    latency: int = 1_000
    posts: int = 8_000
    large: int = 256 * MiB
    waiting: int = 1_000_000
    fsync_share: float = 0.1

    def count(self, fsync):
        """Messages per run for this fsync setting."""
        return max(8, int(self.messages * (self.fsync_share if fsync else 1)))


def _raw(root, sizes, fsync, procs_=1):
    """The raw loop's rate (files/s) in a folder of its own under ``root``."""
    count = sizes.count(fsync)
    return limit.rate(root / "raw", count=count, size=sizes.size, fsync=fsync, procs=procs_)


def _span(results):
    return max(r["ended"] for r in results) - min(r["started"] for r in results)


def put(ctx, root, fsync):
    """put() throughput with the wake-ups on, as producers run it: one producer
    with no droprd running, one beside a running droprd tree (its senders
    woken by the puts; no receiver, so nothing drains and the peer is down),
    and four producers at once. With fsync on, also put_many in batches of
    100 against the one-by-one rate of the same run."""
    out = {}
    count = ctx.sizes.count(fsync)
    for n, key, tree in ((1, "put1", False), (1, "put1d", True), (4, "put4", False)):
        config = procs.write_config(root / key, fsync=fsync)
        with procs.Tree(config, receiver=False) if tree else contextlib.nullcontext():
            ctx.progress.say(f"{n} producer(s), {n * count} puts" + (", droprd running" * tree))
            results = procs.probes(*[("put", config.path, count, ctx.sizes.size, procs.GO)
                                     for _ in range(n)])
        ctx.progress.say(f"raw loop x{n}")
        out[key] = (n * count / _span(results), _raw(root / key, ctx.sizes, fsync, n))
    if fsync:
        config = procs.write_config(root / "many", fsync=fsync)
        ctx.progress.say(f"put_many, {count} in batches of 100")
        (result,) = procs.probes(("putmany", config.path, count, ctx.sizes.size, 100, procs.GO))
        out["put_many100"] = (count / _span([result]), out["put1"][0])
    return out


def drain(ctx, root, fsync):
    """End to end, spool full then drained: by one sender, then (filled
    again) by two at once, as droprd runs them by default."""
    config = procs.write_config(root, fsync=fsync, notify=False)
    with procs.Receiver(config):
        rates = _drains(ctx, config, ctx.sizes.count(fsync))
    ctx.progress.say("raw loop")
    raw = _raw(root, ctx.sizes, fsync)
    return {"drain": (rates[0], raw), "drain2": (rates[1], raw)}


def _drains(ctx, config, count):
    """Fill the spool with ``count`` and drain it with one ``dropr send``
    process, then again with two; the two rates (messages/s)."""
    rates = []
    for senders in (1, 2):
        ctx.progress.say(f"filling the spool with {count}")
        procs.probes(("put", config.path, count, ctx.sizes.size, 0))
        ctx.progress.say(f"draining {count} with {senders} sender(s)")
        sent = procs.probes(*[("send", config.path)] * senders)
        _expect_stored(config, count * senders, "\n".join(r["log"] for r in sent))
        rates.append(count / _span(sent))
    return rates


def jetstream(ctx, root, fsync):
    """End to end into a 3-node JetStream cluster (replicas 3) on this host,
    as :func:`drain` does into the filesystem store; the limit beside it is
    one nats-py client publishing with 1,000 acks in flight."""
    if not cluster.available():
        note = f"jetstream: skipped, {cluster.missing()}"
        if note not in ctx.notes:
            ctx.notes.append(note)
        return {}
    with cluster.Cluster(root / "nats") as nodes:
        store = {"backend": "jetstream", "servers": nodes.urls, "replicas": 3}
        config = procs.write_config(root / "dropr", fsync=fsync, notify=False,
                                    sections={"store": store})
        count = ctx.sizes.count(fsync)
        ctx.progress.say("waiting for the stream")
        _stream_ready(config)
        with procs.Receiver(config):
            rates = _drains(ctx, config, count)
        ctx.progress.say("raw publish")
        (raw,) = procs.probes(("publish", ",".join(nodes.urls), max(count, 10_000),
                               ctx.sizes.size))
    limit_ = raw["acked"] / (raw["ended"] - raw["started"])
    return {"js_drain": (rates[0], limit_), "js_drain2": (rates[1], limit_)}


def _stream_ready(config):
    """Make the stream and wait until it takes messages (a new stream elects
    its leader first)."""
    store = open_store(config)

    def writable():
        try:
            store.check_writable()
            return True
        except StoreUnavailable:
            return False
    try:
        procs.wait_for(writable, 60, "the JetStream stream", interval=0.2)
    finally:
        store.close()


def steady(ctx, root, fsync):
    """End to end with two producers and the droprd tree (two senders, the
    receiver) running together: from the first put to the last stored."""
    config = procs.write_config(root, fsync=fsync, tree_receiver=True, defaults=True)
    count = ctx.sizes.count(fsync) // 2 * 2
    store = Store(config.receiver.store, fsync=False)
    with procs.Tree(config):
        runs = procs.probes_started(*[("put", config.path, count // 2, ctx.sizes.size, procs.GO)
                                      for _ in range(2)])
        try:
            done = procs.wait_for(lambda: _stored(ctx, store, count), 600, "all messages stored",
                                  interval=0.05)
        except BaseException:
            procs.kill(runs)
            raise
        results = procs.collect(runs)
    rate = count / (done - min(r["started"] for r in results))
    ctx.progress.say("raw loop")
    return {"steady": (rate, _raw(root, ctx.sizes, fsync))}


def _stored(ctx, store, count):
    n = store.count("common")
    ctx.progress.say(f"{n}/{count} stored")
    return time.time() if n >= count else None


def latency(ctx, root, fsync):
    """Idle latency from put() returning to the message stored, through an
    idle droprd tree: p50, p99 and max."""
    config = procs.write_config(root, fsync=fsync, tree_receiver=True)
    with procs.Tree(config):
        client = Client(config)
        store = Store(config.receiver.store, fsync=False)
        _latencies(ctx, client, store, 5)  # warm up: connections, caches
        ms = sorted(x * 1000 for x in _latencies(ctx, client, store, ctx.sizes.latency))
    raw_ms = 1000 / _raw(root, ctx.sizes, fsync)
    p99 = ms[min(len(ms) - 1, max(0, round(0.99 * len(ms)) - 1))]
    return {"lat_p50": (statistics.median(ms), raw_ms), "lat_p99": (p99, raw_ms),
            "lat_max": (ms[-1], raw_ms)}


def _latencies(ctx, client, store, count, pause=0.005):
    body = b"x" * ctx.sizes.size
    out = []
    for i in range(count):
        message_id = client.put(body, "local")
        start = time.perf_counter()
        while True:
            try:
                store.get("common", message_id)
                break
            except NotFound:
                time.sleep(0.0001)
            if time.perf_counter() - start > 30:
                raise BenchError(f"message {message_id} not stored after 30 s")
        out.append(time.perf_counter() - start)
        if i % 50 == 0:
            ctx.progress.say(f"{i}/{count} puts")
        time.sleep(pause)  # let the senders go back to waiting: the idle path
    return out


def post(ctx, root, fsync, clients=8):
    """Plain POST /v1/channels/common/messages, 8 kept-alive connections at
    once from one client process (plain sockets, as a load tool), against the
    receiver and then against the bare app of :mod:`dropr.bench.bare` (the
    limit: HTTP and falcon alone, nothing stored)."""
    config = procs.write_config(root, fsync=fsync, notify=False)
    total = ctx.sizes.posts if not fsync else max(clients, int(ctx.sizes.posts * ctx.sizes.fsync_share))
    each = max(1, total // clients)
    with procs.Receiver(config) as receiver:
        ctx.progress.say(f"{clients} clients, {each * clients} POSTs")
        results = procs.probes(("post", receiver.url, each * clients, ctx.sizes.size, procs.GO,
                                clients))
    errors = sum(r["errors"] for r in results)
    duplicates = sum(r["duplicates"] for r in results)
    if errors or duplicates:
        raise BenchError(f"of {each * clients} POSTs without an Idempotency-Key, {errors} were "
                         f"not answered 200/201 and {duplicates} were answered 200 (duplicate)")
    _expect_stored(config, each * clients)
    with procs.BareApp(config) as bare:
        ctx.progress.say(f"bare app: {clients} clients, {each * clients} POSTs")
        yardstick = procs.probes(("post", bare.url, each * clients, ctx.sizes.size, procs.GO,
                                  clients))
    return {"post8": (each * clients / _span(results), each * clients / _span(yardstick))}


def calls(ctx, root, fsync, callers=8):
    """Direct messages: calls to a ``cat`` responder over keep-alive, from one
    caller process and from eight at once, beside plain POSTs of the same
    body from as many clients in the same run (the limit: the same HTTP work
    without the responder); p50 and p99 of one caller's calls, and of
    starting ``cat`` alone (the cost a long-lived responder would save)."""
    bench = {"command": ["cat"], "max_concurrent": 64}
    config = procs.write_config(root, fsync=fsync, notify=False,
                                sections={"receiver": {"responders": {"bench": bench}}})
    count = max(8, ctx.sizes.posts // 8)
    out = {}
    with procs.Receiver(config) as receiver:
        for n, key in ((1, "call1"), (callers, "call8")):
            ctx.progress.say(f"{n} caller(s), {n * count} calls")
            made = procs.probes(*[("call", config.path, "bench", count, ctx.sizes.size, procs.GO)
                                  for _ in range(n)])
            if any(r["wrong"] for r in made):
                raise BenchError("a call's answer was not its question")
            ctx.progress.say(f"{n} POST client(s), {n * count} POSTs")
            posted = procs.probes(*[("post", receiver.url, count, ctx.sizes.size, procs.GO)
                                    for _ in range(n)])
            out[key] = (n * count / _span(made), n * count / _span(posted))
            if n == 1:
                ms = sorted(x * 1000 for x in made[0]["seconds"])
    (spawned,) = procs.probes(("spawn", max(20, count // 4)))
    spawn_ms = statistics.median(spawned["seconds"]) * 1000
    out["call_p50"] = (statistics.median(ms), spawn_ms)
    out["call_p99"] = (ms[min(len(ms) - 1, max(0, round(0.99 * len(ms)) - 1))], spawn_ms)
    return out


def _expect_stored(config, count, log=""):
    store = open_store(config)
    try:
        stored = store.count("common")
    finally:
        store.close()
    if stored != count:
        counts = Spool(config.client.spool, fsync=False).counts()
        raise BenchError(f"{stored} of {count} messages stored; spool: {counts}; "
                         f"the sender logged:\n{log}")
