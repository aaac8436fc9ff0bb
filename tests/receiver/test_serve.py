"""The receiver as real processes: gunicorn on a free loopback port, reached
by the real curl binary and by pycurl, seen in ``ps``."""

import io
import json
import os
import signal
import subprocess
import sys

import psutil
import pycurl
import pytest
import setproctitle

from dropr import config as config_mod
from dropr.receiver import serve
from dropr.receiver.worker import ThreadWorker
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One receiver (2 workers) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("receiver")
    receiver = harness.Receiver(harness.write_config(root)).start()
    yield receiver
    receiver.stop()
    harness.remove_queues(root / "client")


def curl(*args):
    """(status, parsed JSON body) of the real curl binary."""
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True,
                         timeout=30, check=True).stdout
    body, _, status = out.rpartition(b"\n")
    return int(status), json.loads(body)


def store_of(receiver):
    return Store(receiver.config.receiver.store, fsync=False)


def ps_titles():
    """{pid: args} as ``ps -eo pid,args`` shows them."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True,
                         check=True).stdout
    rows = (line.strip().split(None, 1) for line in out.splitlines()[1:])
    return {int(r[0]): r[1] if len(r) > 1 else "" for r in rows}


@harness.needs('ps')
def test_titles_in_ps(running):
    master = running.proc.pid

    def titled():
        workers = [c.pid for c in psutil.Process(master).children()]
        titles = ps_titles()
        return (len(workers) == 2 and titles.get(master) == "dropr: receiver"
                and all(titles.get(w) == "dropr: receiver worker" for w in workers))
    harness.wait_for(titled, 10, what="receiver titles in ps")


def test_start_is_logged_with_bind_and_store(running):
    log = running.log_path.read_text()
    assert running.config.receiver.bind in log and str(running.config.receiver.store) in log


@harness.needs('curl')
def test_curl_post_is_stored_identical(running, tmp_path):
    data = os.urandom(1024 * 1024 + 7)
    (tmp_path / "body").write_bytes(data)
    url = running.url + "/v1/channels/from-curl/messages"
    status, answer = curl("--data-binary", f"@{tmp_path / 'body'}", "-H", "Idempotency-Key: CURL1",
                          "-H", "Dropr-Priority: 2", url)
    assert (status, answer) == (201, {"id": "CURL1", "channel": "from-curl", "status": "stored"})
    m = store_of(running).get("from-curl", "CURL1")
    assert (m.read(), m.priority, m.client) == (data, 2, "local")
    # chunked: no Content-Length at all
    status, answer = curl("--data-binary", f"@{tmp_path / 'body'}", "-H", "Idempotency-Key: CURL2",
                          "-H", "Transfer-Encoding: chunked", url)
    assert (status, answer["status"]) == (201, "stored")
    assert store_of(running).get("from-curl", "CURL2").read() == data
    status, answer = curl("--data-binary", f"@{tmp_path / 'body'}", "-H", "Idempotency-Key: CURL1",
                          "-H", "Dropr-Priority: 2", url)
    assert (status, answer["status"]) == (200, "duplicate")


@harness.needs('curl')
def test_curl_batch_is_stored(running, tmp_path):
    bodies = {"CB1": os.urandom(3000), "CB2": b""}
    meta = {"client": "curl-host", "messages": [
        {"id": k, "channel": "batch", "priority": 5, "size": len(v)} for k, v in bodies.items()]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    args = ["-F", f"meta=<{tmp_path / 'meta.json'};type=application/json"]
    for mid, body in bodies.items():
        (tmp_path / mid).write_bytes(body)
        args += ["-F", f"{mid}=@{tmp_path / mid};filename={mid};type=application/octet-stream"]
    status, answer = curl(*args, running.url + "/v1/batch")
    assert (status, answer) == (200, {"results": {k: {"status": "stored"} for k in bodies}})
    for mid, body in bodies.items():
        m = store_of(running).get("batch", mid)
        assert (m.read(), m.client) == (body, "local")  # meta's client is not trusted


def test_connection_is_kept_alive(running):
    handle = pycurl.Curl()
    try:
        handle.setopt(pycurl.URL, running.url + "/v1/health")
        for attempt in range(3):
            buf = io.BytesIO()
            handle.setopt(pycurl.WRITEDATA, buf)
            handle.perform()
            assert handle.getinfo(pycurl.RESPONSE_CODE) == 200
            assert handle.getinfo(pycurl.NUM_CONNECTS) == (1 if attempt == 0 else 0)
    finally:
        handle.close()


def test_sigterm_stops_master_and_workers_cleanly(receiver):
    workers = psutil.Process(receiver.proc.pid).children()
    os.kill(receiver.proc.pid, signal.SIGTERM)  # the master alone: it stops its workers
    assert receiver.proc.wait(15) == 0
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []


def test_settings_come_from_the_config_alone(config_path):
    config = config_mod.load(config_path)
    title, handler = setproctitle.getproctitle(), signal.getsignal(signal.SIGTERM)
    app = serve.Application(config)
    cfg = app.cfg
    assert cfg.bind == [config.receiver.bind] and cfg.workers == 2
    assert cfg.worker_class is ThreadWorker and cfg.threads > 1  # gthread, JSON refusals
    assert cfg.timeout == 60 and 0 < cfg.graceful_timeout < config.supervisor.stop_timeout
    assert cfg.accesslog is None and cfg.errorlog == "-"
    assert cfg.control_socket_disable and not cfg.preload_app
    # built without side effects: no title, no signal handlers
    assert setproctitle.getproctitle() == title and signal.getsignal(signal.SIGTERM) == handler


def _python(code):
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", serve.STOP_SIGNALS)
@pytest.mark.parametrize("when", ["before post_fork", "after post_fork"])
def test_a_stop_that_comes_while_a_worker_boots_ends_it(sig, when):
    # A worker is forked with the master's handlers, which only queue a
    # signal for the master's loop. The hooks block the stop signals across
    # the fork and give the worker its own way out: a stop sent at any moment
    # before the worker's own handlers ends it, instead of the master waiting
    # its whole graceful_timeout for it.
    child = _python(
        "import os, signal, time\n"
        "from dropr.receiver import serve\n"
        "for s in serve.STOP_SIGNALS: signal.signal(s, lambda *a: None)  # the master's\n"
        "serve.pre_fork(None, None)  # and what the child inherits of the master's mask\n"
        "print('forked', flush=True)\n"
        f"{'input()' if when == 'before post_fork' else ''}\n"
        "serve.post_fork(None, None)\n"
        "print('booting', flush=True)\n"
        "time.sleep(30)\n")
    try:
        assert child.stdout.readline() == "forked\n"
        if when == "before post_fork":
            child.send_signal(sig)  # blocked until post_fork, not lost to the master's
            child.stdin.write("\n")
            child.stdin.flush()
        else:
            assert child.stdout.readline() == "booting\n"
            child.send_signal(sig)
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_master_has_the_stop_signals_unblocked_after_each_fork():
    child = _python(
        "import os, signal\n"
        "from dropr.receiver import serve\n"
        "for _ in range(2):\n"
        "    serve.pre_fork(None, None)\n"
        "    pid = os.fork()\n"
        "    if pid == 0: os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])\n"
        "    print(sorted(int(s) for s in set(serve.STOP_SIGNALS) & blocked))\n")
    assert child.communicate(timeout=30)[0] == "[]\n[]\n"
