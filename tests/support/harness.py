"""Shared helpers for tests that run real processes: configs in a temporary
folder, free loopback ports, the receiver under gunicorn, and waiting for a
condition with a deadline (never sleep-and-hope)."""

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import sysv_ipc

from dropr import config as config_mod
from dropr.bench import configfile
from dropr.bench.procs import free_port  # noqa: F401 - the tests' one too
from dropr.ipc import ROLES, queue_key
from tests.support import wait

DROPR = [sys.executable, "-m", "dropr.cli"]


#: The programs tests drive that pip cannot install, and the Debian packages
#: that bring them (.ci/run installs the missing ones).
PROGRAMS = {"curl": "curl", "node": "nodejs", "openssl": "openssl", "php": "php-cli",
            "ps": "procps", "systemd-analyze": "systemd"}


def missing_programs(*programs):
    """Why a test of ``programs`` cannot run here ("" when all are installed)."""
    missing = [p for p in programs if shutil.which(p) is None]
    return "; ".join(f"{p} is not installed (Debian package {PROGRAMS.get(p, p)}; "
                     ".ci/run installs it)" for p in missing)


def needs(*programs):
    """A mark that skips a test, naming the program, when one of ``programs``
    is not installed; the test runs wherever they are."""
    reason = missing_programs(*programs)
    return pytest.mark.skipif(bool(reason), reason=reason)


def require(*programs):
    """In a fixture: skip the tests that use it when one of ``programs`` is missing."""
    reason = missing_programs(*programs)
    if reason:
        pytest.skip(reason)


def require_root(what="mounts a tmpfs"):
    """In a fixture: skip the tests that use it unless run as root."""
    if os.geteuid() != 0:
        pytest.skip(f"{what}: needs root")


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll ``predicate`` until it returns a truthy value; fail (AssertionError)
    after ``timeout`` s."""
    return wait.wait_for(predicate, timeout, interval, what)


#: The tests' keys: no fsync, two receiver workers, and short waits, backoffs
#: and ticks so that a test heals in a fraction of a second.
TEST_KEYS = {
    "client": {"fsync": False},
    "sender": {"wait": 0.2, "peer_backoff_base": 0.2, "peer_backoff_cap": 1.0},
    "retry": {"base": 0.1, "cap": 0.5, "interval": 0.1},
    "reaper": {"interval": 0.2},
    "receiver": {"fsync": False, "workers": 2},
    "supervisor": {"tick": 0.1, "backoff_base": 0.1, "backoff_cap": 1.0},
}


def write_config(root, *, port=None, sections=None, peers=None):
    """Write ``root/dropr.toml`` for a spool and a store under ``root``, with
    :data:`TEST_KEYS` (:mod:`dropr.bench.configfile`); returns its path.

    ``sections`` overrides keys: ``{"sender": {"wait": 0.1}}``. ``peers``
    replaces the default single peer ``local`` on ``port``."""
    keys = {section: dict(values) for section, values in TEST_KEYS.items()}
    for section, values in (sections or {}).items():
        keys.setdefault(section, {}).update(values)
    return configfile.write_config(root, port=port or free_port(), sections=keys,
                                   peers=peers).path


def http_get(url, timeout=2.0, ca_file=None, cert=None):
    """(status, body) of a GET, or (None, None) if nothing answers. An https
    ``url`` is verified against ``ca_file`` (default: the system's CAs);
    ``cert``: (certfile, keyfile) of a client certificate to present."""
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
    if context is not None and cert:
        context.load_cert_chain(*cert)
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, None


class Receiver:
    """``dropr receiver`` (gunicorn) as a real process on loopback."""

    def __init__(self, config_path, log_path=None, *, env=None):
        self.config_path = Path(config_path)
        self.env = env  # the environment of the receiver process (default: ours)
        self.config = config_mod.load(config_path)
        peer = self.config.peers[next(iter(self.config.peers))]
        self.url = peer.url
        self.ca_file = peer.ca_file  # for an https receiver
        self.cert = (peer.certfile, peer.keyfile) if peer.certfile else None  # mutual TLS
        self.log_path = Path(log_path or self.config_path.with_name("receiver.log"))
        self.proc = None

    def start(self, timeout=15.0):
        """Start gunicorn and wait until /v1/health answers 200."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*DROPR, "--config", str(self.config_path), "receiver"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=self.env)
        log.close()

        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"receiver exited with {self.proc.returncode}: "
                                     + self.log_path.read_text()[-3000:])
            return http_get(self.url + "/v1/health", ca_file=self.ca_file,
                            cert=self.cert)[0] == 200
        wait_for(healthy, timeout, what="receiver health")
        return self

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Stop the receiver's process group (master and workers), by pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with_group(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

    def kill(self):
        """SIGKILL the whole receiver (master and workers)."""
        self.stop(signal.SIGKILL)


def with_group(pid, sig):
    """Send ``sig`` to the process group led by ``pid`` (started with a new session)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def remove_queues(spool_root):
    """Remove the SysV queues of a spool, if any are left."""
    for role in ROLES:
        try:
            sysv_ipc.MessageQueue(queue_key(spool_root, role)).remove()
        except sysv_ipc.ExistentialError:
            pass


def run_dropr(config_path, *args, input=None, timeout=60, check=True):
    """Run the ``dropr`` command; returns the CompletedProcess (bytes output)."""
    result = subprocess.run([*DROPR, "--config", str(config_path), *args], input=input,
                            capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"dropr {' '.join(args)} exited {result.returncode}: "
                             f"{result.stderr.decode(errors='replace')}")
    return result


def fork_worker(worker):
    """Run ``worker`` (a dropr.workers.base.Worker) in a forked child, as the
    supervisor does: ``init_process()`` in the child, which never returns. Returns
    the child's pid; stop it with :func:`stop_worker`."""
    pid = os.fork()
    if pid == 0:
        try:
            worker.init_process()
        finally:
            os._exit(99)  # never fall back into the test runner in the child
    return pid


def process_title(pid):
    """What ``ps`` shows as the command line of ``pid`` ('' if it is gone)."""
    result = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
    return result.stdout.strip()


def stop_worker(pid, timeout=1.0, sig=signal.SIGTERM):
    """Send ``sig`` to a forked worker and reap it within ``timeout`` s; returns its
    exit code. SIGKILLs and reaps it (then fails) if it does not exit in time."""
    os.kill(pid, sig)

    def reaped():
        done, status = os.waitpid(pid, os.WNOHANG)
        return done == pid and [os.waitstatus_to_exitcode(status)]
    try:
        return wait_for(reaped, timeout, interval=0.01, what=f"worker {pid} to exit")[0]
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


@contextlib.contextmanager
def hung_listener():
    """A loopback port whose connections are accepted (by the kernel) and never
    answered, as by a hung receiver; yields its ``http://`` URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
