"""The store's floors count what messages take on disk, on a real small
tmpfs under the real receiver: a block and a header line per message beyond
its bytes (``min_free_bytes``), and an inode each (``min_free_inodes``).
Needs root (mounts)."""

import os
import subprocess

import pytest

from tests.receiver import forms
from tests.receiver.test_hostile import tree_hash
from tests.receiver.test_limits import send
from tests.support import harness

pytestmark = [pytest.mark.process,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")]

MiB = 1024 * 1024


@pytest.fixture
def mount(tmp_path):
    """``mount(options)``: a tmpfs under tmp_path, unmounted afterwards."""
    mounted = []

    def make(options):
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path
    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def receiver_on(tmp_path):
    """``receiver_on(fs, **receiver_keys)``: a one-worker receiver (one figure
    of the free space) storing on ``fs``, stopped afterwards."""
    started = []

    def start(fs, **keys):
        receiver = {"store": str(fs / "server"), "workers": 1, **keys}
        path = harness.write_config(tmp_path, sections={"receiver": receiver})
        started.append(harness.Receiver(path).start())
        return started[-1]
    yield start
    for receiver in started:
        receiver.stop()
    harness.remove_queues(tmp_path / "client")


def batch_request(messages):
    body, _ = forms.batch(messages)
    head = (f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: {forms.CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def empty(n, prefix="E"):
    return [(f"{prefix}{i:05d}", "c", 5, b"") for i in range(n)]


def test_empty_messages_count_with_the_blocks_they_take(receiver_on, mount):
    fs = mount("size=12m")
    receiver = receiver_on(fs, min_free_bytes=4 * MiB, min_free_inodes=0)
    root = fs / "server"
    status, answer = send(receiver, batch_request(empty(200, "S")))
    assert status == 200 and set(r["status"] for r in answer["results"].values()) == {"stored"}
    before = tree_hash(root)
    # ~300 KB on the wire, but each message takes a 4 KiB block: ~9 MB on disk.
    raw = batch_request(empty(2000))
    assert len(raw) < 400_000
    status, answer = send(receiver, raw)
    assert (status, answer["error"]["code"]) == (507, "store_full")
    assert "for 2000 messages" in answer["error"]["message"]
    assert tree_hash(root) == before
    st = os.statvfs(fs)
    assert st.f_bavail * st.f_frsize >= 4 * MiB


def test_free_inodes_have_a_floor(receiver_on, mount):
    fs = mount("size=64m,nr_inodes=600")
    receiver = receiver_on(fs, min_free_bytes=0, min_free_inodes=100)
    root = fs / "server"
    status, _ = send(receiver, batch_request(empty(100, "S")))
    assert status == 200
    before = tree_hash(root)
    status, answer = send(receiver, batch_request(empty(450)))
    assert (status, answer["error"]["code"]) == (507, "store_full")
    assert "min_free_inodes" in answer["error"]["message"]
    assert tree_hash(root) == before and os.statvfs(fs).f_favail >= 100
    # Filled from elsewhere: not ready, and plain POSTs are refused too.
    filler = fs / "filler"
    filler.mkdir()
    for i in range(os.statvfs(fs).f_favail - 50):
        (filler / str(i)).touch()
    status, body = harness.http_get(receiver.url + "/v1/ready")
    assert status == 503 and b"min_free_inodes" in body
    raw = b"POST /v1/channels/c/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
    # (within half a second, while the receiver's figure is renewed, it may take one)
    harness.wait_for(lambda: send(receiver, raw)[0] == 507, 5, what="plain POST refused")
    before = tree_hash(root)
    status, answer = send(receiver, raw)
    assert status == 507 and "min_free_inodes" in answer["error"]["message"]
    assert tree_hash(root) == before
