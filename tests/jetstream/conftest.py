import pytest

from dropr.bench.cluster import Cluster, missing

pytestmark = pytest.mark.process


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
