"""Durability defects, each caused for real where it can be: a disk whose
write-back fails (tests/support/failing_disk.py), a folder made by another process
at the worst moment, an OS crash's lost directory entries (see also
tests/test_crash_states.py, which builds every such state)."""

import collections
import errno
import os
import stat
import subprocess

import pytest
from falcon import testing

import dropr.fs
import dropr.store.files.intake
from dropr import config as config_mod
from dropr.errors import StoreFull
from dropr.receiver import create_app
from dropr.spool import Spool, SpoolName
from dropr.store import DUPLICATE, STORED, Store, Failures
from tests.receiver import forms
from tests.support import harness
from tests.support.crashrecord import Recorder
from tests.support.failing_disk import failing_disk

BODY = os.urandom(256 << 10)  # new blocks to write back: the failing disk refuses them


def drop_caches():
    """Evict clean pages and unused inodes, as memory pressure would."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def queued(store, channel):
    return sorted(p.name for p in (store.root / "queue" / channel).iterdir())


@pytest.mark.process
def test_a_batch_is_not_stored_when_write_back_failed_and_another_process_saw_it_first(tmp_path):
    with failing_disk(tmp_path / "disk") as disk:
        store = Store(disk.root / "store", fsync=True)
        assert store.put("c", "OLD", b"made while it worked", priority=5, client="h") == STORED
        disk.fail()
        staged = collections.deque()
        for mid in ("A", "B", "C"):
            staged.append(store.stage("c", mid, BODY, priority=5, client="h", batch=staged))
        # Another receiver worker's syncfs (here: sync -f) meets the error first.
        assert disk.sync_elsewhere().returncode != 0
        with pytest.raises((OSError, StoreFull)):
            store.publish_many(staged)
        for s in staged:
            store.discard(s)
        assert queued(store, "c") == ["5.h@OLD"]


@pytest.mark.process
def test_a_message_is_not_stored_when_its_write_back_failed_and_its_inode_left_the_cache(tmp_path):
    with failing_disk(tmp_path / "disk") as disk:
        store = Store(disk.root / "store", fsync=True)
        assert store.put("c", "OLD", b"made while it worked", priority=5, client="h") == STORED
        disk.fail()
        staged = store.stage("c", "A", BODY, priority=5, client="h")
        disk.sync_elsewhere()
        drop_caches()  # without a descriptor held open, the error goes with the inode
        with pytest.raises((OSError, StoreFull)):
            store.publish(staged)
        assert queued(store, "c") == ["5.h@OLD"]


@pytest.mark.process
def test_a_new_channel_made_by_two_workers_at_once_stores_both(tmp_path, monkeypatch):
    """Worker A's link fails (no folder yet); worker B makes the folder before A
    looks. The interleaving is forced: B is a real mkdir in another process,
    run right after A's link fails."""
    store = Store(tmp_path / "server", fsync=True)
    real_link = os.link

    def link(src, dst, **kwargs):
        try:
            return real_link(src, dst, **kwargs)
        except FileNotFoundError:
            subprocess.run(["mkdir", "-p", os.path.dirname(dst)], check=True)
            raise

    monkeypatch.setattr(os, "link", link)
    assert store.put("new", "A", b"a", priority=5, client="h") == STORED
    staged = collections.deque([store.stage("newer", "B", b"b", priority=5, client="h")])
    assert store.publish_many(staged) == [STORED]
    assert queued(store, "new") == ["5.h@A"] and queued(store, "newer") == ["5.h@B"]


def test_a_message_sent_again_after_a_consumer_buried_it_is_a_duplicate(tmp_path):
    store = Store(tmp_path / "server", fsync=True)
    assert store.put("c", "A", b"a", priority=5, client="h") == STORED
    (message,) = store.claim("c", "worker")
    store.bury(message, Failures(3, 0.0, "exit 1"))
    # The client's move to sent/ was undone by its OS crash: it sends A again.
    assert store.put("c", "A", b"a", priority=5, client="h") == DUPLICATE
    staged = collections.deque([store.stage("c", "A", b"a", priority=5, client="h")])
    assert store.publish_many(staged) == [DUPLICATE]
    assert store.count("c") == 0 and store.count("c", "dead") == 1


def test_put_whose_queue_sync_fails_leaves_nothing_to_deliver(tmp_path, monkeypatch):
    """fsync(2) of the spool's queue/ fails (an I/O error a test cannot cause on a
    directory alone, injected here at os.fsync): put() raises and takes the
    message back out, so the caller's retry does not make a second message."""
    spool = Spool(tmp_path / "client", fsync=True).create()
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        spool.put(b"body", SpoolName(5, "A", "local", "c"))
    assert spool.count("queue") == 0 and os.listdir(spool.dirs["tmp"]) == []


@pytest.mark.parametrize("release, reports", [("5.7.19", False), ("5.8.0-63-generic", True),
                                              ("6.18.44-fc", True), ("weird", False)])
def test_syncfs_is_trusted_only_on_kernels_that_report_its_errors(release, reports):
    assert dropr.fs.kernel_at_least(5, 8, release) is reports


@pytest.mark.parametrize("reports", [True, False])
def test_a_batch_is_flushed_by_one_syncfs_only_where_the_kernel_reports_its_errors(
        tmp_path, monkeypatch, reports):
    monkeypatch.setattr(dropr.store.files.intake, "SYNCFS_REPORTS_ERRORS", reports)
    store = Store(tmp_path / "server", fsync=True)
    with Recorder(store.root) as rec:
        staged = collections.deque()
        for mid in ("A", "B", "C"):
            staged.append(store.stage("c", mid, b"body", priority=5, client="h", batch=staged))
        held = [s.fd is not None for s in staged]
        assert store.publish_many(staged) == [STORED] * 3
    kinds = [op.kind for op in rec.ops]
    if reports:  # the first holds the descriptor its syncfs goes through
        assert held == [True, False, False]
        assert kinds.count("syncfs") == 1 and kinds.count("fsync") == 0
    else:  # each fsync-ed as it is staged, through the descriptor that wrote it
        assert held == [False, False, False]
        assert kinds.count("syncfs") == 0 and kinds.count("fsync") == 3
        assert kinds.index("fsync") < kinds.index("create", 2)


class SyncedElsewhereFirst(Store):
    """The store of one receiver worker, while another worker's syncfs (here:
    ``sync -f``) runs between this batch's writes and its flush."""

    def __init__(self, root, disk):
        super().__init__(root, fsync=True)
        self.disk = disk

    def publish_many(self, staged):
        self.disk.sync_elsewhere()
        return super().publish_many(staged)


@pytest.mark.process
def test_the_receiver_answers_an_error_not_stored_when_write_back_failed(tmp_path):
    with failing_disk(tmp_path / "disk") as disk:
        store = SyncedElsewhereFirst(disk.root / "store", disk)
        assert store.put("c", "OLD", b"made while it worked", priority=5, client="h") == STORED
        path = harness.write_config(tmp_path, sections={"receiver": {"fsync": True,
                                                                    "min_free_bytes": 0}})
        app = testing.TestClient(create_app(config_mod.load(path), store=store))
        disk.fail()
        body, _ = forms.batch([(mid, "c", 5, BODY) for mid in ("A", "B", "C")])
        r = app.simulate_post("/v1/batch", body=body, content_type=forms.CONTENT_TYPE)
        assert r.status_code in (500, 507), r.text
        assert "results" not in r.json
        assert queued(store, "c") == ["5.h@OLD"]
