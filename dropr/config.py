"""Configuration: ``conf/dropr.toml`` loaded once into one frozen, typed object.

Every section is a frozen dataclass whose fields carry their type, bounds and
default; :func:`load` checks the file against them and raises
:class:`~dropr.errors.ConfigError` naming the file, the key path and what was
expected, with a close spelling suggested for an unknown key. Relative paths
resolve against the folder of the config file, so a config works from any
working directory.
"""

import dataclasses
import difflib
import os
import socket
import tomllib
import types
from pathlib import Path

from dropr import names
from dropr.errors import ConfigError, ValidationError

DEFAULT_PATH = "conf/dropr.toml"
ENV_VAR = "DROPR_CONFIG"
MiB = 1024 * 1024


def key(default, lo=None, hi=None, *, kind=None):
    """A config key with its default and inclusive bounds (``None``: unbounded)."""
    return dataclasses.field(default=default, metadata={"lo": lo, "hi": hi, "kind": kind})


def _default_client_name():
    host = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "-" for c in host)
    return cleaned.strip("-_")[: names.NAME_MAX] or "client"


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """[client]: the producer side and its spool."""

    spool: Path = key("var/spool/client", kind="path")
    fsync: bool = key(True)
    name: str = key("", kind="name")
    notify_max: int = key(4, 0, 1000)


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """[peers.NAME]: one receiver that messages can be addressed to."""

    name: str = ""
    url: str = key("", kind="url")
    connect_timeout: float = key(5.0, 0.1, 300.0)
    timeout: float = key(60.0, 0.1, 86400.0)


@dataclasses.dataclass(frozen=True)
class SenderConfig:
    """[sender]: how the sender workers batch and wait."""

    batch_messages: int = key(500, 1, 100_000)
    batch_bytes: int = key(16 * MiB, 1, 1 << 40)
    wait: float = key(1.0, 0.01, 3600.0)
    sent_retention: float = key(0.0, 0.0)
    peer_backoff_base: float = key(1.0, 0.0, 3600.0)
    peer_backoff_cap: float = key(60.0, 0.0, 86400.0)


@dataclasses.dataclass(frozen=True)
class RetryConfig:
    """[retry]: per-message backoff of deferred messages and their expiry."""

    base: float = key(1.0, 0.0, 86400.0)
    factor: float = key(2.0, 1.0, 100.0)
    cap: float = key(300.0, 0.0, 7 * 86400.0)
    jitter: float = key(0.2, 0.0, 1.0)
    max_age: float = key(7 * 86400.0, 1.0)
    interval: float = key(1.0, 0.01, 3600.0)


@dataclasses.dataclass(frozen=True)
class ReaperConfig:
    """[reaper]: clean-up of old files on both sides."""

    interval: float = key(10.0, 0.01, 86400.0)
    tmp_max_age: float = key(3600.0, 1.0)
    done_retention: float = key(7 * 86400.0, 0.0)


@dataclasses.dataclass(frozen=True)
class ReceiverConfig:
    """[receiver]: the HTTP receiver and the server store it writes."""

    bind: str = key("127.0.0.1:8080", kind="bind")
    store: Path = key("var/spool/server", kind="path")
    fsync: bool = key(True)
    workers: int = key(2, 1, 256)
    timeout: float = key(60.0, 1.0, 86400.0)
    max_message_bytes: int = key(64 * MiB, 0)
    max_batch_messages: int = key(10_000, 1)
    max_batch_bytes: int = key(1024 * MiB, 1)


@dataclasses.dataclass(frozen=True)
class WorkersConfig:
    """[workers]: how many processes of each kind the supervisor runs."""

    sender: int = key(2, 0, 64)
    retry_scanner: int = key(1, 0, 1)
    reaper: int = key(1, 0, 1)
    receiver: int = key(0, 0, 1)


@dataclasses.dataclass(frozen=True)
class SupervisorConfig:
    """[supervisor]: the angel's restart policy, health limits and files."""

    pidfile: Path = key("var/run/droprd.pid", kind="path")
    status_file: Path = key("var/run/droprd.status.json", kind="path")
    log_file: Path = key("var/log/droprd.log", kind="path")
    log_level: str = key("info", kind="level")
    tick: float = key(0.5, 0.01, 60.0)
    backoff_base: float = key(0.5, 0.0, 3600.0)
    backoff_factor: float = key(2.0, 1.0, 100.0)
    backoff_cap: float = key(30.0, 0.0, 86400.0)
    backoff_reset: float = key(30.0, 0.0, 86400.0)
    max_restarts: int = key(5, 0)
    restart_window: float = key(60.0, 0.0)
    heartbeat_timeout: float = key(30.0, 0.1, 86400.0)
    kill_timeout: float = key(5.0, 0.0, 3600.0)
    stop_timeout: float = key(10.0, 0.0, 3600.0)
    max_rss: int = key(512, 0)
    max_messages_per_life: int = key(10_000, 0)
    recycle_jitter: float = key(0.1, 0.0, 1.0)
    test_crash: str = key("")


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration; built once by :func:`load` and passed down."""

    path: Path
    client: ClientConfig
    peers: types.MappingProxyType
    sender: SenderConfig
    retry: RetryConfig
    reaper: ReaperConfig
    receiver: ReceiverConfig
    workers: WorkersConfig
    supervisor: SupervisorConfig

    def peer(self, name):
        """The :class:`PeerConfig` called ``name``; ``UnknownPeer`` if none."""
        from dropr.errors import UnknownPeer

        try:
            return self.peers[name]
        except KeyError:
            known = ", ".join(sorted(self.peers)) or "none configured"
            raise UnknownPeer(f"unknown peer {name!r} (known: {known})") from None


SECTIONS = {
    "client": ClientConfig,
    "sender": SenderConfig,
    "retry": RetryConfig,
    "reaper": ReaperConfig,
    "receiver": ReceiverConfig,
    "workers": WorkersConfig,
    "supervisor": SupervisorConfig,
}


def resolve_path(path=None):
    """The config file to use: ``path``, else ``$DROPR_CONFIG``, else the default."""
    return Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path=None):
    """Read, validate and return the :class:`Config` at ``path`` (see :func:`resolve_path`)."""
    path = resolve_path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(data, path=path)


def from_dict(data, *, path=Path("<dict>")):
    """Validate a parsed TOML document; relative paths resolve against ``path``'s folder."""
    path = Path(path)
    base = path.parent.resolve() if path.name != "<dict>" else Path.cwd()
    where = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table at the top level")
    _reject_unknown(where, "", data, list(SECTIONS) + ["peers"])
    sections = {
        name: _build(cls, data.get(name, {}), where, name, base) for name, cls in SECTIONS.items()
    }
    peers = _build_peers(data.get("peers", {}), where, base)
    if not sections["client"].name:
        client = dataclasses.replace(sections["client"], name=_default_client_name())
        sections["client"] = client
    return Config(path=path, peers=types.MappingProxyType(peers), **sections)


