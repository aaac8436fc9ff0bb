"""Where a plain POST's time goes: CPU and system calls per request in the
receiver's worker processes, beside the bare falcon app of
:mod:`dropr.bench.bare` measured the same way in the same run.

    python bench/postprofile.py [--requests 20000] [--dir PATH] [--strace]
                                [--client wrk|probe] [--rounds 3]

Starts the receiver (gunicorn, 2 workers, fsync off, store under ``--dir``:
mount a tmpfs or a fresh ext4 there) and then the bare app (gunicorn's stock
gthread worker, the same worker and thread counts), and sends each
``--requests`` POSTs of 1 KiB to ``/v1/channels/common/messages`` from 8
kept-alive connections: ``wrk`` (one thread, 8 connections; little CPU of
its own, so the two cores go mostly to the server) or the bench's own probe
clients (8 processes). Prints, per request, the user and system CPU of the
worker processes (psutil, before and after) and the rate, for each server in
turn, ``--rounds`` times, then the ratio of the medians. With ``--strace`` it
runs once more per server with ``strace -c -f`` attached to the workers and
prints the system calls per request. With ``--phases`` both servers run with
timers around their parts (gunicorn's request thread, falcon, each
middleware, the resource, the store) and it prints the CPU time of the
request threads per request and phase (each timer costs about a microsecond,
so the figures are a little above those without it).
"""

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from dropr.bench import procs

LUA = """wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def workers(server):
    """The pids of the server's worker processes (not the master)."""
    return [p for p in server.pids() if p != server.proc.pid]


def cpu(pids):
    user = system = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            user, system = user + t.user, system + t.system
        except psutil.Error:
            pass
    return user, system


def load(url, requests, client, lua):
    """Send about ``requests`` POSTs from 8 connections; (requests sent, seconds)."""
    path = url + "/v1/channels/common/messages"
    if client == "probe":
        each = requests // 8
        results = procs.probes(*[("post", url, each, 1024, procs.GO) for _ in range(8)])
        if any(r["errors"] for r in results):
            raise SystemExit("some POSTs were not answered 200/201")
        return each * 8, max(r["ended"] for r in results) - min(r["started"] for r in results)
    # wrk runs for a time: aim at the count from a short calibration run.
    seconds = max(2, round(requests / load.rate)) if load.rate else 2
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "-s", lua, path],
                         capture_output=True, text=True, check=True).stdout
    sent = int(re.search(r"(\d+) requests in", out).group(1))
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    load.rate = sent / seconds
    return sent, seconds


load.rate = None


def measure(server, requests, client, lua):
    pids = workers(server)
    before, started = cpu(pids), time.perf_counter()
    sent, _ = load(server.url, requests, client, lua)
    wall = time.perf_counter() - started
    after = cpu(pids)
    return {"requests": sent, "rate": sent / wall,
            "user": (after[0] - before[0]) / sent * 1e6,
            "system": (after[1] - before[1]) / sent * 1e6}


def strace_counts(text, count):
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m:
            if m.group(2) != "total":
                rows.append((int(m.group(1)) / count, m.group(2)))
    return sorted(rows, reverse=True)


def traced(server, requests, client, lua, out):
    argv = ["strace", "-c", "-f", "-o", str(out)]
    for pid in workers(server):
        argv += ["-p", str(pid)]
    strace = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    time.sleep(1)
    sent, _ = load(server.url, requests, client, lua)
    strace.send_signal(signal.SIGINT)
    strace.wait()
    return strace_counts(out.read_text(), sent), sent


# -- phases: timers inside the servers -----------------------------------------

