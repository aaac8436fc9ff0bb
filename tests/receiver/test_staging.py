"""Store.stage / publish / discard, the two phases a batch is stored in:
a staged message is invisible until published, and gone once discarded."""

import pytest

from dropr.errors import TooLarge
from dropr.store import Store
from tests.receiver.conftest import files


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "server", fsync=True)


def test_staged_is_invisible_until_published(store):
    staged = store.stage("c", "A", b"body", priority=3, client="h")
    assert (staged.size, files(store.root)) == (4, [f"tmp/{staged.path.name}"])
    assert store.count("c") == 0 and store.channels() == []
    assert store.publish(staged, sync_dir=False) == "stored"
    store.sync(["c"])
    assert files(store.root) == ["queue/c/3.h@A"] and store.get("c", "A").read() == b"body"


def test_discard_leaves_nothing_and_may_be_repeated(store):
    staged = store.stage("c", "A", b"body", priority=3, client="h")
    store.discard(staged)
    store.discard(staged)
    assert files(store.root) == [] and store.channels() == []


def test_publishing_a_duplicate_removes_the_staged_file(store):
    store.put("c", "A", b"first", priority=5, client="h")
    staged = store.stage("c", "A", b"second", priority=5, client="h")
    assert store.publish(staged) == "duplicate"
    assert files(store.root) == ["queue/c/5.h@A"] and store.get("c", "A").read() == b"first"


def test_stage_over_the_limit_leaves_nothing(store):
    with pytest.raises(TooLarge):
        store.stage("c", "A", b"x" * 11, priority=5, client="h", limit=10)
    assert files(store.root) == []


def test_publishing_a_vanished_staged_file_fails_and_publishes_nothing(store):
    """A staged file removed behind the receiver's back (a reaper that judged it
    stale) cannot be published; the error must not loop."""
    store.put("c", "OLD", b"x", priority=5, client="h")
    staged = store.stage("c", "A", b"body", priority=5, client="h")
    staged.path.unlink()
    with pytest.raises(FileNotFoundError):
        store.publish(staged)
    assert files(store.root) == ["queue/c/5.h@OLD"]
