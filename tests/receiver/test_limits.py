"""Limits of the receiver: the free-space floor of the store (unit tests on
its cache, then the real receiver on a small tmpfs), and the JSON nesting
check that runs before meta is parsed."""

import contextlib
import http.client
import io
import json
import os
import socket
import subprocess
import threading
import time
import types

import pytest

from dropr.errors import StoreFull, TooLarge, ValidationError
from dropr.receiver import batch
from dropr.receiver.limits import DiskFloor, check_json_depth
from tests.receiver import forms
from tests.receiver.test_hostile import tree_hash
from tests.support import harness

MiB = 1024 * 1024


class Disk:
    """A statvfs whose free space the test sets, counting its calls."""

    def __init__(self, free):
        self.free, self.calls = free, 0

    def __call__(self, path):
        self.calls += 1
        return types.SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096, f_files=0)


def test_floor_reuses_its_measure_for_half_a_second():
    disk, now = Disk(100 * MiB), [0.0]
    floor = DiskFloor("/store", 64 * MiB, clock=lambda: now[0], statvfs=disk)
    floor.check(10 * MiB)
    disk.free = 10 * MiB
    floor.check(10 * MiB)  # the old figure still holds
    assert disk.calls == 1
    now[0] = 0.5
    with pytest.raises(StoreFull, match="10485760 bytes free; it keeps at least 67108864"):
        floor.check()


def test_floor_counts_the_bytes_announced():
    floor = DiskFloor("/store", 64 * MiB, statvfs=Disk(100 * MiB))
    floor.check(36 * MiB)
    with pytest.raises(StoreFull, match="37748737 bytes are coming"):
        floor.check(36 * MiB + 1)


def test_recheck_measures_again_at_once():
    disk = Disk(100 * MiB)
    floor = DiskFloor("/store", 64 * MiB, clock=lambda: 0.0, statvfs=disk)
    floor.check()
    disk.free = 63 * MiB
    with pytest.raises(StoreFull):
        floor.recheck()
    assert disk.calls == 2


def test_floor_zero_never_measures():
    disk = Disk(0)
    floor = DiskFloor("/store", 0, statvfs=disk)
    floor.check(1 << 40)
    floor.recheck()
    assert disk.calls == 0