#: (module, attribute path, label): what is timed, in thread CPU time (inclusive).
PHASES = (
    ("gunicorn.workers.gthread", "ThreadWorker.handle", "request thread (all)"),
    ("gunicorn.http.parser", "Parser.__next__", "gunicorn: read and parse the head"),
    ("gunicorn.http.wsgi", "create", "gunicorn: environ"),
    ("gunicorn.http.wsgi", "Response.write", "gunicorn: send the answer"),
    ("falcon.app", "App.__call__", "falcon app (all)"),
    ("dropr.receiver.metrics", "Metrics.process_request", "middleware: metrics"),
    ("dropr.receiver.metrics", "Metrics.process_response", "middleware: metrics"),
    ("dropr.receiver.auth", "Authenticate.process_request", "middleware: auth"),
    ("dropr.receiver.strict", "Framing.process_request", "middleware: framing"),
    ("dropr.receiver.limits", "BodyTimeout.process_request", "middleware: body timeout"),
    ("dropr.receiver.limits", "BodyTimeout.process_response", "middleware: body timeout"),
    ("dropr.receiver.messages", "MessagesResource.on_post", "resource (all)"),
    ("dropr.bench.bare", "_Messages.on_post", "resource (all)"),
    ("dropr.store", "Store.stage", "store: stage (tmp/ file)"),
    ("dropr.store", "Store.publish", "store: publish (link, unlink)"),
    ("dropr.receiver.metrics", "Metrics.published", "metrics: count the message"),
)


def _install_timers(folder):
    """Wrap the PHASES in this (gunicorn master) process; each worker writes
    its totals to ``folder/phases-PID.json`` every 500 requests."""
    import importlib

    totals, lock = {}, threading.Lock()
    requests = [0]

    def dump():
        path = Path(folder) / f"phases-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"requests": requests[0], "ns": totals}))
        os.replace(tmp, path)

    def timed(func, label, counts):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            started = time.thread_time_ns()
            try:
                return func(*args, **kwargs)
            finally:
                spent = time.thread_time_ns() - started
                with lock:
                    totals[label] = totals.get(label, 0) + spent
                    if counts:
                        requests[0] += 1
                        if requests[0] % 500 == 0:
                            dump()
        return wrapper

    for module, path, label in PHASES:
        with contextlib.suppress(ImportError):
            owner = importlib.import_module(module)
            *outer, name = path.split(".")
            for part in outer:
                owner = getattr(owner, part)
            setattr(owner, name, timed(getattr(owner, name), label, label == PHASES[0][2]))


def serve(kind, folder, args):
    """The server process of ``--phases``: the receiver (``args``: its config)
    or the bare app (``args``: gunicorn's command line), with timers."""
    _install_timers(folder)
    if kind == "receiver":
        from dropr import cli

        sys.exit(cli.main(["--config", args[0], "receiver"]))
    from gunicorn.app.wsgiapp import run

    sys.argv = ["gunicorn", *args]
    sys.exit(run())


class _Timed:
    """Start a server through :func:`serve` instead of its usual command."""

    def __init__(self, server, kind, folder):
        self.server, self.kind, self.folder = server, kind, folder

    def argv(self):
        own = [sys.executable, os.path.abspath(__file__), "--serve", self.kind, str(self.folder)]
        if self.kind == "receiver":
            return [*own, str(self.server.config.path)]
        from dropr.receiver.serve import THREADS

        return [*own, "-k", "gthread", "--threads", str(THREADS),
                "-w", str(self.server.config.receiver.workers),
                "-b", self.server.url.removeprefix("http://"), "dropr.bench.bare:app"]


