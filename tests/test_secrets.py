"""Tokens in the config: long enough to be worth something, and a word in the
log for a token that every user can read (in its token file or in the config
file) or that crosses the network in clear text."""

import logging
import os

import pytest

from dropr import config as config_mod
from dropr.errors import ConfigError

TOKEN = "a-token-of-32-characters-0123456"


def write(tmp_path, text, mode=0o600):
    path = tmp_path / "dropr.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return config_mod.load(path)


@pytest.mark.parametrize("token", ["x", "0123456789a"])
def test_a_short_token_is_refused_without_showing_it(tmp_path, token):
    with pytest.raises(ConfigError, match=r"\[receiver.clients.a\] token: a token of "
                                          rf"{len(token)} characters .* at least 12") as e:
        write(tmp_path, f'[receiver.clients.a]\ntoken = "{token}"\n')
    assert f'"{token}"' not in str(e.value) and f"'{token}'" not in str(e.value)


def test_a_short_token_in_a_token_file_is_refused(tmp_path):
    (tmp_path / "t").write_text("short\n")
    os.chmod(tmp_path / "t", 0o640)
    config = write(tmp_path, f'[peers.p]\nurl = "https://h:1"\ntoken_file = "{tmp_path / "t"}"\n')
    with pytest.raises(ConfigError, match="token_file: the token in .* at least 12"):
        config.token_of(config.peer("p"))


def test_a_token_file_every_user_can_read_is_warned_about_naming_it(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="dropr.config")
    token_file = tmp_path / "web-1.token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o644)
    config = write(tmp_path, f'[receiver.clients.web-1]\ntoken_file = "{token_file}"\n')
    client = config.receiver.clients[0]
    assert config.token_of(client) == TOKEN
    [record] = caplog.records
    assert (f"[receiver.clients.web-1] token_file: {token_file} is readable by every user "
            f"(mode 0644); make it private: chmod o-rwx {token_file}") in record.getMessage()
    caplog.clear()
    os.chmod(token_file, 0o640)  # its group (the service's) may read it
    assert config.token_of(client) == TOKEN and not caplog.records


def test_an_inline_token_in_a_config_every_user_can_read_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="dropr.config")
    config = write(tmp_path, f'[receiver.clients.a]\ntoken = "{TOKEN}"\n', mode=0o644)
    assert config.token_of(config.receiver.clients[0]) == TOKEN
    [record] = caplog.records
    assert str(config.path) in record.getMessage() and "readable by every user" in record.getMessage()
    assert TOKEN not in record.getMessage()
    caplog.clear()
    os.chmod(config.path, 0o640)
    config.token_of(config.receiver.clients[0])
    assert not caplog.records


@pytest.mark.parametrize("url, warned", [
    ("http://receiver.example.org:8080", True),
    ("http://10.0.0.7:8080", True),
    ("https://receiver.example.org:8443", False),
    ("http://127.0.0.1:8080", False),
    ("http://[::1]:8080", False),
    ("http://localhost:8080", False),
])
def test_a_token_over_plain_http_to_another_host_is_warned_about(tmp_path, caplog, url, warned):
    caplog.set_level(logging.WARNING, logger="dropr.config")
    config = write(tmp_path, f'[peers.p]\nurl = "{url}"\ntoken = "{TOKEN}"\n')
    assert config.token_of(config.peer("p")) == TOKEN
    messages = [r.getMessage() for r in caplog.records]
    assert bool(messages) == warned
    if warned:
        assert f"[peers.p] token goes to {url} over plain http://" in messages[0]
