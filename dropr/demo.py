"""``make run``: dropr on loopback, in the foreground, showing messages flow.

Starts ``droprd start --foreground`` on the given config (its tree includes the
receiver when ``[workers] receiver = 1``; otherwise a ``dropr receiver`` is
started beside it), puts a few demo messages, and prints every message that
arrives in the store until Ctrl-C, which stops everything it started.
"""

import argparse
import errno
import signal
import socket
import subprocess
import sys
import time

from dropr import config as config_mod
from dropr.bench.procs import healthy
from dropr.client import Client
from dropr.store import Store

DEMO_MESSAGES = 5


def _spawn(args):
    return subprocess.Popen([sys.executable, "-m", *args])


def _wait(predicate, timeout, procs):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.05)
    return True


def _show_arrivals(store, seen):
    for channel in store.channels():
        for message in store.messages(channel):
            if message.path not in seen:
                seen.add(message.path)
                preview = message.read()[:60].decode("utf-8", "replace")
                print(f"  stored  {channel}/{message.id}  p{message.priority}  "
                      f"{message.size} B  {preview!r}", flush=True)


def address_taken(config):
    """One line saying that ``[receiver] bind`` is in use by another program
    and which keys to change, or None when it is free (or a unix socket).
    Checked before anything starts: gunicorn would retry, and the supervisor
    restart it, with "Address already in use" scrolling by."""
    bind = config.receiver.bind
    if bind.startswith("unix:"):
        return None
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, int(port)))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
        else:
            return None
    peer = next(iter(config.peers), "local")
    return (f"dropr demo: {bind} is already in use by another program: stop it, or "
            f"change [receiver] bind and [peers.{peer}] url in {config.path}")


def main(argv=None):
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m dropr.demo")
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    config = config_mod.load(args.config)
    taken = address_taken(config)
    if taken:
        print(taken, file=sys.stderr)
        return 1
    path = str(config.path)
    procs = [_spawn(["dropr.supervisor.cli", "--config", path, "start", "--foreground"])]
    if config.workers.receiver == 0:
        procs.append(_spawn(["dropr.cli", "--config", path, "receiver"]))
    try:
        return _demo(config, procs)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()


def _demo(config, procs):
    peer = next(iter(config.peers.values()))
    if not _wait(lambda: healthy(peer.url), 30, procs):
        print(f"dropr demo: the receiver at {peer.url} did not come up; see the log above",
              file=sys.stderr)
        return 1
    client = Client(config)
    store = Store(config.receiver.store, fsync=config.receiver.fsync)
    seen = {m.path for ch in store.channels() for m in store.messages(ch)}
    print(f"\ndropr is running: spool {config.client.spool}, store {config.receiver.store}")
    for i in range(DEMO_MESSAGES):
        message_id = client.put(f"demo message {i + 1}".encode(), peer.name, "demo", i % 10)
        print(f"  put     demo/{message_id}", flush=True)
    print(f"\nTry: .venv/bin/dropr --config {config.path} put --peer {peer.name} < some-file")
    print("Ctrl-C stops dropr.\n", flush=True)
    while all(p.poll() is None for p in procs):
        _show_arrivals(store, seen)
        time.sleep(0.2)
    print("dropr demo: a dropr process ended; see the log above", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
