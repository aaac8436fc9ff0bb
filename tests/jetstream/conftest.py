from pathlib import Path

import pytest

from dropr.bench.cluster import Cluster, missing

HERE = Path(__file__).parent

#: The fixtures here that start nats-server.
SERVERS = {"cluster", "single"}


def pytest_collection_modifyitems(items):
    """A test here that uses a nats-server fixture is marked ``process`` (a
    conftest's own pytestmark would mark nothing); the JetStream tests of
    config alone stay in the fast layer."""
    for item in items:
        if item.path.is_relative_to(HERE) and SERVERS & set(item.fixturenames):
            item.add_marker(pytest.mark.process)


def _run(root, size):
    if missing():  # both come with the test extra: pip install -e '.[test]'
        pytest.skip(missing())
    c = Cluster(root, size)
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def cluster(tmp_path):
    """A 3-node JetStream cluster on loopback, stopped by pid afterwards."""
    yield from _run(tmp_path / "nats", 3)


@pytest.fixture
def single(tmp_path):
    """One JetStream server on its own (for tests that need no replicas)."""
    yield from _run(tmp_path / "nats", 1)
