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
TOKEN_MAX = 4096


def key(default, lo=None, hi=None, *, kind=None, secret=False):
    """A config key with its default and inclusive bounds (``None``: unbounded).
    A ``secret`` key (a token) is left out of the section's repr, so that a
    config written to a log never shows it."""
    return dataclasses.field(default=default, repr=not secret,
                             metadata={"lo": lo, "hi": hi, "kind": kind})


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
    max_messages: int = key(0, 0)
    max_bytes: int = key(0, 0)
    put_timeout: float = key(0.0, 0.0, 86400.0)


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """[peers.NAME]: one receiver that messages can be addressed to."""

    name: str = ""
    url: str = key("", kind="url")
    urls: tuple = key((), kind="urls")
    connect_timeout: float = key(5.0, 0.1, 300.0)
    timeout: float = key(60.0, 0.1, 86400.0)
    token: str = key("", kind="token", secret=True)
    token_file: Path = key("", kind="path")
    ca_file: Path = key("", kind="path")

    @property
    def section(self):
        return f"peers.{self.name}"


@dataclasses.dataclass(frozen=True)
class ReceiverClientConfig:
    """[receiver.clients.NAME]: one client the receiver knows by its bearer token.
    ``channels`` is ``None`` when the client may write to every channel."""

    name: str = ""
    token: str = key("", kind="token", secret=True)
    token_file: Path = key("", kind="path")
    channels: tuple = key(None, kind="names")

    @property
    def section(self):
        return f"receiver.clients.{self.name}"


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
    body_timeout: float = key(30.0, 0.1, 3600.0)
    min_free_bytes: int = key(64 * MiB, 0)
    certfile: Path = key("", kind="path")
    keyfile: Path = key("", kind="path")
    #: The [receiver.clients.NAME] tables, in file order (not a key of its own).
    clients: tuple = ()


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """[store]: which engine holds the server store. ``files`` is the folder
    ``[receiver] store``; ``jetstream`` is a stream on a NATS JetStream cluster
    (see dropr.jetstream and docs/backends.md)."""

    backend: str = key("files", kind="backend")
    servers: tuple = key(("nats://127.0.0.1:4222",), kind="nats_urls")
    stream: str = key("DROPR", kind="stream")
    subject: str = key("dropr", kind="stream")
    replicas: int = key(3, 1, 5)
    duplicate_window: float = key(7 * 86400.0, 1.0)
    allow_short_window: bool = key(False)
    connect_timeout: float = key(2.0, 0.1, 300.0)
    publish_timeout: float = key(10.0, 0.1, 3600.0)
    ack_wait: float = key(60.0, 1.0, 86400.0)


@dataclasses.dataclass(frozen=True)
class WorkersConfig:
    """[workers]: how many processes of each kind the supervisor runs."""

    sender: int = key(2, 0, 64)
    retry_scanner: int = key(1, 0, 1)
    reaper: int = key(1, 0, 1)
    receiver: int = key(0, 0, 1)
    #: Not a key: 1 when [metrics] bind is set (the metrics worker serves it).
    metrics: int = dataclasses.field(default=0, metadata={"derived": "[metrics] bind"})


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: droprd's Prometheus metrics of the producer host."""

    bind: str = key("", kind="host_port")


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
    store: StoreConfig = StoreConfig()
    metrics: MetricsConfig = MetricsConfig()

    def peer(self, name):
        """The :class:`PeerConfig` called ``name``; ``UnknownPeer`` if none."""
        from dropr.errors import UnknownPeer

        try:
            return self.peers[name]
        except KeyError:
            known = ", ".join(sorted(self.peers)) or "none configured"
            raise UnknownPeer(f"unknown peer {name!r} (known: {known})") from None

    def token_of(self, entry):
        """The bearer token of ``entry``, a peer or a receiver client: its
        ``token``, or what its ``token_file`` holds, stripped. The file is read
        now, by the process that uses the token, and not by :func:`load`:
        producers load the same config and need not be able to read the
        secrets of the sender or the receiver. ConfigError naming the key if
        the file cannot be read or holds no valid token."""
        if not entry.token_file:
            return entry.token
        label = f"{self.path}: [{entry.section}] token_file"
        try:
            data = entry.token_file.read_bytes()
        except OSError as e:
            raise ConfigError(f"{label}: cannot read {entry.token_file}: {e.strerror}") from None
        if not data.strip():
            raise ConfigError(f"{label}: {entry.token_file} holds no token")
        token = data.strip().decode("ascii", "replace")
        return _check_token(token, f"{label}: the token in {entry.token_file}", None, None)


