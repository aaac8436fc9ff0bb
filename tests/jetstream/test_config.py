"""The [store] section: the backend's name, the server URLs, the stream's
names, and the duplicate window that must cover the clients' retries."""

import pytest

from dropr import config as config_mod
from dropr.errors import ConfigError
from dropr.store import Store, open_store
from dropr.store.jetstream import JetStreamStore


def load(root="/nonexistent", **sections):
    return config_mod.from_dict({"receiver": {"store": str(root)}, **sections})


def js(**keys):
    return {"backend": "jetstream", **keys}


def test_files_is_the_default_backend_and_open_store_follows_the_config(tmp_path):
    config = load(tmp_path)
    assert config.store.backend == "files"
    assert isinstance(open_store(config), Store)
    config = load(tmp_path, store=js(servers=["nats://10.0.0.1:4222", "tls://10.0.0.2:4222"]))
    assert config.store.servers == ("nats://10.0.0.1:4222", "tls://10.0.0.2:4222")
    assert isinstance(open_store(config), JetStreamStore)  # connects on first use only


@pytest.mark.parametrize("keys, where", [
    ({"backend": "kafka"}, "backend"),
    (js(servers=[]), "servers"),
    (js(servers="nats://127.0.0.1:4222"), "servers"),
    (js(servers=["http://127.0.0.1:4222"]), "servers"),
    (js(servers=["nats://"]), "servers"),
    (js(stream="DROPR.main"), "stream"),
    (js(subject="a b"), "subject"),
    (js(replicas=0), "replicas"),
    (js(replicas=7), "replicas"),
    (js(publish_timeout=0), "publish_timeout"),
    (js(colour="blue"), "colour"),
])
def test_a_bad_store_key_is_a_config_error_naming_it(keys, where):
    with pytest.raises(ConfigError, match=where):
        load(store=keys)


def test_a_duplicate_window_shorter_than_the_clients_max_age_is_refused():
    with pytest.raises(ConfigError, match=r"duplicate_window.*max_age.*allow_short_window"):
        load(store=js(duplicate_window=3600.0), retry={"max_age": 86400.0})
    config = load(store=js(duplicate_window=86400.0), retry={"max_age": 86400.0})
    assert config_mod.short_window_note(config) is None


def test_allow_short_window_lets_it_through_with_a_loud_note():
    config = load(store=js(duplicate_window=3600.0, allow_short_window=True),
                  retry={"max_age": 86400.0})
    note = config_mod.short_window_note(config)
    assert "3600 s" in note and "stored twice" in note


def test_the_window_does_not_matter_on_the_files_backend():
    config = load(store={"duplicate_window": 1.0}, retry={"max_age": 86400.0})
    assert config_mod.short_window_note(config) is None
