"""What the receiver and the store show to others: failure records as private
as messages, a unix socket that not every local user may open, and answers
that never name the store's path (the log does)."""

import http.client
import os
import socket
import stat
import subprocess

import pytest

from dropr.store import Failures, Store
from tests.receiver.test_disk_floor import mount, receiver_on  # noqa: F401 - fixtures
from tests.receiver.test_limits import post, send
from tests.support import harness

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)  # the usual umask, under which open() makes 0644 files
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_failure_records_are_as_private_as_messages(tmp_path, umask_022):
    store = Store(tmp_path / "server", fsync=False)
    store.put("orders", "ID1", b"secret", priority=5, client="shop")
    [m] = store.claim("orders", "c1")
    assert mode(m.path) == 0o640
    store.retry(m, Failures(1, 0.0, "stderr: password=hunter2"))
    [retry_file] = (tmp_path / "server" / "retry" / "orders").iterdir()
    assert mode(retry_file) == 0o640
    [m] = store.claim("orders", "c1")
    store.bury(m, Failures(2, 0.0, "stderr: password=hunter2"))
    reason = tmp_path / "server" / "dead" / "orders" / (m.path.name + ".reason")
    assert mode(reason) == 0o640 and b"hunter2" in reason.read_bytes()


def _unix_get(path, url):
    conn = http.client.HTTPConnection("localhost", timeout=5)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.settimeout(5)
    conn.sock.connect(str(path))
    try:
        conn.request("GET", url)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.process
def test_a_unix_socket_is_open_to_the_receivers_user_and_group_only(tmp_path):
    sock = tmp_path / "r.sock"
    config = harness.write_config(tmp_path, sections={"receiver": {"bind": f"unix:{sock}",
                                                                   "workers": 1}})
    with open(tmp_path / "receiver.log", "ab") as log:
        proc = subprocess.Popen([*harness.DROPR, "--config", str(config), "receiver"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            assert proc.poll() is None, (tmp_path / "receiver.log").read_text()[-2000:]
            try:
                return _unix_get(sock, "/v1/health") == 200
            except OSError:
                return False
        harness.wait_for(healthy, 15, what="receiver on a unix socket")
        assert stat.S_ISSOCK(os.stat(sock).st_mode) and mode(sock) == 0o770
    finally:
        harness.with_group(proc.pid, 15)
        proc.wait(15)


@root_only
@pytest.mark.process
def test_a_full_disk_is_answered_without_the_stores_path(receiver_on, mount, tmp_path):
    fs = mount("size=1m")
    receiver = receiver_on(fs, min_free_bytes=0, min_free_inodes=0)
    status, answer = send(receiver, post("c", b"x" * (2 << 20)))
    assert (status, answer["error"]["code"]) == (507, "store_full")
    assert str(fs) not in answer["error"]["message"]
    assert "No space left on device" in answer["error"]["message"]
    harness.wait_for(lambda: f"store {fs / 'server'}" in (tmp_path / "receiver.log").read_text(),
                     5, what="the path in the log")


@root_only
@pytest.mark.process
def test_not_ready_is_answered_without_the_stores_path(receiver_on, mount, tmp_path):
    fs = mount("size=4m")
    receiver = receiver_on(fs, min_free_bytes=1 << 20)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    status, body = harness.http_get(receiver.url + "/v1/ready")
    assert status == 503 and b"Read-only file system" in body and str(fs).encode() not in body
    assert f"store {fs / 'server'} is not writable" in (tmp_path / "receiver.log").read_text()
    subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
    (fs / "filler").write_bytes(b"\0" * (3 << 20))
    status, body = harness.http_get(receiver.url + "/v1/ready")
    assert status == 503 and b"min_free_bytes" in body and str(fs).encode() not in body
