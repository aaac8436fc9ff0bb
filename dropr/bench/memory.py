"""The bench scenarios about size and memory: one large message end to end,
and a deep spool (1,000,000 messages waiting). Run in the bench process; see
:mod:`dropr.bench.scenarios` for the conventions."""

import multiprocessing
import os

from dropr.bench import limit, procs
from dropr.errors import BenchError
from dropr.ids import IdGenerator
from dropr.spool import Spool, SpoolName

MiB = 1 << 20


def _big_file(path, size):
    chunk = os.urandom(MiB)
    with open(path, "wb") as f:
        for offset in range(0, size, MiB):
            f.write(chunk[: min(MiB, size - offset)])


def large(ctx, root, fsync):
    """One message of ``sizes.large`` bytes: put by path, then delivered by
    one sender; MiB/s from put to stored, and how much each process grew."""
    size = ctx.sizes.large
    ctx.progress.say(f"raw loop, {size // MiB} MiB")
    raw = limit.mib_per_s(root / "raw", size=size, fsync=fsync)
    os.unlink(root / "raw" / "queue" / "big-000000000")
    source = root / "big.bin"
    _big_file(source, size)
    config = procs.write_config(root, fsync=fsync, notify=False)
    with procs.Receiver(config) as receiver, procs.RssSampler(receiver.pids) as rss:
        ctx.progress.say(f"put {size // MiB} MiB")
        (put,) = procs.probes(("putfile", config.path, source))
        ctx.progress.say(f"send {size // MiB} MiB")
        (sent,) = procs.probes(("send", config.path))
    if sent["moved"] != 1:
        raise BenchError(f"the large message was not delivered: {sent}")
    seconds = (put["ended"] - put["started"]) + (sent["ended"] - sent["started"])
    growth = {"producer": put["rss_peak"] - put["rss_base"],
              "sender": sent["rss_peak"] - sent["rss_base"], "receiver": rss.max_growth()}
    return {"large_mibs": (size / MiB / seconds, raw),
            "large_growth": (max(growth.values()), None),
            "large_rss_producer": (put["rss_peak"], None),
            "large_rss_sender": (sent["rss_peak"], None),
            "large_rss_receiver": (rss.max_peak(), None)}


def _fill_part(spool_root, count, size, counter):
    spool = Spool(spool_root, fsync=False).create()
    new_id, body = IdGenerator(), b"w" * size
    for i in range(count):
        spool.put(body, SpoolName(5, new_id(), "local", "common"))
        if i % 1000 == 999:
            with counter.get_lock():
                counter.value += 1000


def top_up(ctx, spool_root, want, size):
    """Put messages into the spool until ``want`` wait in queue/ (fsync off:
    this is set-up, not measured); two processes at once."""
    have = Spool(spool_root, fsync=False).create().backlog()[0]
    missing = want - have
    if missing <= 0:
        return
    mp = multiprocessing.get_context("fork")
    counter = mp.Value("q", 0)
    parts = [missing // 2, missing - missing // 2]
    workers = [mp.Process(target=_fill_part, args=(spool_root, n, size, counter))
               for n in parts]
    for w in workers:
        w.start()
    try:
        for w in workers:
            while w.is_alive():
                ctx.progress.say(f"filling the spool: {counter.value:,}/{missing:,}")
                w.join(0.5)
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()
    if any(w.exitcode != 0 for w in workers):
        raise BenchError(f"filling the spool {spool_root} failed")


def waiting_setup(ctx, root):
    """Two spools: 1,000 waiting and ``sizes.waiting`` waiting."""
    for label, want in (("small", 1000), ("deep", ctx.sizes.waiting)):
        top_up(ctx, root / label / "client", want, ctx.sizes.size)
    return None


def waiting(ctx, root, fsync, state=None):
    """Two batches (claim + upload) from a fresh sender at 1,000 and at
    ``sizes.waiting`` waiting: the time of each one's selection (the claim)
    and of the whole batch; the first batch lists the queue, the next is
    what a running sender pays. And the RSS of the sender and of the receiver around the deep one."""
    batch = {}
    for label, want in (("small", 1000), ("deep", ctx.sizes.waiting)):
        top_up(ctx, root / label / "client", want, ctx.sizes.size)
        config = procs.write_config(root / label, fsync=fsync, notify=False)
        with procs.Receiver(config) as receiver, procs.RssSampler(receiver.pids) as rss:
            ctx.progress.say(f"one batch at {want} waiting")
            (batch[label],) = procs.probes(("batch", config.path))
        if batch[label]["moved"] == 0:
            raise BenchError(f"the batch at {want} waiting moved nothing")
    small, deep = batch["small"], batch["deep"]
    out = {"wait_rss_sender": (deep["rss_peak"], None), "wait_rss_receiver": (rss.max_peak(), None)}
    for i, when in enumerate(("first", "next")):
        out[f"wait_select_small_{when}"] = (small["select"][i] * 1000, None)
        out[f"wait_select_deep_{when}"] = (deep["select"][i] * 1000, None)
        out[f"wait_ratio_{when}"] = (deep["select"][i] / small["select"][i], None)
        out[f"wait_batch_small_{when}"] = (small["seconds"][i] * 1000, None)
        out[f"wait_batch_deep_{when}"] = (deep["seconds"][i] * 1000, None)
    return out
