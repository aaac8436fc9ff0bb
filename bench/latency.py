"""Put-to-stored latency through an idle droprd tree.

Starts its own ``droprd`` (2 senders, retry scanner, reaper and the receiver
in the same tree) on a config in a temporary folder, then puts messages one at
a time and measures, for each, the time from ``put()`` returning to the
message being in the receiver's store. The tree is idle before each put, so
every message takes the wake-up path: the producer's SysV notice wakes a
sender blocked in its wait.

    python bench/latency.py [--count 200] [--no-fsync]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from dropr import Client, Store
from dropr.errors import NotFound

DROPRD = [sys.executable, "-m", "dropr.supervisor.cli"]


def free_port():
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(root, port, fsync):
    """A dropr.toml for a spool, a store and droprd's files under ``root``."""
    flag = "true" if fsync else "false"
    text = f"""
[client]
spool = "{root}/client"
fsync = {flag}
[peers.local]
url = "http://127.0.0.1:{port}"
[receiver]
bind = "127.0.0.1:{port}"
store = "{root}/server"
fsync = {flag}
[workers]
sender = 2
receiver = 1
[supervisor]
pidfile = "{root}/droprd.pid"
status_file = "{root}/droprd.status.json"
log_file = "{root}/droprd.log"
"""
    path = Path(root) / "dropr.toml"
    path.write_text(text)
    return path


def wait_until(predicate, timeout, what):
    """Poll until ``predicate()`` holds; RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def tree_ready(status_file, url):
    """Every worker reports running and the receiver answers its health check."""
    try:
        workers = json.loads(Path(status_file).read_text())["workers"]
        with urllib.request.urlopen(url + "/v1/health", timeout=1) as r:
            healthy = r.status == 200
    except (OSError, ValueError, KeyError):
        return False
    return healthy and workers and all(w["state"] == "running" for w in workers)


def measure(config_path, count, pause=0.02):
    """Put ``count`` messages one by one; the put-to-stored latency of each (s)."""
    client = Client(config_path)
    store = Store(client.config.receiver.store, fsync=False)
    latencies = []
    for i in range(count):
        message_id = client.put(b"latency probe %d" % i, "local")
        start = time.perf_counter()
        while True:
            try:
                store.get("common", message_id)
                break
            except NotFound:
                time.sleep(0.0001)
            if time.perf_counter() - start > 10:
                raise RuntimeError(f"message {message_id} not stored after 10 s")
        latencies.append(time.perf_counter() - start)
        time.sleep(pause)  # let the senders go back to waiting: measure the idle path
    return latencies


def run(count=200, fsync=True):
    """Start a tree, measure, stop it; returns the latencies in seconds."""
    root = Path(tempfile.mkdtemp(prefix="dropr-latency-"))
    port = free_port()
    config_path = write_config(root, port, fsync)
    droprd = [*DROPRD, "--config", str(config_path)]
    try:
        subprocess.run([*droprd, "start"], check=True, capture_output=True)
        wait_until(lambda: tree_ready(root / "droprd.status.json", f"http://127.0.0.1:{port}"),
                   30, "the tree")
        measure(config_path, 5)  # warm up: connections, caches
        return measure(config_path, count)
    finally:
        stopped = subprocess.run([*droprd, "stop"], capture_output=True)
        if stopped.returncode != 0 and (root / "droprd.pid").exists():
            os.kill(int((root / "droprd.pid").read_text()), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None):
    """Print p50, p99 and max in milliseconds."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--no-fsync", action="store_true", help="fsync off on both sides")
    args = p.parse_args(argv)
    ms = sorted(x * 1000 for x in run(args.count, fsync=not args.no_fsync))
    p99 = ms[min(len(ms) - 1, int(round(0.99 * len(ms))) - 1)]
    print(f"put->stored over {len(ms)} messages (fsync {'off' if args.no_fsync else 'on'}): "
          f"p50 {statistics.median(ms):.2f} ms  p99 {p99:.2f} ms  max {ms[-1]:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