def start_timed(server, kind, folder):
    """Like ``with server:``, but started with timers (see :func:`serve`)."""
    timed = _Timed(server, kind, folder)
    log = open(server.config.path.with_name(f"{kind}-phases.log"), "ab")
    with log:
        server.proc = subprocess.Popen(timed.argv(), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
    check = procs.healthy if kind == "receiver" else procs._answers
    procs.wait_for(lambda: server.proc.poll() is not None or check(server.url), 30, kind)
    if server.proc.poll() is not None:
        raise SystemExit(f"the {kind} exited with {server.proc.returncode}")
    return server


def read_phases(folder):
    """{label: ns} and requests, summed over the workers' latest dumps."""
    ns, requests = {}, 0
    for path in Path(folder).glob("phases-*.json"):
        data = json.loads(path.read_text())
        requests += data["requests"]
        for label, value in data["ns"].items():
            ns[label] = ns.get(label, 0) + value
    return ns, requests


def phases(server, kind, folder, count, client, lua):
    """CPU per request by phase, over about ``count`` requests."""
    pids = workers(server)
    before, cpu0 = read_phases(folder), cpu(pids)
    load(server.url, count, client, lua)
    time.sleep(0.2)
    after, cpu1 = read_phases(folder), cpu(pids)
    n = after[1] - before[1]
    out = {label: (after[0].get(label, 0) - before[0].get(label, 0)) / n / 1000
           for label in after[0]}
    out["worker processes (all threads)"] = (sum(cpu1) - sum(cpu0)) / n * 1e6
    return out, n


def main():
    if len(sys.argv) > 3 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], sys.argv[3], sys.argv[4:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--dir", default=None)
    p.add_argument("--client", choices=("wrk", "probe"), default="wrk")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--strace", action="store_true")
    p.add_argument("--phases", action="store_true")
    args = p.parse_args()
    if args.client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), or use --client probe")
    root = Path(tempfile.mkdtemp(prefix="postprofile-", dir=args.dir))
    lua = root / "post.lua"
    lua.write_text(LUA)
    config = procs.write_config(root, fsync=False, notify=False)
    rows = {"receiver": [], "bare": []}
    try:
        if args.phases:
            return print_phases(config, root, args)
        with procs.Receiver(config) as receiver, procs.BareApp(config) as bare:
            servers = {"receiver": receiver, "bare": bare}
            for name, server in servers.items():  # warm up both
                load.rate = None
                load(server.url, 2000, args.client, lua)
            for r in range(args.rounds):
                for name, server in servers.items():
                    load.rate = None
                    load(server.url, 1000, args.client, lua)  # calibrate wrk's duration
                    row = measure(server, args.requests, args.client, lua)
                    rows[name].append(row)
                    print(f"round {r + 1} {name:8}: {row['requests']:6} requests, "
                          f"{row['rate']:7,.0f}/s, worker CPU {row['user']:6.1f} us user + "
                          f"{row['system']:6.1f} us system = "
                          f"{row['user'] + row['system']:6.1f} us per request", flush=True)
            med = {name: {k: statistics.median(row[k] for row in rs)
                          for k in ("rate", "user", "system")} for name, rs in rows.items()}
            for name, m in med.items():
                print(f"median {name:8}: {m['rate']:7,.0f}/s, {m['user']:6.1f} + {m['system']:6.1f}"
                      f" = {m['user'] + m['system']:6.1f} us CPU per request")
            cpu_r = med["receiver"]["user"] + med["receiver"]["system"]
            cpu_b = med["bare"]["user"] + med["bare"]["system"]
            print(f"bare/receiver CPU per request: {cpu_b / cpu_r:.2f}; "
                  f"rate ratio: {med['receiver']['rate'] / med['bare']['rate']:.2f}")
            if args.strace:
                for name, server in servers.items():
                    load.rate = None
                    load(server.url, 1000, args.client, lua)
                    counts, sent = traced(server, args.requests // 4, args.client, lua,
                                          root / f"{name}.strace")
                    total = sum(n for n, _ in counts)
                    print(f"{name}: {total:.1f} system calls per request ({sent} requests)")
                    for n, call in counts:
                        if n >= 0.05:
                            print(f"  {n:6.2f} {call}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def print_phases(config, root, args):
    results = {}
    for kind, server in (("receiver", procs.Receiver(config)), ("bare", procs.BareApp(config))):
        folder = root / f"{kind}-phases"
        folder.mkdir()
        start_timed(server, kind, folder)
        try:
            load.rate = None
            load(server.url, 2000, args.client, root / "post.lua")
            runs = []
            for _ in range(args.rounds):
                load.rate = None
                load(server.url, 1000, args.client, root / "post.lua")
                runs.append(phases(server, kind, folder, args.requests, args.client,
                                   root / "post.lua")[0])
            results[kind] = {label: statistics.median(r.get(label, 0.0) for r in runs)
                             for label in runs[-1]}
        finally:
            procs.stop_group(server.proc)
    labels = list(dict.fromkeys([*(label for _, _, label in PHASES),
                                 "worker processes (all threads)"]))
    print(f"{'CPU per request, us (median of ' + str(args.rounds) + ')':48} "
          f"{'receiver':>9} {'bare':>9}")
    for label in labels:
        r, b = results["receiver"].get(label), results["bare"].get(label)
        if r is None and b is None:
            continue
        print(f"{label:48} {r or 0:9.1f} {b or 0:9.1f}")
    for kind in results:
        rest = (results[kind]["worker processes (all threads)"]
                - results[kind]["request thread (all)"])
        print(f"{kind}: outside the request threads (event loop, hand-offs): {rest:.1f} us")


if __name__ == "__main__":
    main()
