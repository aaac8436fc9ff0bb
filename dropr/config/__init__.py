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
import ipaddress
import logging
import os
import socket
import tomllib
import types
import urllib.parse
from pathlib import Path

from dropr import certs, names
from dropr.errors import ConfigError, ValidationError

DEFAULT_PATH = "conf/dropr.toml"
ENV_VAR = "DROPR_CONFIG"
MiB = 1024 * 1024
TOKEN_MAX = 4096
#: A token shorter than this is refused: a guessable token protects nothing
#: (12 random characters carry 72 bits or more; `openssl rand -hex 32` makes 64).
TOKEN_MIN = 12

log = logging.getLogger("dropr.config")


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
    group: str = key("", kind="group")


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
    certfile: Path = key("", kind="path")
    keyfile: Path = key("", kind="path")

    @property
    def section(self):
        return f"peers.{self.name}"


@dataclasses.dataclass(frozen=True)
class ReceiverClientConfig:
    """[receiver.clients.NAME]: one client the receiver knows by its bearer
    token, or by the subject of its TLS certificate. ``channels`` is ``None``
    when the client may write to every channel."""

    name: str = ""
    token: str = key("", kind="token", secret=True)
    token_file: Path = key("", kind="path")
    cert_subject: str = key("", kind="subject")
    channels: tuple = key(None, kind="names")

    @property
    def section(self):
        return f"receiver.clients.{self.name}"


@dataclasses.dataclass(frozen=True)
class ResponderConfig:
    """[receiver.responders.CHANNEL]: the command that answers direct messages
    (calls) of one channel; ``name`` is the channel."""

    name: str = ""
    command: tuple = key((), kind="command")
    timeout: float = key(10.0, 0.01, 3600.0)
    max_concurrent: int = key(4, 1, 1024)
    max_reply_bytes: int = key(MiB, 1, 1 << 40)
    content_type: str = key("application/octet-stream", kind="media_type")

    @property
    def section(self):
        return f"receiver.responders.{self.name}"


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
    min_free_inodes: int = key(10_000, 0)
    certfile: Path = key("", kind="path")
    keyfile: Path = key("", kind="path")
    legacy_path: str = key("", kind="legacy_path")
    group: str = key("", kind="group")
    client_ca_file: Path = key("", kind="path")
    #: The [receiver.clients.NAME] tables, in file order (not a key of its own).
    clients: tuple = ()
    #: The [receiver.responders.CHANNEL] tables, in file order (not a key of its own).
    responders: tuple = ()


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
    # How dropr proves itself to the servers (at most one way) and checks them.
    user: str = key("")
    password: str = key("", secret=True)
    token: str = key("", kind="token", secret=True)
    nkey_seed_file: Path = key("", kind="path")
    credentials_file: Path = key("", kind="path")
    ca_file: Path = key("", kind="path")
    certfile: Path = key("", kind="path")
    keyfile: Path = key("", kind="path")

    section = "store"


@dataclasses.dataclass(frozen=True)
class WorkersConfig:
    """[workers]: how many processes of each kind the supervisor runs."""

    sender: int = key(2, 0, 64)
    retry_scanner: int = key(1, 0, 1)
    reaper: int = key(1, 0, 1)
    receiver: int = key(0, 0, 1)
    legacy_spool: int = key(0, 0, 1)
    #: Not a key: 1 when [metrics] bind is set (the metrics worker serves it).
    metrics: int = dataclasses.field(default=0, metadata={"derived": "[metrics] bind"})


