"""The one record per worker kind (dropr/workers/kinds.py): names as ``ps``
shows them, the order of ``droprd status``, and agreement with the config and
with the worker classes."""

import dataclasses

import pytest

from dropr import config as config_mod
from dropr.workers import kinds
from tests.support import harness


def test_names_and_titles_are_spelled_as_ps_shows_them():
    assert kinds.kind("sender").name_of(2) == "sender 2"
    assert kinds.kind("sender").title(2) == "dropr: sender 2"
    assert [k.title() for k in kinds.KINDS[1:]] == [
        "dropr: retry-scanner", "dropr: reaper", "dropr: receiver", "dropr: legacy-spool",
        "dropr: metrics"]


@pytest.mark.parametrize(("typed", "name"), [
    ("sender 2", "sender 2"), ("sender-2", "sender 2"), (" sender   12 ", "sender 12"),
    ("retry-scanner", "retry-scanner"), ("reaper-1", "reaper-1"), ("nobody-3", "nobody-3"),
])
def test_a_typed_name_is_spelled_as_ps_shows_it(typed, name):
    assert kinds.canonical_name(typed) == name


def test_every_workers_key_has_one_kind_and_every_kind_a_config_section(tmp_path):
    keys = [f.name for f in dataclasses.fields(config_mod.WorkersConfig)]
    assert sorted(k.key for k in kinds.KINDS) == sorted(keys)
    assert [k.order for k in kinds.KINDS] == sorted({k.order for k in kinds.KINDS})
    config = config_mod.load(harness.write_config(tmp_path, port=8999))
    for section in kinds.WORKER_SECTIONS:
        assert dataclasses.is_dataclass(getattr(config, section)), section


def test_each_kind_is_run_by_a_class_of_that_kind():
    for k in kinds.KINDS:
        assert k.shell_class().kind == k.key


def test_silence_limit_is_the_heartbeat_timeout_unless_a_step_takes_longer(tmp_path):
    config = config_mod.load(harness.write_config(tmp_path, port=8999, sections={
        "supervisor": {"heartbeat_timeout": 5.0}}, peers={
        "slow": {"url": "http://127.0.0.1:8999", "connect_timeout": 2.0, "timeout": 60.0}}))
    assert kinds.kind("reaper").silence_limit(config) == 5.0
    assert kinds.kind("sender").silence_limit(config) >= 62.0
