"""Fixtures shared by all tests: a config in a temporary folder, and a real
receiver under gunicorn on a free loopback port, stopped by pid afterwards."""

import pytest

from tests import harness


@pytest.fixture
def config_path(tmp_path):
    """A dropr.toml for a spool and store under tmp_path; SysV queues removed after."""
    path = harness.write_config(tmp_path)
    yield path
    harness.remove_queues(tmp_path / "client")


@pytest.fixture
def receiver(config_path):
    """The real receiver (gunicorn) for ``config_path``, running."""
    r = harness.Receiver(config_path).start()
    yield r
    r.stop()