SECTIONS = {
    "client": ClientConfig,
    "sender": SenderConfig,
    "retry": RetryConfig,
    "reaper": ReaperConfig,
    "receiver": ReceiverConfig,
    "workers": WorkersConfig,
    "supervisor": SupervisorConfig,
    "store": StoreConfig,
    "metrics": MetricsConfig,
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
    tables = {name: data.get(name, {}) for name in SECTIONS}
    clients = _pop_clients(tables)
    sections = {
        name: _build(cls, tables[name], where, name, base) for name, cls in SECTIONS.items()
    }
    sections["receiver"] = _with_clients(sections["receiver"], clients, where, base)
    peers = _build_peers(data.get("peers", {}), where, base)
    _check_window(sections["store"], sections["retry"], where)
    sections["workers"] = dataclasses.replace(sections["workers"],
                                              metrics=int(bool(sections["metrics"].bind)))
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
        peer = _with_urls(_build(PeerConfig, body, where, f"peers.{name}", base,
                                 extra={"name": name}), where)
        _check_token_source(peer, where, required=False)
        plain = [u for u in peer.urls if not u.startswith("https://")]
        if peer.ca_file and plain:
            raise ConfigError(f"{where}: [peers.{name}] ca_file: only for an https:// url, "
                              f"got {plain[0]!r}")
        peers[name] = peer
    return peers


def _with_urls(peer, where):
    """``peer`` with both ``urls`` (every receiver of the peer) and ``url``
    (the first) set, from whichever of the two the file gives."""
    if peer.url and peer.urls:
        raise ConfigError(f"{where}: [peers.{peer.name}] url and urls: give one of the two")
    if not (peer.url or peer.urls):
        raise ConfigError(f"{where}: [peers.{peer.name}] url: required, e.g. "
                          "'http://host:8080' (or urls = [...] for several receivers)")
    if peer.urls:
        return dataclasses.replace(peer, url=peer.urls[0])
    return dataclasses.replace(peer, urls=(peer.url,))


def _check_window(store, retry, where):
    """Exactly-once on JetStream holds only for re-sends inside the duplicate
    window: a window shorter than the clients' [retry] max_age is refused
    unless the operator says they accept it (then the receiver warns at start)."""
    if store.backend != "jetstream" or store.duplicate_window >= retry.max_age:
        return
    if not store.allow_short_window:
        raise ConfigError(
            f"{where}: [store] duplicate_window: {store.duplicate_window:g} s is shorter than "
            f"[retry] max_age ({retry.max_age:g} s): a message re-sent after the window "
            "would be stored twice; raise the window, lower max_age, or set "
            "allow_short_window = true")


def short_window_note(config):
    """The warning a receiver logs at start when ``allow_short_window`` let a
    duplicate window shorter than ``[retry] max_age`` through (``None`` if not)."""
    store, retry = config.store, config.retry
    if store.backend != "jetstream" or store.duplicate_window >= retry.max_age:
        return None
    return (f"[store] duplicate_window ({store.duplicate_window:g} s) is shorter than [retry] "
            f"max_age ({retry.max_age:g} s): a message re-sent more than "
            f"{store.duplicate_window:g} s after its first upload is stored twice")


def _pop_clients(tables):
    """The [receiver.clients] table, taken out of ``tables["receiver"]`` (a copy)."""
    receiver = tables["receiver"]
    if not isinstance(receiver, dict) or "clients" not in receiver:
        return {}
    tables["receiver"] = {k: v for k, v in receiver.items() if k != "clients"}
    return receiver["clients"]


def _with_clients(receiver, table, where, base):
    """``receiver`` with its clients, after the checks that span several keys."""
    if bool(receiver.certfile) != bool(receiver.keyfile):
        missing = "keyfile" if receiver.certfile else "certfile"
        raise ConfigError(f"{where}: [receiver] {missing}: certfile and keyfile go together: "
                          "give both (HTTPS) or neither (HTTP)")
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [receiver.clients] must be a table of "
                          "[receiver.clients.NAME] tables")
    clients = []
    for name, body in table.items():
        try:
            names.check_name(name, "client name")
        except ValidationError as e:
            raise ConfigError(f"{where}: [receiver.clients.{name}]: {e}") from None
        client = _build(ReceiverClientConfig, body, where, f"receiver.clients.{name}", base,
                        extra={"name": name})
        _check_token_source(client, where, required=True)
        clients.append(client)
    return dataclasses.replace(receiver, clients=tuple(clients))