def _build_peers(table, where, base):
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [peers] must be a table of [peers.NAME] tables")
    peers = {}
    for name, body in table.items():
        try:
            names.check_name(name, "peer name")
        except ValidationError as e:
            raise ConfigError(f"{where}: [peers.{name}]: {e}") from None
        peer = _build(PeerConfig, body, where, f"peers.{name}", base, extra={"name": name})
        if not peer.url:
            raise ConfigError(f"{where}: [peers.{name}] url: required, e.g. 'http://host:8080'")
        peers[name] = peer
    return peers


def _reject_unknown(where, section, table, known):
    for k in table:
        if k not in known:
            hint = difflib.get_close_matches(k, known, n=1)
            label = f"[{section}] {k}" if section else k
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}: {label}: unknown key{suggestion}")


def _build(cls, table, where, section, base, extra=None):
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{section}] must be a table")
    fields = [f for f in dataclasses.fields(cls) if f.metadata]
    _reject_unknown(where, section, table, [f.name for f in fields])
    values = dict(extra or {})
    for f in fields:
        raw = table.get(f.name, f.default)
        values[f.name] = _convert(f, raw, f"{where}: [{section}] {f.name}", base)
    return cls(**values)


def _convert(field, raw, label, base):
    meta = field.metadata
    kind = meta["kind"] or type(field.default).__name__
    check = _CHECKS.get(kind)
    if check is None:
        raise AssertionError(f"no check for config kind {kind}")
    return check(raw, label, meta, base)


def _want(ok, raw, label, expected):
    if not ok:
        raise ConfigError(f"{label}: expected {expected}, got {raw!r}")


def _check_bounds(value, label, meta):
    lo, hi = meta["lo"], meta["hi"]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"from {lo}" + (f" to {hi}" if hi is not None else " up")
        raise ConfigError(f"{label}: {value} out of range: expected a value {span}")
    return value


def _check_int(raw, label, meta, base):
    _want(isinstance(raw, int) and not isinstance(raw, bool), raw, label, "an integer")
    return _check_bounds(raw, label, meta)


def _check_float(raw, label, meta, base):
    ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
    _want(ok, raw, label, "a number")
    return _check_bounds(float(raw), label, meta)


def _check_bool(raw, label, meta, base):
    _want(isinstance(raw, bool), raw, label, "true or false")
    return raw


def _check_str(raw, label, meta, base):
    _want(isinstance(raw, str), raw, label, "a string")
    return raw


def _check_path(raw, label, meta, base):
    _want(isinstance(raw, str), raw, label, "a path string")
    if not raw:
        return None
    p = Path(raw).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _check_name(raw, label, meta, base):
    _want(isinstance(raw, str), raw, label, "a string")
    if raw:
        try:
            names.check_name(raw, "name")
        except ValidationError as e:
            raise ConfigError(f"{label}: {e}") from None
    return raw


def _check_url(raw, label, meta, base):
    ok = isinstance(raw, str) and raw.startswith(("http://", "https://")) and len(raw) > 8
    _want(ok or raw == "", raw, label, "an http:// or https:// URL")
    return raw.rstrip("/")


def _check_bind(raw, label, meta, base):
    ok = isinstance(raw, str) and (raw.startswith("unix:") or raw.rpartition(":")[2].isdigit())
    _want(ok, raw, label, "HOST:PORT or unix:PATH")
    return raw


def _check_level(raw, label, meta, base):
    levels = ("debug", "info", "warning", "error")
    _want(isinstance(raw, str) and raw.lower() in levels, raw, label, "one of " + ", ".join(levels))
    return raw.lower()


_CHECKS = {
    "int": _check_int,
    "float": _check_float,
    "bool": _check_bool,
    "str": _check_str,
    "path": _check_path,
    "name": _check_name,
    "url": _check_url,
    "bind": _check_bind,
    "level": _check_level,
}
