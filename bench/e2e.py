"""Throughput end to end: put N messages into a client spool, then time one
`dropr send --once` that uploads them all to a real receiver (gunicorn).

    python bench/e2e.py [--dir DIR] [--messages N] [--size BYTES] [--fsync]
                        [--workers W] [--keep]

Everything lives in a fresh folder under --dir (default: the system temp
folder), removed afterwards unless --keep. Run it on tmpfs to measure dropr
rather than the disk. Prints the put rate and the delivery rate.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from dropr import config as config_mod
from dropr.client import Client
from dropr.store import Store

DROPR = [sys.executable, "-m", "dropr.cli"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where to make the work folder")
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--size", type=int, default=1024, help="bytes per message")
    p.add_argument("--fsync", action="store_true", help="fsync on both sides (default: off)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers of the receiver")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    return p.parse_args(argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(root, *, port, fsync, workers):
    fsync = "true" if fsync else "false"
    text = f"""
[client]
spool = "{root / 'client'}"
fsync = {fsync}
notify_max = 0

[peers.local]
url = "http://127.0.0.1:{port}"

[receiver]
bind = "127.0.0.1:{port}"
store = "{root / 'server'}"
fsync = {fsync}
workers = {workers}
"""
    path = root / "dropr.toml"
    path.write_text(text)
    return config_mod.load(path)


def start_receiver(config, log_path, timeout=20.0):
    """`dropr receiver` in its own session; returns the Popen once /v1/health answers."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*DROPR, "--config", str(config.path), "receiver"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = config.peer("local").url + "/v1/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.05)
    stop(proc)
    raise SystemExit(f"receiver not healthy after {timeout}s; see {log_path}")


def stop(proc):
    """SIGTERM the receiver's process group; SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def put_all(config, n, size):
    client = Client(config)
    body = os.urandom(size)
    started = time.perf_counter()
    for _ in range(n):
        client.put(body, "local")
    return time.perf_counter() - started


def send_once(config):
    started = time.perf_counter()
    result = subprocess.run([*DROPR, "--config", str(config.path), "send", "--once"],
                            capture_output=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"dropr send failed: {result.stderr.decode(errors='replace')}")
    return elapsed


def run(args):
    root = Path(tempfile.mkdtemp(prefix="dropr-bench-", dir=args.dir))
    config = write_config(root, port=free_port(), fsync=args.fsync, workers=args.workers)
    receiver = start_receiver(config, root / "receiver.log")
    try:
        put_s = put_all(config, args.messages, args.size)
        send_s = send_once(config)
        stored = Store(config.receiver.store, fsync=False).count("common")
    finally:
        stop(receiver)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    n = args.messages
    print(f"messages: {n} x {args.size} B, fsync={'on' if args.fsync else 'off'}, "
          f"receiver workers: {args.workers}, folder: {root}")
    print(f"put:        {n / put_s:10.0f} msgs/s  ({put_s:.2f} s)")
    print(f"end to end: {n / send_s:10.0f} msgs/s  ({send_s:.2f} s for one `dropr send --once`)")
    if stored != n:
        raise SystemExit(f"only {stored} of {n} messages were stored")
    return 0


if __name__ == "__main__":
    sys.exit(run(parse_args()))