@dataclasses.dataclass(frozen=True)
class LegacyConfig:
    """[legacy]: a PHP dropr client spool that droprd takes over: its folder
    (the PHP client's storage DSN) and, for each PHP peer URL, the
    [peers.NAME] its messages go to."""

    spool: Path = key("", kind="path")
    peers: tuple = key((), kind="url_map")  # ((PHP peer URL, peer name), ...)

    def peer_for(self, url):
        """The [peers.NAME] that the PHP peer ``url`` maps to, or None."""
        return dict(self.peers).get(url)



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
    throttle_time: float = key(60.0, 0.0, 86400.0)
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
    legacy: LegacyConfig = LegacyConfig()
    metrics: MetricsConfig = MetricsConfig()

    def peer(self, name):
        """The :class:`PeerConfig` called ``name``; ``UnknownPeer`` if none."""
        from dropr.errors import UnknownPeer

        try:
            return self.peers[name]
        except KeyError:
            known = ", ".join(sorted(self.peers)) or "none configured"
            raise UnknownPeer(f"unknown peer {name!r} (known: {known})") from None

    def warn_readable_secrets(self, entry):
        """Log a warning if ``entry`` (a peer, a receiver client or [store]) has
        a secret inline in a config file that every user can read."""
        _warn_readable_config(self, entry)

    def token_of(self, entry):
        """The bearer token of ``entry``, a peer or a receiver client: its
        ``token``, or what its ``token_file`` holds, stripped. The file is read
        now, by the process that uses the token, and not by :func:`load`:
        producers load the same config and need not be able to read the
        secrets of the sender or the receiver. ConfigError naming the key if
        the file cannot be read or holds no valid token; a warning in the log
        for a token in a file that every user can read (the token file, or
        the config itself), or for one sent over plain http:// to another host."""
        _warn_plain_token(self, entry)
        if not entry.token_file:
            self.warn_readable_secrets(entry)
            return entry.token
        label = f"{self.path}: [{entry.section}] token_file"
        try:
            with open(entry.token_file, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                data = f.read()
        except OSError as e:
            raise ConfigError(f"{label}: cannot read {entry.token_file}: {e.strerror}") from None
        if mode & 0o004:
            # A warning, not a refusal: the folder may keep others out, and a
            # sender that stops delivering over it would do more harm.
            log.warning("%s: %s is readable by every user (mode %04o); make it private: "
                        "chmod o-rwx %s", label, entry.token_file, mode & 0o777, entry.token_file)
        if not data.strip():
            raise ConfigError(f"{label}: {entry.token_file} holds no token")
        token = data.strip().decode("ascii", "replace")
        return _check_token(token, f"{label}: the token in {entry.token_file}", None, None)


def _warn_plain_token(config, entry):
    """Log a warning if a peer's token would cross the network in clear text."""
    if not isinstance(entry, PeerConfig) or not (entry.token or entry.token_file):
        return
    for url in entry.urls:
        if url.startswith("http://") and not _is_local_url(url):
            log.warning("%s: [%s] token goes to %s over plain http://: anyone on the way "
                        "can read it and upload as this client; use https://",
                        config.path, entry.section, url)


def _is_local_url(url):
    """Is the host of an http(s) ``url`` this host (loopback, or localhost)?"""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_readable_config(config, entry):
    """Log a warning if ``entry``'s inline secret (a token, or [store]'s
    password) sits in a config file every user can read (producers read the
    config too: files named by *_file keys are for secrets)."""
    secret = "token" if entry.token else "password" if getattr(entry, "password", "") else None
    if secret is None:
        return
    try:
        mode = os.stat(config.path).st_mode
    except OSError:
        return  # a config built in memory
    if mode & 0o004:
        log.warning("%s: [%s] %s: this file is readable by every user (mode %04o) and "
                    "holds a secret; move it to a file only this process's user can read "
                    "(token_file, credentials_file), or chmod o-r %s",
                    config.path, entry.section, secret, mode & 0o777, config.path)


SECTIONS = {
    "client": ClientConfig,
    "sender": SenderConfig,
    "retry": RetryConfig,
    "reaper": ReaperConfig,
    "receiver": ReceiverConfig,
    "workers": WorkersConfig,
    "supervisor": SupervisorConfig,
    "store": StoreConfig,
    "legacy": LegacyConfig,
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
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start}: {e.reason})") from None
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
    responders = _pop_table(tables, "responders")
    sections = {
        name: _build(cls, tables[name], where, name, base) for name, cls in SECTIONS.items()
    }
    sections["receiver"] = _with_clients(sections["receiver"], clients, where, base)
    sections["receiver"] = _with_responders(sections["receiver"], responders, where, base)
    peers = _build_peers(data.get("peers", {}), where, base)
    _check_window(sections["store"], sections["retry"], where)
    _check_legacy(sections["legacy"], sections["workers"], peers, where)
    _check_nats_auth(sections["store"], where)
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
        _check_pair(peer, where)
        plain = [u for u in peer.urls if not u.startswith("https://")]
        for tls_key in ("ca_file", "certfile"):
            if getattr(peer, tls_key) and plain:
                raise ConfigError(f"{where}: [peers.{name}] {tls_key}: only for an https:// "
                                  f"url, got {plain[0]!r}")
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