def _check_token_source(entry, where, *, required):
    label = f"{where}: [{entry.section}]"
    if entry.token and entry.token_file:
        raise ConfigError(f"{label} token, token_file: give one of them, not both")
    if required and not (entry.token or entry.token_file):
        raise ConfigError(f"{label} token: required (or token_file, a file that holds it)")


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
    fields = [f for f in dataclasses.fields(cls) if f.metadata and "derived" not in f.metadata]
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


def _check_names(raw, label, meta, base):
    if raw is None:
        return None
    _want(isinstance(raw, list), raw, label, "a list of channel names")
    try:
        return tuple(dict.fromkeys(names.check_name(n, "channel") for n in raw))
    except ValidationError as e:
        raise ConfigError(f"{label}: {e}") from None


def _check_token(raw, label, meta, base):
    # What an Authorization header can carry: visible ASCII, no spaces.
    ok = isinstance(raw, str) and len(raw) <= TOKEN_MAX and all("!" <= c <= "~" for c in raw)
    if not ok:  # a secret: the value is not shown
        raise ConfigError(f"{label}: expected a token of at most {TOKEN_MAX} visible ASCII "
                          "characters, without spaces")
    return raw


def _check_url(raw, label, meta, base):
    ok = isinstance(raw, str) and raw.startswith(("http://", "https://")) and len(raw) > 8
    _want(ok or raw == "", raw, label, "an http:// or https:// URL")
    return raw.rstrip("/")


def _check_urls(raw, label, meta, base):
    ok = isinstance(raw, (list, tuple)) and all(
        isinstance(u, str) and u.startswith(("http://", "https://")) and len(u) > 8 for u in raw)
    _want(ok, raw, label, "a list of http:// or https:// URLs")
    urls = tuple(dict.fromkeys(u.rstrip("/") for u in raw))
    _want(len(urls) == len(raw), raw, label, "a list of different URLs")
    return urls


def _check_bind(raw, label, meta, base):
    ok = isinstance(raw, str) and (raw.startswith("unix:") or raw.rpartition(":")[2].isdigit())
    _want(ok, raw, label, "HOST:PORT or unix:PATH")
    return raw


def _check_host_port(raw, label, meta, base):
    host, _, port = raw.rpartition(":") if isinstance(raw, str) else ("", "", "")
    ok = raw == "" or (bool(host) and port.isdigit() and 1 <= int(port) <= 65535)
    _want(ok, raw, label, "HOST:PORT (e.g. \"127.0.0.1:9464\") or \"\" (off)")
    return raw


def _check_backend(raw, label, meta, base):
    _want(raw in ("files", "jetstream"), raw, label, "'files' or 'jetstream'")
    return raw


def _check_nats_urls(raw, label, meta, base):
    ok = isinstance(raw, (list, tuple)) and raw and all(
        isinstance(u, str) and u.startswith(("nats://", "tls://")) and len(u) > 7 for u in raw)
    _want(ok, raw, label, "a non-empty list of nats:// or tls:// URLs")
    return tuple(raw)


def _check_stream(raw, label, meta, base):
    # Stream names and subject tokens: no dots, wildcards or spaces.
    ok = isinstance(raw, str) and 0 < len(raw) <= 32 and all(
        c.isascii() and (c.isalnum() or c in "_-") for c in raw)
    _want(ok, raw, label, "1 to 32 letters, digits, '_' or '-'")
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
    "names": _check_names,
    "token": _check_token,
    "url": _check_url,
    "urls": _check_urls,
    "bind": _check_bind,
    "host_port": _check_host_port,
    "level": _check_level,
    "backend": _check_backend,
    "nats_urls": _check_nats_urls,
    "stream": _check_stream,
}
