"""Loading: the TOML file read, every section built and checked, and the
checks that span several keys or sections."""

import dataclasses
import difflib
import os
import socket
import tomllib
import types
from pathlib import Path

from dropr import names
from dropr.config.sections import (SECTIONS, Config, PeerConfig, ReceiverClientConfig,
                                   ResponderConfig)
from dropr.config.values import _convert
from dropr.errors import ConfigError, ValidationError

DEFAULT_PATH = "conf/dropr.toml"
ENV_VAR = "DROPR_CONFIG"


def _default_client_name():
    host = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "-" for c in host)
    return cleaned.strip("-_")[: names.NAME_MAX] or "client"


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
    clients = _pop_table(tables, "clients")
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
    peers = {}
    for name, peer in _build_named(PeerConfig, table, where, "peers", "NAME", "peer name", base):
        peer = _with_urls(peer, where)
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


def _pop_table(tables, name):
    """The [receiver.NAME] table, taken out of ``tables["receiver"]`` (a copy)."""
    receiver = tables["receiver"]
    if not isinstance(receiver, dict) or name not in receiver:
        return {}
    tables["receiver"] = {k: v for k, v in receiver.items() if k != name}
    return receiver[name]


def _with_responders(receiver, table, where, base):
    """``receiver`` with its [receiver.responders.CHANNEL] tables."""
    responders = []
    for _, responder in _build_named(ResponderConfig, table, where, "receiver.responders",
                                     "CHANNEL", "channel", base):
        if not responder.command:
            raise ConfigError(f"{where}: [{responder.section}] command: required: the program "
                              'and its arguments, e.g. ["./answer.sh"]')
        responders.append(responder)
    return dataclasses.replace(receiver, responders=tuple(responders))


def _with_clients(receiver, table, where, base):
    """``receiver`` with its clients, after the checks that span several keys."""
    _check_pair(receiver, where)
    if receiver.client_ca_file and not receiver.certfile:
        raise ConfigError(f"{where}: [receiver] client_ca_file: client certificates need "
                          "HTTPS: give certfile and keyfile too")
    clients = []
    for _, client in _build_named(ReceiverClientConfig, table, where, "receiver.clients",
                                  "NAME", "client name", base):
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


def _build_named(cls, table, where, section, placeholder, what, base):
    """(name, ``cls``) of each [SECTION.NAME] table of ``table``, in file order,
    each name checked as ``what``. One at a time: the caller's checks of an
    entry run before the next entry is read, so the first fault is named."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{section}] must be a table of "
                          f"[{section}.{placeholder}] tables")
    for name, body in table.items():
        try:
            names.check_name(name, what)
        except ValidationError as e:
            raise ConfigError(f"{where}: [{section}.{name}]: {e}") from None
        yield name, _build(cls, body, where, f"{section}.{name}", base, extra={"name": name})


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