def _check_nats_auth(store, where):
    """[store]: one way to authenticate at most, pairs given whole, TLS files
    for tls:// servers only. The files are read where the store connects."""
    label = f"{where}: [store]"
    if bool(store.user) != bool(store.password):
        missing = "password" if store.user else "user"
        raise ConfigError(f"{label} {missing}: user and password go together")
    ways = [name for name, given in (("user", store.user), ("token", store.token),
                                     ("nkey_seed_file", store.nkey_seed_file),
                                     ("credentials_file", store.credentials_file)) if given]
    if len(ways) > 1:
        raise ConfigError(f"{label} {', '.join(ways)}: give one way to authenticate, not "
                          f"{len(ways)}")
    if bool(store.certfile) != bool(store.keyfile):
        missing = "keyfile" if store.certfile else "certfile"
        raise ConfigError(f"{label} {missing}: certfile and keyfile go together")
    tls_key = "ca_file" if store.ca_file else "certfile" if store.certfile else None
    plain = [u for u in store.servers if not u.startswith("tls://")]
    if tls_key and plain:
        raise ConfigError(f"{label} {tls_key}: only for tls:// servers, got {plain[0]!r}")


def short_window_note(config):
    """The warning a receiver logs at start when ``allow_short_window`` let a
    duplicate window shorter than ``[retry] max_age`` through (``None`` if not)."""
    store, retry = config.store, config.retry
    if store.backend != "jetstream" or store.duplicate_window >= retry.max_age:
        return None
    return (f"[store] duplicate_window ({store.duplicate_window:g} s) is shorter than [retry] "
            f"max_age ({retry.max_age:g} s): a message re-sent more than "
            f"{store.duplicate_window:g} s after its first upload is stored twice")


def _check_legacy(legacy, workers, peers, where):
    """[legacy] peers name configured peers; a takeover worker needs a spool."""
    for url, name in legacy.peers:
        if name not in peers:
            raise ConfigError(f"{where}: [legacy] peers: {url!r} goes to peer {name!r}, which "
                              f"is not configured (known: {', '.join(sorted(peers)) or 'none'})")
    if workers.legacy_spool and not legacy.spool:
        raise ConfigError(f"{where}: [workers] legacy_spool = 1 needs [legacy] spool: the PHP "
                          "client spool to take over")


def _pop_clients(tables):
    """The [receiver.clients] table, taken out of ``tables["receiver"]`` (a copy)."""
    return _pop_table(tables, "clients")


def _pop_table(tables, name):
    """The [receiver.NAME] table, taken out of ``tables["receiver"]`` (a copy)."""
    receiver = tables["receiver"]
    if not isinstance(receiver, dict) or name not in receiver:
        return {}
    tables["receiver"] = {k: v for k, v in receiver.items() if k != name}
    return receiver[name]