@pytest.mark.parametrize("data, ok", [
    (b'{"client": "h", "messages": [{"id": "A"}]}', True),
    (b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[["}', True),        # brackets in a string do not count
    (b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[["}', True),      # nor after an escaped quote
    (b"[" * 9 + b"]" * 9, False),
    (b'{"m": [' + b'{"x": ' * 8 + b"1" + b"}" * 8 + b"]}", False),
    (b"[" * 100_000, True),  # unbalanced: left for the parser to refuse
    (b"[[]" * 100, True),
    (b'{"a": "\\\\", "b": ' + b"[" * 9 + b"]" * 9 + b"}", False),  # "\\" ends its string
    (b'["\\\\\\"' + b"[" * 20 + b'"]', True),  # "\\" then "\"": still in the string
    (b'"' + b'\\"' * 1000 + b"[" * 9 + b"]" * 9, False),  # never closed: what follows counts
])
def test_json_depth_is_checked_without_parsing(data, ok):
    if ok:
        check_json_depth(data, 8)
    else:
        with pytest.raises(ValidationError, match="nested more than 8 levels"):
            check_json_depth(data, 8)


def test_json_counts_are_checked_without_parsing():
    check_json_depth(b'[{}, {}, "a", "b"]', 8, max_containers=3, max_strings=2)
    with pytest.raises(TooLarge, match="more than the 2 arrays and objects"):
        check_json_depth(b'[{}, {}, "[{"]', 8, max_containers=2)
    with pytest.raises(TooLarge, match="more than the 1 strings"):
        check_json_depth(b'["a", "b\\""]', 8, max_strings=1)


def _worst_metas(size):
    """meta bodies of ``size`` bytes that cost a naive reading the most."""
    def fill(unit, head=b'{"client": "a", "messages": [], "x": "', tail=b'"}'):
        return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail
    return {
        # Quadratic for a pattern that skips escapes inside strings.
        "escaped quotes": b'"' + b'\\"' * (size // 2 - 1),
        "backslashes": b'"' + b"\\" * (size - 2) + b'"',
        "quotes": b'"' * size,
        "open brackets": b"[" * size,
        "nested blocks": b"[[[[[[[[[]]]]]]]]]" * (size // 18),
        "empty lists": b"[" + b"[]," * (size // 3 - 1) + b"[]]",
        "small objects": b'{"client":"a","messages":[' + b'{"a":1},' * (size // 8 - 5) + b"{}]}",
        "numbers": b'{"client":"a","messages":[' + b"1," * (size // 2 - 20) + b"1]}",
        "escapes": fill(b"\\u0041"),
        "one string": fill(b"a"),
    }


@pytest.mark.parametrize("name", list(_worst_metas(100)))
def test_the_largest_meta_costs_under_a_second_of_cpu(name):
    """At the largest meta the default limits allow (10,000 messages, about
    5 MB), reading it, valid or not, takes a worker under a second of CPU:
    the request threads of a worker share one interpreter lock."""
    limit = 10_000
    data = _worst_metas(batch.meta_bytes_max(limit))[name]
    part = types.SimpleNamespace(name="meta", content_type="application/json",
                                 stream=io.BytesIO(data))  # as a multipart.Part
    start = time.process_time()
    try:
        batch.read_meta(part, limit)
    except ValidationError:
        pass
    assert time.process_time() - start < 1.0


# -- the real receiver on a small filesystem -------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 24 MiB tmpfs, unmounted afterwards."""
    harness.require_root()
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def small_receiver(tmp_path, small_fs, floor):
    # One worker: each worker process keeps its own figure of the free space.
    receiver = {"store": str(small_fs / "server"), "min_free_bytes": floor, "workers": 1}
    return harness.Receiver(harness.write_config(tmp_path, sections={"receiver": receiver}))


def send(receiver, raw):
    """(status, JSON answer) for raw request bytes. They are sent from a
    thread: the receiver may answer, and close, before it has read them all."""
    port = int(receiver.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sender = threading.Thread(target=_send_all, args=(sock, raw))
        sender.start()
        try:
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status, json.loads(response.read())
        finally:
            sender.join()


def _send_all(sock, raw):
    with contextlib.suppress(OSError):
        sock.sendall(raw)


def post(channel, body, *, length=None, chunked=False):
    head = f"POST /v1/channels/{channel}/messages HTTP/1.1\r\nHost: x\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
        body = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    else:
        head += f"Content-Length: {len(body) if length is None else length}\r\n"
    return head.encode() + b"\r\n" + body


@pytest.mark.process
def test_store_under_its_floor_answers_507_and_stores_nothing(tmp_path, small_fs):
    receiver = small_receiver(tmp_path, small_fs, 12 * MiB).start()
    root = small_fs / "server"
    try:
        assert send(receiver, post("c", b"first"))[0] == 201
        before = tree_hash(root)
        # announced: refused before a byte of the body is read
        status, answer = send(receiver, post("c", b"x" * 100, length=16 * MiB))
        assert (status, answer["error"]["code"]) == (507, "store_full")
        assert "min_free_bytes" in answer["error"]["message"]
        # not announced (chunked): refused once staged, and unstaged
        status, answer = send(receiver, post("c", os.urandom(16 * MiB), chunked=True))
        assert status == 507 and "min_free_bytes" in answer["error"]["message"]
        body, _ = forms.batch([("B1", "c", 5, b"x" * 100)])
        batch = (f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: {forms.CONTENT_TYPE}\r\n"
                 f"Content-Length: {16 * MiB}\r\n\r\n").encode() + body
        assert send(receiver, batch)[0] == 507
        assert tree_hash(root) == before
        # the disk fills up from elsewhere: small uploads are refused too, until it drains
        (small_fs / "filler").write_bytes(b"\0" * 13 * MiB)
        # (until its figure is renewed, within half a second, the receiver takes them)
        harness.wait_for(lambda: send(receiver, post("c", b"small"))[0] == 507, 10,
                         what="the receiver to see the disk under its floor")
        before = tree_hash(root)
        assert send(receiver, post("c", b"small"))[0] == 507
        assert tree_hash(root) == before
        (small_fs / "filler").unlink()
        harness.wait_for(lambda: send(receiver, post("c", b"small"))[0] == 201, 10,
                         what="the receiver to accept again")
    finally:
        receiver.stop()
        harness.remove_queues(tmp_path / "client")


@pytest.mark.process
def test_disk_full_mid_batch_without_a_floor_is_507_and_leaves_nothing(tmp_path, small_fs):
    receiver = small_receiver(tmp_path, small_fs, 0).start()
    root = small_fs / "server"
    try:
        messages = [(f"M{i}", "c", 5, os.urandom(6 * MiB)) for i in range(5)]  # 30 MiB > 24
        body, _ = forms.batch(messages)
        before = tree_hash(root)
        status, answer = send(receiver, (
            f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: {forms.CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        assert (status, answer["error"]["code"]) == (507, "store_full")
        assert tree_hash(root) == before
    finally:
        receiver.stop()
        harness.remove_queues(tmp_path / "client")
