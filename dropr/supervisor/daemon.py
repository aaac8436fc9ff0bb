"""Becoming a daemon, and the pidfile that says one is running.

The pidfile is held with an exclusive ``flock`` for the whole life of the
supervisor process. The lock, not the pid written in the file, is the truth:
it dies with the process, so a pidfile left by a killed supervisor is stale
the moment the kernel closes its descriptor, and a reused pid fools nobody.

``droprd start`` double-forks; the daemon reports through a pipe once it has
taken the pidfile and started its workers (or why it could not), and only then
does the command that launched it exit, with the daemon's answer.
"""

import contextlib
import os
import sys
import time

import psutil

from dropr.errors import AlreadyRunning
from dropr.fs import lock_file, try_lock

_READY, _FAILED = "ready", "error"


class Pidfile:
    """The supervisor's pidfile at ``path``; locked by :meth:`acquire` in the
    supervisor process, read by ``droprd`` commands in theirs."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def acquire(self):
        """Lock the pidfile and write our pid; ``AlreadyRunning`` if it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = lock_file(self.path, mode=0o644)
        if fd is None:
            raise AlreadyRunning(_running_message(self.path))
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self):
        """Remove the pidfile, then let go of the lock (clean stop only)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None

    def running_pid(self):
        """The pid of the live supervisor holding this pidfile, else None."""
        return running_pid(self.path)


def alive(pid):
    """``pid`` runs (a zombie has exited: it only waits to be collected, and
    where PID 1 does not reap, it may wait for good)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def running_pid(path, settle=1.0):
    """The pid of the live process holding the pidfile at ``path``, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if try_lock(fd, shared=True):
            return None  # nobody holds it: stale
        # The holder writes its pid right after locking: give it a moment.
        deadline = time.monotonic() + settle
        while True:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if text.isdigit() or time.monotonic() > deadline:
                return int(text) if text.isdigit() else -1
            time.sleep(0.01)
    finally:
        os.close(fd)


def _running_message(path):
    pid = running_pid(path)
    shown = f"pid {pid}" if pid and pid > 0 else "pid unknown"
    return f"already running ({shown}; pidfile {path})"


class Readiness:
    """The daemon's end of the pipe to the ``droprd start`` that launched it."""

    def __init__(self, fd):
        self.fd = fd

    def ready(self, text):
        """Tell the launcher we are up; it prints ``text`` and exits 0."""
        self._send(f"{_READY} {text}")

    def failed(self, text):
        """Tell the launcher we could not start; it prints ``text`` and exits 1."""
        self._send(f"{_FAILED} {text}")

    def _send(self, line):
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
        self.close()

    def close(self):
        """Drop our end (also done in every forked worker)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def daemonize(log_path):
    """Double-fork into a new session with stdin from /dev/null and stdout and
    stderr appended to ``log_path``.

    Returns ``(Readiness, None)`` in the daemon, and ``(None, (ok, text))`` in
    the launching process once the daemon has answered (or died)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    first = os.fork()
    if first:
        os.close(write_end)
        os.waitpid(first, 0)  # the middle process exits at once
        return None, _await_answer(read_end, log_path)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)  # the daemon is no session leader, so it never gets a terminal
    os.chdir("/")
    _redirect(log_path)
    return Readiness(write_end), None


def _await_answer(read_end, log_path):
    with os.fdopen(read_end, "rb") as pipe:
        line = pipe.readline().decode(errors="replace").strip()
    word, _, text = line.partition(" ")
    if word == _READY:
        return True, text
    if word == _FAILED:
        return False, text
    return False, f"droprd died while starting; see {log_path}"


def _redirect(log_path):
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)