def _with_responders(receiver, table, where, base):
    """``receiver`` with its [receiver.responders.CHANNEL] tables."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [receiver.responders] must be a table of "
                          "[receiver.responders.CHANNEL] tables")
    responders = []
    for channel, body in table.items():
        try:
            names.check_name(channel, "channel")
        except ValidationError as e:
            raise ConfigError(f"{where}: [receiver.responders.{channel}]: {e}") from None
        section = f"receiver.responders.{channel}"
        responder = _build(ResponderConfig, body, where, section, base, extra={"name": channel})
        if not responder.command:
            raise ConfigError(f"{where}: [{section}] command: required: the program and its "
                              'arguments, e.g. ["./answer.sh"]')
        responders.append(responder)
    return dataclasses.replace(receiver, responders=tuple(responders))


def _with_clients(receiver, table, where, base):
    """``receiver`` with its clients, after the checks that span several keys."""
    _check_pair(receiver, where)
    if receiver.client_ca_file and not receiver.certfile:
        raise ConfigError(f"{where}: [receiver] client_ca_file: client certificates need "
                          "HTTPS: give certfile and keyfile too")
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
        _check_token_source(client, where, required=not client.cert_subject)
        if client.cert_subject and not receiver.client_ca_file:
            raise ConfigError(f"{where}: [{client.section}] cert_subject: the receiver asks "
                              "for client certificates only with [receiver] client_ca_file")
        clients.append(client)
    return dataclasses.replace(receiver, clients=tuple(clients))


def _check_pair(section, where):
    """certfile and keyfile of [receiver] or a [peers.NAME]: both or neither."""
    if bool(section.certfile) != bool(section.keyfile):
        missing = "keyfile" if section.certfile else "certfile"
        name = getattr(section, "section", "receiver")
        raise ConfigError(f"{where}: [{name}] {missing}: certfile and keyfile go together: "
                          "give both or neither")


def _check_token_source(entry, where, *, required):
    label = f"{where}: [{entry.section}]"
    if entry.token and entry.token_file:
        raise ConfigError(f"{label} token, token_file: give one of them, not both")
    if required and not (entry.token or entry.token_file):
        raise ConfigError(f"{label} token: required (or token_file, a file that holds it, "
                          "or cert_subject with [receiver] client_ca_file)")


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


def _check_group(raw, label, meta, base):
    # A POSIX portable user/group name; whether the group exists is checked
    # where the spool is made (a producer's host need not know it).
    ok = isinstance(raw, str) and len(raw) <= 32 and all(
        c.isascii() and (c.isalnum() or c in "._-") for c in raw) and not raw.startswith("-")
    _want(ok, raw, label, "a group name (letters, digits, '.', '_', '-')")
    return raw


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
    if raw and len(raw) < TOKEN_MIN:  # "" is no token at all
        raise ConfigError(f"{label}: a token of {len(raw)} characters is too easy to guess: "
                          f"expected at least {TOKEN_MIN} (e.g. from `openssl rand -hex 32`)")
    return raw


def _check_subject(raw, label, meta, base):
    _want(isinstance(raw, str), raw, label, "a certificate subject such as 'CN=web-1,O=Shop'")
    if raw:
        try:
            certs.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{label}: {e}") from None
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


def _check_command(raw, label, meta, base):
    ok = isinstance(raw, (list, tuple)) and all(isinstance(a, str) and a and "\0" not in a
                                               for a in raw)
    _want(ok, raw, label, "a list of strings: the program and its arguments")
    return tuple(raw)


def _check_media_type(raw, label, meta, base):
    ok = (isinstance(raw, str) and 0 < len(raw) <= 255 and raw.count("/") >= 1
          and all(" " <= c <= "~" for c in raw))
    _want(ok, raw, label, "a media type such as \"application/json\"")
    return raw


def _check_legacy_path(raw, label, meta, base):
    # A path of its own: not one of the API's, plain characters only.
    ok = isinstance(raw, str) and (raw == "" or (
        raw.startswith("/") and len(raw) <= 255 and "//" not in raw and "/../" not in raw + "/"
        and all(c.isascii() and (c.isalnum() or c in "/._-~") for c in raw)
        and not raw.startswith(("/v1/", "/metrics")) and raw not in ("/", "/v1")))
    _want(ok, raw, label, 'a path such as "/server/server.php" (not under /v1/), or "" for none')
    return raw


def _check_url_map(raw, label, meta, base):
    if raw == ():
        return ()
    _want(isinstance(raw, dict), raw, label, 'a table of "PHP peer URL" = "peer name"')
    for url, name in raw.items():
        _want(url.startswith(("http://", "https://")) and isinstance(name, str), raw, label,
              'a table of "PHP peer URL" = "peer name"')
        try:
            names.check_name(name, "peer name")
        except ValidationError as e:
            raise ConfigError(f"{label}: {e}") from None
    return tuple(raw.items())


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
    "group": _check_group,
    "names": _check_names,
    "token": _check_token,
    "url": _check_url,
    "urls": _check_urls,
    "bind": _check_bind,
    "subject": _check_subject,
    "host_port": _check_host_port,
    "level": _check_level,
    "backend": _check_backend,
    "nats_urls": _check_nats_urls,
    "stream": _check_stream,
    "command": _check_command,
    "media_type": _check_media_type,
    "url_map": _check_url_map,
    "legacy_path": _check_legacy_path,
}
