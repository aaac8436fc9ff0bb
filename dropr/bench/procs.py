"""The processes of a bench run: a generated config, ``dropr receiver``, the
``droprd`` tree, probe children, and an RSS sampler. Runs in the bench
process; everything it starts it stops by pid or process group."""

import contextlib
import json
import selectors
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psutil

from dropr.bench import configfile
from dropr.bench.probe import GO
from dropr.errors import BenchError

DROPR = [sys.executable, "-m", "dropr.cli"]
DROPRD = [sys.executable, "-m", "dropr.supervisor.cli"]
PROBE = [sys.executable, "-m", "dropr.bench.probe"]
MiB = 1 << 20


def free_port():
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what, interval=0.02):
    """Poll ``predicate`` until truthy and return its value; BenchError after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return value


def settle(pids_of, count=None, timeout=15.0, checks=3, interval=0.05):
    """Wait until the processes ``pids_of()`` gives (``count`` of them, if
    given) are all asleep at ``checks`` looks in a row: booted and waiting
    for work. A server answers its first request while its other workers may
    still be importing, and connections made then would all go to the first;
    probes start only once every worker waits. Gives up quietly after
    ``timeout`` s (the figures are then taken as they come)."""
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < checks and time.monotonic() < deadline:
        time.sleep(interval)
        pids = pids_of()
        try:
            asleep = all(psutil.Process(pid).status() == psutil.STATUS_SLEEPING for pid in pids)
        except psutil.Error:
            asleep = False
        enough = len(pids) == count if count is not None else bool(pids)
        quiet = quiet + 1 if asleep and enough else 0


def write_config(root, *, fsync, notify=True, senders=2, tree_receiver=False, defaults=False,
                 sections=None):
    """The bench's dropr.toml under ``root`` (:mod:`dropr.bench.configfile`;
    ``sections``: more keys); returns the loaded Config. No message-size limit
    (the large scenario), and unless ``defaults``, no recycling of workers
    mid-run."""
    keys = {
        "client": {"fsync": fsync, "notify_max": 4 if notify else 0},
        "receiver": {"fsync": fsync, "workers": 2, "max_message_bytes": 0, "min_free_bytes": 0},
        "workers": {"sender": senders, "receiver": 1 if tree_receiver else 0},
        "supervisor": {} if defaults else {"max_messages_per_life": 0, "max_rss": 0},
    }
    for section, values in (sections or {}).items():
        keys.setdefault(section, {}).update(values)
    return configfile.write_config(root, port=free_port(), sections=keys)


def healthy(url):
    """True if the receiver at ``url`` answers its health check."""
    try:
        with urllib.request.urlopen(url + "/v1/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


class Receiver:
    """``dropr receiver`` (gunicorn) in its own process group."""

    def __init__(self, config):
        self.config = config
        self.url = config.peer("local").url
        self.proc = None

    def __enter__(self):
        log = open(self.config.path.with_name("receiver.log"), "ab")
        with log:
            self.proc = subprocess.Popen([*DROPR, "--config", str(self.config.path), "receiver"],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or healthy(self.url), 30, "the receiver")
        if self.proc.poll() is not None:
            raise BenchError(f"the receiver exited with {self.proc.returncode}")
        settle(self.workers, self.config.receiver.workers)
        return self

    def pids(self):
        """The master's pid and its workers'."""
        with contextlib.suppress(psutil.Error):
            master = psutil.Process(self.proc.pid)
            return [master.pid, *(c.pid for c in master.children(recursive=True))]
        return []

    def workers(self):
        """The workers' pids."""
        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        return []

    def __exit__(self, *exc):
        stop_group(self.proc)


class BareApp(Receiver):
    """The bare falcon app of :mod:`dropr.bench.bare` under gunicorn's stock
    gthread worker, with the receiver's worker and thread counts, on a free port."""

    def __init__(self, config):
        super().__init__(config)
        self.url = f"http://127.0.0.1:{free_port()}"

    def __enter__(self):
        from dropr.receiver.serve import THREADS

        argv = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", str(THREADS),
                "-w", str(self.config.receiver.workers), "-b", self.url.removeprefix("http://"),
                "dropr.bench.bare:app"]
        log = open(self.config.path.with_name("bare.log"), "ab")
        with log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or _answers(self.url), 30, "the bare app")
        if self.proc.poll() is not None:
            raise BenchError(f"the bare app exited with {self.proc.returncode}")
        settle(self.workers, self.config.receiver.workers)
        return self


