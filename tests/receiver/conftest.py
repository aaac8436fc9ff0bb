"""Fixtures for the receiver's HTTP surface: the app on falcon's TestClient
over a real filesystem store in a temporary folder."""

import pytest
from falcon import testing

from dropr import config as config_mod
from dropr.receiver import create_app
from dropr.store import Store
from tests.support import harness


def snapshot(root):
    """Every directory and file under ``root`` with its bytes: a refusal must
    leave this exactly as it was."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def files(root):
    """The relative paths of all files under ``root`` (but the store's ``.format``)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != ".format")


class Ids:
    """A predictable id generator for plain POSTs without an Idempotency-Key."""

    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1
        return f"GEN{self.n:04d}"


@pytest.fixture
def make_client(tmp_path):
    """``make_client(**receiver_keys)`` -> (TestClient, Store) on a store under tmp_path."""
    def make(store=None, **receiver):
        path = harness.write_config(tmp_path, sections={"receiver": receiver})
        config = config_mod.load(path)
        store = store or Store(config.receiver.store, fsync=config.receiver.fsync,
                               clock=lambda: 1700000000.0)
        app = create_app(config, store=store, new_id=Ids())
        return testing.TestClient(app), store
    return make


@pytest.fixture
def client_store(make_client):
    return make_client()
