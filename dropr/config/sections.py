"""The sections of the configuration: one frozen dataclass per TOML table,
each field carrying its type, bounds and default (see :func:`key`), and
:class:`Config`, the whole of them."""

import dataclasses
import ipaddress
import logging
import os
import types
import urllib.parse
from pathlib import Path

from dropr.config.values import MiB, _check_token, key
from dropr.errors import ConfigError

log = logging.getLogger("dropr.config")


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
    (see dropr.store.jetstream and docs/backends.md)."""

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
