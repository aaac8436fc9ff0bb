"""The processes and disks of a chaos run, and how to break each of them.

- :class:`Daemon`: the real ``droprd`` tree (senders, retry scanner, reaper);
- :class:`ReceiverProcess`: ``dropr receiver`` (gunicorn) in its own process group;
- :class:`Disk`: a small tmpfs that can be filled with a ballast file;
- :class:`Role`: a producer or consumer process of the chaos run itself.

Everything is stopped by pid or process group, never by name.
"""

import contextlib
import os
import signal
import subprocess
import sys

import psutil

from dropr.bench.procs import healthy
from dropr.supervisor import daemon
from dropr.supervisor.daemon import alive
from tests.support import wait

DROPR = [sys.executable, "-m", "dropr.cli"]
DROPRD = [sys.executable, "-m", "dropr.supervisor.cli"]


def wait_for(predicate, timeout, what, interval=0.05):
    """Poll ``predicate`` until truthy; ``RuntimeError`` after ``timeout`` s."""
    return wait.wait_for(predicate, timeout, interval, what, error=RuntimeError)


def title(proc):
    """What ``ps`` shows for a psutil process ('' if it is gone)."""
    try:
        return " ".join(proc.cmdline()).strip()
    except psutil.Error:
        return ""


def kill9(pid):
    """SIGKILL ``pid``; False if it was already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def group_alive(pgid):
    """True while a live (non-zombie) process is in process group ``pgid``."""
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
    return False


class Daemon:
    """The droprd tree of the chaos config; started with ``droprd start``."""

    def __init__(self, config):
        self.config = config

    def _droprd(self, *args, timeout=60):
        return subprocess.run([*DROPRD, "--config", str(self.config.path), *args],
                              capture_output=True, text=True, timeout=timeout)

    def pid(self):
        """The supervisor's pid, or None when it is not running."""
        pid = daemon.running_pid(self.config.supervisor.pidfile, settle=0.5)
        return pid if pid and pid > 0 and alive(pid) else None

    def start(self):
        """``droprd start``; returns once the tree runs."""
        result = self._droprd("start")
        if result.returncode != 0:
            raise RuntimeError(f"droprd start failed: {result.stderr.strip()}")
        return wait_for(self.pid, 20, "droprd to run")

    def ensure(self):
        """Start the tree unless it runs."""
        if self.pid() is None:
            self.start()

    def workers(self, prefix):
        """psutil processes of live workers whose title starts with ``prefix``."""
        pid = self.pid()
        if pid is None:
            return []
        with contextlib.suppress(psutil.Error):
            return [c for c in psutil.Process(pid).children()
                    if title(c).startswith(prefix) and c.status() != psutil.STATUS_ZOMBIE]
        return []

    def kill_supervisor(self):
        """kill -9 the supervisor (its workers follow by their parent-death signal),
        then ``droprd start`` again."""
        pid = self.pid()
        if pid is None:
            return False
        children = [c.pid for c in psutil.Process(pid).children()]
        kill9(pid)
        wait_for(lambda: not any(alive(p) for p in [pid, *children]), 10, "the tree to die")
        self.start()
        return True

    def status(self):
        """``droprd status`` exit code (0: running, 3: stopped)."""
        return self._droprd("status").returncode

    def stop(self):
        """``droprd stop``; kill -9 what is left if it does not stop in time."""
        pid = self.pid()
        if pid is None:
            return
        children = [c.pid for c in psutil.Process(pid).children()]
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._droprd("stop", timeout=40)
        for p in [pid, *children]:
            if alive(p):
                kill9(p)


class ReceiverProcess:
    """``dropr receiver`` (gunicorn master and workers) in its own process group."""

    def __init__(self, config, log_path):
        self.config = config
        self.log_path = log_path
        self.url = "http://" + config.receiver.bind
        self.proc = None

    def start(self, timeout=30):
        """Start it and wait until /v1/health answers 200 (directly, not through the proxy)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*DROPR, "--config", str(self.config.path), "receiver"],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for(self._healthy, timeout, "receiver health")

    def _healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {self.proc.returncode}; see {self.log_path}")
        return healthy(self.url)

    def ensure(self):
        """Start it unless it runs."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def workers(self):
        """The live gunicorn worker processes."""
        with contextlib.suppress(psutil.Error):
            return [c for c in psutil.Process(self.proc.pid).children()
                    if c.status() != psutil.STATUS_ZOMBIE]
        return []

    def kill_master(self):
        """kill -9 the gunicorn master; wait for its workers to notice and go
        (they hold the listening socket), then start a new receiver."""
        pgid = self.proc.pid
        kill9(self.proc.pid)
        self.proc.wait()
        with contextlib.suppress(RuntimeError):
            wait_for(lambda: not group_alive(pgid), 10, "orphaned receiver workers to exit")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.start()

    def stop(self):
        """SIGTERM the process group; SIGKILL it if it lingers."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Disk:
    """A tmpfs of ``size`` bytes mounted at ``path`` (needs root), which
    :meth:`fill` fills to the last byte with a ballast file."""

    def __init__(self, path, size):
        self.path = path
        self.size = size
        self.ballast = path / ".ballast"
        self.mounted = False

    def mount(self):
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs",
                        str(self.path)], check=True)
        self.mounted = True
        return self

    def fill(self):
        """Take every free byte with the ballast file."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            st = os.statvfs(self.path)
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
            for chunk in (1 << 16, 1 << 12):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)

    def free(self):
        """Remove the ballast file."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ballast)

    def unmount(self):
        if self.mounted:
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False


class Role:
    """A producer or the consumer: this script run with a role subcommand."""

    def __init__(self, script, args, log_path):
        self.args = [sys.executable, str(script), *args]
        self.log_path = log_path
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """kill -9, reaped."""
        if self.running():
            kill9(self.proc.pid)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout=20):
        """SIGTERM, then SIGKILL after ``timeout`` s; returns its stdout."""
        if self.proc is None:
            return ""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, _ = self.proc.communicate()
        return out.decode(errors="replace")
