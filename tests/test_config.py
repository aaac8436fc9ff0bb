"""Config validation: every bad key or value is an error naming the file, the
key path and what was expected; the shipped config loads."""

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from dropr import config
from dropr.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_loads_with_every_key_documented():
    cfg = config.load(ROOT / "conf" / "dropr.toml")
    assert cfg.client.spool == ROOT / "var" / "spool" / "client"
    assert cfg.receiver.store == ROOT / "var" / "spool" / "server"
    assert cfg.peers["local"].url == "http://127.0.0.1:8080"
    text = (ROOT / "conf" / "dropr.toml").read_text()
    for name, section in config.SECTIONS.items():
        for field in dataclasses.fields(section):
            if "derived" in field.metadata:
                continue  # set from another key ([workers] metrics from [metrics] bind)
            # A field that is no key of its own holds sub-tables ([receiver.clients.NAME]).
            shown = f"\n{field.name} = " if field.metadata else f"[{name}.{field.name}."
            assert shown in text, f"{field.name} is not in conf/dropr.toml"


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "c.toml").write_text('[client]\nspool = "sp"\n')
    assert config.load(tmp_path / "c.toml").client.spool == tmp_path / "sp"


def test_config_path_falls_back_to_environment(tmp_path, monkeypatch):
    (tmp_path / "env.toml").write_text("[client]\nfsync = false\n")
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "env.toml"))
    assert config.load().client.fsync is False


@pytest.mark.parametrize("data, expected", [
    ({"client": {"fsnyc": True}}, r"\[client\] fsnyc: unknown key \(did you mean 'fsync'\?\)"),
    ({"clinet": {}}, r"clinet: unknown key \(did you mean 'client'\?\)"),
    ({"client": {"fsync": "yes"}}, r"\[client\] fsync: expected true or false, got 'yes'"),
    ({"sender": {"batch_messages": 0}}, r"\[sender\] batch_messages: 0 out of range"),
    ({"sender": {"wait": "1s"}}, r"\[sender\] wait: expected a number"),
    ({"receiver": {"bind": "nowhere"}}, r"\[receiver\] bind: expected HOST:PORT"),
    ({"peers": {"x": {}}}, r"\[peers.x\] url: required"),
    ({"peers": {"x": {"url": "ftp://a"}}}, r"\[peers.x\] url: expected an http"),
    ({"peers": {"a/b": {"url": "http://a"}}}, r"\[peers.a/b\]: bad peer name"),
    ({"peers": {"x": {"url": "http://a", "tiemout": 1}}}, r"\[peers.x\] tiemout: unknown key \(did you mean 'timeout'\?\)"),
    ({"client": []}, r"\[client\] must be a table"),
])
def test_bad_values_name_the_key(data, expected):
    with pytest.raises(ConfigError, match=expected):
        config.from_dict(data)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[client]\nfsync = 3\n")
    with pytest.raises(ConfigError, match=f"^{path}: \\[client\\] fsync"):
        config.load(path)
    path.write_text("[client\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")


INT_KEYS = [("sender", "batch_messages", 1, 100_000), ("workers", "sender", 0, 64),
            ("receiver", "workers", 1, 256), ("client", "notify_max", 0, 1000)]


@given(case=st.sampled_from(INT_KEYS), value=st.integers(-10**9, 10**9))
def test_int_bounds_are_enforced(case, value):
    section, name, lo, hi = case
    if lo <= value <= hi:
        assert getattr(getattr(config.from_dict({section: {name: value}}), section), name) == value
    else:
        with pytest.raises(ConfigError, match=rf"\[{section}\] {name}: {value} out of range"):
            config.from_dict({section: {name: value}})


@given(junk=st.text(min_size=1, max_size=20).filter(lambda k: k not in config.ClientConfig.__dataclass_fields__))
def test_any_unknown_key_is_named(junk):
    with pytest.raises(ConfigError) as e:
        config.from_dict({"client": {junk: 1}})
    assert f"[client] {junk}: unknown key" in str(e.value)


@given(value=st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.booleans()))
def test_wrong_types_are_named(value):
    with pytest.raises(ConfigError, match=r"\[retry\] base: expected a number"):
        config.from_dict({"retry": {"base": value}})


def test_metrics_bind_is_checked_and_runs_the_metrics_worker(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[metrics]\nbind = "127.0.0.1:9464"\n')
    assert config.load(path).workers.metrics == 1
    path.write_text('[metrics]\nbind = ""\n')
    assert config.load(path).workers.metrics == 0
    for bad in ('"9464"', '"127.0.0.1:99999"', '"unix:/tmp/m.sock"', "9464"):
        path.write_text(f"[metrics]\nbind = {bad}\n")
        with pytest.raises(ConfigError, match=r"\[metrics\] bind"):
            config.load(path)
    path.write_text('[metrics]\nport = 9464\n')
    with pytest.raises(ConfigError, match=r"\[metrics\] port: unknown key"):
        config.load(path)
    path.write_text('[workers]\nmetrics = 1\n')
    with pytest.raises(ConfigError, match=r"\[workers\] metrics: unknown key"):
        config.load(path)