def _answers(url):
    """True once the bare app answers a POST."""
    try:
        request = urllib.request.Request(url + "/v1/channels/x/messages", data=b"x")
        with urllib.request.urlopen(request, timeout=1) as r:
            return r.status == 201
    except OSError:
        return False


def stop_group(proc, timeout=15):
    """SIGTERM ``proc``'s process group, SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Tree:
    """The ``droprd`` tree (senders, retry scanner, reaper, receiver)."""

    def __init__(self, config, *, receiver=True):
        self.config = config
        self.url = config.peer("local").url
        self.receiver = receiver  # wait for the receiver too (one in the tree, or beside it)

    def _droprd(self, *args):
        return subprocess.run([*DROPRD, "--config", str(self.config.path), *args],
                              capture_output=True, text=True, timeout=60)

    def __enter__(self):
        result = self._droprd("start")
        if result.returncode != 0:
            raise BenchError(f"droprd start failed: {result.stderr.strip()}")
        wait_for(self._ready, 30, "the droprd tree")
        settle(self._pids)
        return self

    def _pids(self):
        """The supervisor's pid and those of the whole tree under it."""
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            top = psutil.Process(int(self.config.supervisor.pidfile.read_text().split()[0]))
            return [top.pid, *(c.pid for c in top.children(recursive=True))]
        return []

    def _ready(self):
        try:
            workers = json.loads(self.config.supervisor.status_file.read_text())["workers"]
        except (OSError, ValueError, KeyError):
            return False
        running = workers and all(w["state"] == "running" for w in workers)
        return running and (not self.receiver or healthy(self.url))

    def __exit__(self, *exc):
        result = self._droprd("stop")
        pidfile = self.config.supervisor.pidfile
        if result.returncode != 0 and pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)


def probes(*argvs, timeout=3600):
    """Run probe commands at once; their JSON results, in order."""
    return collect(probes_started(*argvs), timeout=timeout)


def probes_started(*argvs, timeout=120):
    """Start probe commands; pass the result to :func:`collect`. Those whose
    start argument is ``go`` are released together once every one of them
    says it is ready (imports and set-up done), within ``timeout`` s."""
    started = [(argv, subprocess.Popen([*PROBE, *map(str, argv)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
               for argv in argvs]
    waiting = [proc for argv, proc in started if GO in argv]
    deadline = time.monotonic() + timeout
    try:
        for proc in waiting:
            _ready(proc, deadline)
        for proc in waiting:
            try:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            except BrokenPipeError:
                raise _failed(proc) from None
    except BaseException:
        kill(started)
        raise
    return started


def _ready(proc, deadline):
    """Wait for a probe's ``ready`` line; BenchError if it fails first."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(max(0.0, deadline - time.monotonic())):
            raise BenchError(f"probe {proc.args[3]} was not ready in time")
    if proc.stdout.readline().strip() != "ready":
        raise _failed(proc)


def _failed(proc):
    """BenchError for a probe that failed before it started its work."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return BenchError(f"probe {proc.args[3]} failed: {proc.stderr.read().strip()[-2000:]}")


def kill(started):
    """Kill the started probes still running, and reap them all."""
    for _, proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def collect(started, timeout=3600):
    """The JSON results of started probes, in order, each with what the probe
    logged (``"log"``); kills any left running."""
    results = []
    try:
        for argv, proc in started:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise BenchError(f"probe {argv[0]} failed: {err.strip()[-2000:]}")
            results.append({**json.loads(out.strip().splitlines()[-1]), "log": err[-2000:]})
    finally:
        kill(started)
    return results


class RssSampler:
    """Samples the RSS of some processes in a thread; ``peak[pid]`` (MiB) and
    ``base[pid]`` (the first sample)."""

    def __init__(self, pids_of, interval=0.02):
        self.pids_of = pids_of  # a callable: the pids to watch now
        self.interval = interval
        self.base, self.peak = {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self):
        for pid in self.pids_of():
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(pid).memory_info().rss / MiB
                self.base.setdefault(pid, rss)
                self.peak[pid] = max(self.peak.get(pid, 0.0), rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def max_peak(self):
        """The largest peak of any watched process."""
        return max(self.peak.values(), default=0.0)

    def max_growth(self):
        """The largest growth of any watched process over its first sample."""
        return max((self.peak[p] - self.base[p] for p in self.peak), default=0.0)
