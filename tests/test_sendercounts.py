"""The senders' count files for droprd's metrics (dropr/sender/counts.py): summed,
and folded into one without losing or doubling a count, even when the fold
is interrupted."""

import os

import pytest

from dropr.sender import counts as sendercounts


def write(folder, name, counts):
    sendercounts._write(str(folder / name), counts)


@pytest.fixture
def folder(tmp_path):
    f = tmp_path / "counts"
    f.mkdir()
    write(f, "counter_101.db", {("local", "stored"): 5.0, ("local", "dead"): 1.0})
    write(f, "counter_102.db", {("local", "stored"): 7.0})
    write(f, "counter_103.db", {("other", "deferred"): 2.0})  # still running
    write(f, sendercounts.ARCHIVE, {("local", "stored"): 100.0})
    return f


EXPECTED = {("local", "stored"): 112.0, ("local", "dead"): 1.0, ("other", "deferred"): 2.0}


def alive(pid):
    return pid == 103


def test_folding_exited_senders_keeps_every_count(folder):
    assert sendercounts.totals(folder) == EXPECTED
    assert sendercounts.compact(folder, at=3, alive=alive) == 0  # only two have exited
    assert sendercounts.compact(folder, at=2, alive=alive) == 2
    assert sorted(os.listdir(folder)) == ["counter_103.db", sendercounts.ARCHIVE]
    assert sendercounts.totals(folder) == EXPECTED


def test_a_fold_interrupted_before_its_commit_is_undone(folder):
    fold = folder / sendercounts.FOLD
    fold.mkdir()
    os.rename(folder / sendercounts.ARCHIVE, fold / sendercounts.ARCHIVE)
    os.rename(folder / "counter_101.db", fold / "counter_101.db")  # killed here
    sendercounts.compact(folder, at=99, alive=alive)
    assert not fold.exists()
    assert sendercounts.totals(folder) == EXPECTED


def test_a_fold_interrupted_after_its_commit_is_finished(folder):
    fold = folder / sendercounts.FOLD
    fold.mkdir()
    for name in (sendercounts.ARCHIVE, "counter_101.db", "counter_102.db"):
        os.rename(folder / name, fold / name)
    write(folder, sendercounts.ARCHIVE, {("local", "stored"): 112.0, ("local", "dead"): 1.0})
    sendercounts.compact(folder, at=99, alive=alive)  # killed after the commit rename
    assert not fold.exists()
    assert sendercounts.totals(folder) == EXPECTED


def test_a_fold_interrupted_before_it_moved_anything_changes_nothing(folder):
    (folder / sendercounts.FOLD).mkdir()
    sendercounts.compact(folder, at=99, alive=alive)
    assert sendercounts.totals(folder) == EXPECTED
