"""What the sender's shape costs in a drain: `dropr send --once` against two
stripped-down drain loops over the same claim, body and settle.

    python bench/sendershape.py [--messages 20000] [--runs 2] [--dir PATH]

Fills a spool under ``--dir`` (mount a fresh journaled ext4 or a tmpfs there)
with 1 KiB messages, fsync off on both sides, starts the receiver (gunicorn,
2 workers), and drains the spool in turn, ``--runs`` times each, with:

- ``send``: ``dropr send --once`` (its start-up, measured on an empty spool,
  taken off the wall time);
- ``threads``: a loop that claims, prepares and settles batches of 500 on
  its main thread and uploads them on a second one, as the sender's lanes
  do, without lanes, counts, peers' state or logging;
- ``multi``: the same work in one thread, driving libcurl's multi interface
  between claims instead of a second thread.

Prints msg/s of each drain and, for the two loops, the CPU of the process
per message (user, system). Each loop's figures are its own drain's, after
its imports.
"""

import argparse
import io
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pycurl

from dropr import config as config_mod
from dropr.bench import procs
from dropr.sender import transport as tr
from dropr.spool import Spool

BATCH = 500


class Loop:
    """The drain's work without the sender around it (claim, body, settle)."""

    def __init__(self, config):
        self.peer = config.peer("local")
        self.spool = Spool(config.client.spool, fsync=False).create()
        self.active = self.spool.open_active("shape")
        self.transport = tr.Transport(self.peer, client="shape")

    def handle(self):
        curl = tr._base_handle(self.peer, self.peer.url)
        curl.setopt(pycurl.URL, self.peer.url + tr.BATCH_PATH)
        curl.setopt(pycurl.POST, 1)
        curl.setopt(pycurl.UPLOAD_BUFFERSIZE, tr.UPLOAD_BYTES)
        return curl

    @staticmethod
    def arm(curl, form):
        body, answer = tr._Body(form), io.BytesIO()
        curl.setopt(pycurl.HTTPHEADER, [
            "Expect:", f"Content-Type: multipart/form-data; boundary={body.boundary}"])
        curl.setopt(pycurl.POSTFIELDSIZE_LARGE, body.length)
        curl.setopt(pycurl.READFUNCTION, body.read)
        curl.setopt(pycurl.WRITEFUNCTION, answer.write)
        return body, answer

    def claim(self):
        batch = self.spool.claim(self.active, limit=BATCH, max_bytes=16 << 20)
        return (batch, self.transport.prepare(batch)) if batch else None

    def settle(self, batch, answer):
        results = json.loads(answer.getvalue())["results"]
        for name, path, _ in batch:
            if results[name.id]["status"] not in ("stored", "duplicate"):
                raise SystemExit(f"{name.id}: {results[name.id]}")
            self.spool.to_sent(path, keep=False)
        return len(batch)

    def threads(self):
        todo, done = queue.Queue(1), queue.Queue()

        def lane():
            curl = self.handle()
            while (item := todo.get()) is not None:
                batch, form = item
                body, answer = self.arm(curl, form)
                curl.perform()
                body.close()
                done.put((batch, answer))
            done.put(None)
        thread = threading.Thread(target=lane)
        thread.start()
        n = 0
        while (item := self.claim()) is not None:
            todo.put(item)
            while not done.empty():
                n += self.settle(*done.get())
        todo.put(None)
        while (finished := done.get()) is not None:
            n += self.settle(*finished)
        thread.join()
        return n

    def multi(self):
        multi, curl = pycurl.CurlMulti(), self.handle()

        def pump():
            while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            return multi.info_read()[1]  # the transfers that ended
        n, flight, upcoming = 0, None, self.claim()
        while flight or upcoming:
            if flight is None:
                batch, form = upcoming
                body, answer = self.arm(curl, form)
                multi.add_handle(curl)
                flight, upcoming = (batch, body, answer), None
            ended = pump()
            if upcoming is None and not ended:
                upcoming = self.claim()  # while this batch is on the wire
                ended = pump()
            if ended:
                multi.remove_handle(curl)
                batch, body, answer = flight
                body.close()
                flight = None
                n += self.settle(batch, answer)
            elif upcoming is not None:
                multi.select(0.01)
        return n


def run_loop(config_path, shape):
    """In a process of its own: one drain by ``shape``; prints one JSON line."""
    loop = Loop(config_mod.load(config_path))
    start, started = os.times(), time.perf_counter()
    n = getattr(loop, shape)()
    wall, end = time.perf_counter() - started, os.times()
    print(json.dumps({"rate": n / wall, "user": (end.user - start.user) / n * 1e6,
                      "system": (end.system - start.system) / n * 1e6}))


def drain(config, shape, startup):
    if shape == "send":
        started = time.perf_counter()
        subprocess.run([*procs.DROPR, "--config", str(config.path), "send", "--once"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return {"rate": None, "wall": time.perf_counter() - started - startup}
    out = subprocess.run([sys.executable, __file__, "--loop", shape, str(config.path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--dir", default=".")
    p.add_argument("--loop", nargs=2, metavar=("SHAPE", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.loop:
        run_loop(args.loop[1], args.loop[0])
        return 0
    root = Path(args.dir) / f"sendershape-{os.getpid()}"
    config = procs.write_config(root, fsync=False, notify=False)
    n, rates = args.messages, {"send": [], "threads": [], "multi": []}
    with procs.Receiver(config):
        started = time.perf_counter()
        subprocess.run([*procs.DROPR, "--config", str(config.path), "send", "--once"], check=True)
        startup = time.perf_counter() - started  # on an empty spool: start-up alone
        for _ in range(args.runs):
            for shape, got in rates.items():
                for folder in (root / "server" / "queue", root / "client" / "sent"):
                    shutil.rmtree(folder, ignore_errors=True)
                procs.probes(("put", config.path, n, 1024, 0))
                result = drain(config, shape, startup)
                rate = result["rate"] or n / result["wall"]
                got.append(rate)
                cpu = ("" if result["rate"] is None else
                       f"; {result['user']:.1f} + {result['system']:.1f} us CPU a message")
                print(f"{shape}: {rate:,.0f} msg/s{cpu}", flush=True)
    for shape, got in rates.items():
        print(f"{shape}: median {statistics.median(got):,.0f} msg/s of {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
