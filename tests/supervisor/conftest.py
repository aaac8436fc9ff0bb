"""Fixtures for the supervisor tests: ``droprd`` run for real on a config in a
temporary folder, every process it ever showed remembered, and all of them
stopped by pid (and the SysV queues removed) at the end of each test."""

import contextlib
import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

from dropr import config as config_mod
from dropr.ipc import ROLES, queue_key
from dropr.supervisor.daemon import alive
from tests.support import harness

DROPRD = [sys.executable, "-m", "dropr.supervisor.cli"]

# Small ticks and backoffs so that every test takes a few seconds.
FAST = {
    "supervisor": {"tick": 0.05, "backoff_base": 0.05, "backoff_cap": 0.5,
                   "backoff_reset": 2.0, "stop_timeout": 5.0, "kill_timeout": 1.0},
}


def queues_exist(spool):
    """The roles of the spool's SysV queues that exist now."""
    import sysv_ipc

    found = []
    for role in ROLES:
        with contextlib.suppress(sysv_ipc.ExistentialError):
            sysv_ipc.MessageQueue(queue_key(spool, role))
            found.append(role)
    return found


class Droprd:
    """``droprd`` for one config: runs its commands, reads its status, and
    remembers every process of the tree it has seen, with its start time so
    that a reused pid is never taken for one of ours."""

    def __init__(self, config_path, *, port, sections, peers=None):
        self.config_path = config_path
        self.config = config_mod.load(config_path)
        self.port, self.sections, self.peers = port, sections, peers
        self.seen = {}

    def rewrite(self, sections):
        """Write the config again with ``sections`` changed (for reload)."""
        for section, values in sections.items():
            self.sections.setdefault(section, {}).update(values)
        harness.write_config(self.config_path.parent, port=self.port, sections=self.sections,
                             peers=self.peers)

    def run(self, *args, timeout=30):
        """Run ``droprd ARGS``; the CompletedProcess (text)."""
        return subprocess.run([*DROPRD, "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *, wait=True):
        """``droprd start``; waits until every worker is running."""
        result = self.run("start")
        assert result.returncode == 0, result.stderr + self.log_tail()
        if wait:
            self.wait_running()
        return result

    @property
    def pid(self):
        """The supervisor's pid from the pidfile (None if there is none)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(self.config.supervisor.pidfile.read_text())
        return None

    def status(self):
        """The status file the supervisor writes, with every pid in it remembered."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            document = json.loads(self.config.supervisor.status_file.read_text())
            self._remember(document)
            return document
        return None

    def workers(self):
        """name -> status entry."""
        return {w["name"]: w for w in (self.status() or {}).get("workers", [])}

    def wait_running(self, count=None, timeout=15.0):
        """Wait until ``count`` workers (default: all listed) are running."""
        def ready():
            workers = self.workers()
            states = [w["state"] for w in workers.values()]
            if count is not None and len(states) != count:
                return None
            return workers if states and all(s == "running" for s in states) else None
        return harness.wait_for(ready, timeout, what=f"workers running ({self.log_tail()})")

    def wait_state(self, name, state, timeout=15.0):
        """Wait until worker ``name`` is in ``state``; its status entry."""
        return harness.wait_for(lambda: (w := self.workers().get(name)) and
                                w["state"] == state and w, timeout,
                                what=f"{name} {state}")

    def _remember(self, document):
        pids = [document.get("pid")] + [w.get("pid") for w in document.get("workers", [])]
        for pid in pids:
            with contextlib.suppress(psutil.Error, ValueError, TypeError):
                proc = self.seen.setdefault(pid, psutil.Process(pid)) if pid else None
                for child in proc.children(recursive=True) if proc else ():
                    self.seen.setdefault(child.pid, child)

    def leftovers(self):
        """Processes of the tree that are still running."""
        left = []
        for pid, proc in self.seen.items():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
        return left

    def log_tail(self, n=3000):
        """The end of the daemon's log, for failure messages."""
        with contextlib.suppress(FileNotFoundError):
            return self.config.supervisor.log_file.read_text()[-n:]
        return ""

    def cleanup(self):
        """Stop everything by pid; returns what had to be killed."""
        self.status()
        pid = self.pid
        if pid and alive(pid):
            self.run("stop")
        with contextlib.suppress(AssertionError):
            harness.wait_for(lambda: not self.leftovers(), 3.0)
        killed = []
        for pid in self.leftovers():
            with contextlib.suppress(psutil.Error):
                self.seen[pid].send_signal(signal.SIGKILL)
                killed.append(pid)
        with contextlib.suppress(AssertionError):
            harness.wait_for(lambda: not self.leftovers(), 5.0)
        harness.remove_queues(self.config.client.spool)
        return killed


@pytest.fixture
def make_tree(tmp_path):
    """Make a :class:`Droprd` for a fast config under tmp_path (``sections``
    override keys, as in harness.write_config); all stopped afterwards."""
    trees = []

    def make(sections=None, port=None, peers=None):
        merged = {k: dict(v) for k, v in FAST.items()}
        for section, values in (sections or {}).items():
            merged.setdefault(section, {}).update(values)
        port = port or harness.free_port()
        path = harness.write_config(tmp_path, port=port, sections=merged, peers=peers)
        tree = Droprd(path, port=port, sections=merged, peers=peers)
        trees.append(tree)
        return tree

    yield make
    for tree in trees:
        killed = tree.cleanup()
        assert not killed, f"processes left running: {killed}\n{tree.log_tail()}"
        assert not queues_exist(tree.config.client.spool)


def deadline_wait(predicate, timeout):
    """How long ``predicate`` took to hold (fails after ``timeout``)."""
    t0 = time.monotonic()
    harness.wait_for(predicate, timeout, interval=0.01)
    return time.monotonic() - t0
