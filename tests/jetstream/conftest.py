import asyncio
import itertools
from pathlib import Path

import pytest

from dropr.bench.cluster import Cluster, missing

HERE = Path(__file__).parent

#: The fixtures here that start nats-server.
SERVERS = {"cluster", "single", "shared_cluster", "stream"}

_streams = itertools.count(1)


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


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory):
    """A 3-node JetStream cluster for the tests that do not stop or kill its
    nodes, started once (an election takes about two seconds) and stopped by
    pid at the end of the session. Each test takes a stream of its own
    (:func:`stream`), so no test sees another's messages."""
    yield from _run(tmp_path_factory.mktemp("nats"), 3)


@pytest.fixture
def stream(shared_cluster):
    """(cluster, store keys): this test's own stream and subject on the
    shared cluster, and its pause bucket, deleted afterwards."""
    n = next(_streams)
    keys = {"backend": "jetstream", "servers": shared_cluster.urls, "replicas": 3,
            "stream": f"T{n}", "subject": f"t{n}"}
    yield shared_cluster, keys
    delete_stream(shared_cluster, keys["stream"])


def manage(cluster, call):
    """Run ``call(js)`` on a JetStream context of ``cluster``; its result."""
    async def run():
        import nats

        nc = await nats.connect(cluster.urls)
        try:
            return await call(nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(run())


def delete_stream(cluster, name):
    """Delete stream ``name`` and its pause bucket, if there."""
    async def delete(js):
        from nats.js.errors import NotFoundError

        for each in (name, f"KV_{name}_PAUSED"):
            try:
                await js.delete_stream(each)
            except NotFoundError:
                pass
    manage(cluster, delete)
