"""Both server store backends implement the interface written in
:class:`dropr.store.Backend`: every method, with every parameter it names."""

import inspect

import pytest

from dropr.store import Backend, Store
from dropr.store.jetstream import JetStreamStore

METHODS = sorted(name for name, value in vars(Backend).items()
                 if inspect.isfunction(value) and not name.startswith("_"))


def test_the_interface_names_the_methods_the_receiver_and_consumers_call():
    for name in ("stage", "publish", "publish_many", "discard", "sync", "claim", "ack",
                 "release", "retry", "bury", "open_work", "locate"):
        assert name in METHODS


@pytest.mark.parametrize("backend", [Store, JetStreamStore], ids=["files", "jetstream"])
@pytest.mark.parametrize("name", METHODS)
def test_each_backend_takes_every_parameter_of_each_method(backend, name):
    want = inspect.signature(getattr(Backend, name)).parameters
    have = inspect.signature(getattr(backend, name)).parameters
    for param in want.values():
        assert param.name in have, f"{backend.__name__}.{name} lacks {param.name}"
        got = have[param.name]
        assert got.kind == param.kind, f"{backend.__name__}.{name}({param.name}): {got.kind}"
        assert got.default == param.default, f"{backend.__name__}.{name}({param.name}) default"
    extra = [p for p in have.values() if p.name not in want
             and p.default is inspect.Parameter.empty
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not extra, f"{backend.__name__}.{name} requires more: {extra}"
