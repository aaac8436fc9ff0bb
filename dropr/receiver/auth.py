"""Who may upload to the receiver: clients known by a bearer token, each
perhaps limited to some channels; or, with no tokens configured, loopback
clients only.

Every route needs a client except the read-only ones a load balancer, a
monitor or a developer reaches for first (:data:`OPEN_ROUTES`: health,
readiness, the OpenAPI document). ``/metrics`` is not among them: it names the
channels and counts their messages, so a scraper authenticates like any
client (give it a client with ``channels = []``, which may write nothing).

With ``[receiver] client_ca_file`` the TLS handshake already refused every
client without a certificate from that CA; a request without a token is then
the client whose ``cert_subject`` its certificate has.

The client name stored with a message comes from its token or its
certificate, never from the request. Tokens are compared by their SHA-256
digests with :func:`hmac.compare_digest`, against every configured token
every time, so neither the length nor the content of a token, nor which
client it belongs to, shows in the time an answer takes.
"""

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import ipaddress

from dropr import certs
from dropr.errors import ConfigError, Forbidden, Unauthorized

#: Paths served to anyone (GET and HEAD only).
OPEN_ROUTES = frozenset(("/v1/health", "/v1/ready", "/v1/openapi.json"))
#: The client name of requests served in loopback-only mode.
LOCAL_CLIENT = "local"


@dataclasses.dataclass(frozen=True)
class Identity:
    """The client a request comes from; ``channels`` is ``None`` when it may
    write to every channel."""

    name: str
    channels: frozenset = None


LOCAL = Identity(LOCAL_CLIENT)


def _digest(token):
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Clients:
    """The clients a receiver knows, by the digests of their tokens and by
    their certificates' subjects. Loaded once in the receiver's master
    process (which reads the token files) and used by the request threads of
    every worker; immutable once built."""

    def __init__(self, entries=(), subjects=None):
        self._entries = tuple(entries)  # (digest, Identity)
        self._subjects = dict(subjects or {})  # certs key -> Identity

    @classmethod
    def load(cls, config):
        """The [receiver.clients] of ``config``, their token files read now;
        ConfigError naming the key for an unreadable file or a token that two
        clients share (which one would the receiver believe?)."""
        entries, owner, subjects, subject_owner = [], {}, {}, {}
        for client in config.receiver.clients:
            channels = None if client.channels is None else frozenset(client.channels)
            identity = Identity(client.name, channels)
            if client.cert_subject:
                key = certs.parse(client.cert_subject)
                if key in subjects:
                    raise ConfigError(f"{config.path}: [{client.section}] cert_subject: the "
                                      f"same as [{subject_owner[key]}]'s")
                subjects[key], subject_owner[key] = identity, client.section
            if not (client.token or client.token_file):
                continue
            digest = _digest(config.token_of(client))
            if digest in owner:
                raise ConfigError(f"{config.path}: [{client.section}] token: the same as "
                                  f"[{owner[digest]}]'s; every client needs its own")
            owner[digest] = client.section
            entries.append((digest, identity))
        return cls(entries, subjects)

    def __len__(self):
        return len({identity.name for identity in self._known()})

    def _known(self):
        return [identity for _, identity in self._entries] + list(self._subjects.values())

    def names(self, by=None):
        """The client names, in config order: all, or those known ``by``
        "token" or by "certificate"."""
        known = {"token": [i for _, i in self._entries],
                 "certificate": list(self._subjects.values())}.get(by, self._known())
        return list(dict.fromkeys(identity.name for identity in known))

    def by_subject(self, subject):
        """The :class:`Identity` whose cert_subject is ``subject`` (a
        :func:`dropr.certs.of_peer` key), or ``None``."""
        return self._subjects.get(subject)

    def find(self, token):
        """The :class:`Identity` whose token is ``token``, or ``None``."""
        digest = _digest(token)
        found = None
        for known, identity in self._entries:  # no early exit: the same work for every token
            if hmac.compare_digest(known, digest) and found is None:
                found = identity
        return found


class Authenticate:
    """Falcon middleware: names the client of every request that needs one
    (``req.context.client``, and ``req.context.channels`` it may write, or
    ``None`` for all), or refuses it: 401 without a valid bearer token, 403
    for a non-loopback client of a receiver without tokens. Open routes get
    ``req.context.client = None``. Runs in receiver worker processes."""

    def __init__(self, clients, *, bind, basic_path=""):
        self.clients = clients
        self.known = len(clients) > 0  # Clients do not change once built
        # Over a unix socket every client is on this host (and passed its permissions).
        self.unix = bind.startswith("unix:")
        # The PHP client's path takes 'Authorization: Basic' (NAME:TOKEN) too:
        # curl sends it from a user:password@ in the peer's URL.
        self.basic_path = basic_path or None

    def process_request(self, req, resp):
        if req.method in ("GET", "HEAD") and req.path in OPEN_ROUTES:
            identity = Identity(None)
        elif self.known and req.path == self.basic_path and _is_basic(
                req.get_header("Authorization")):
            identity = self._by_basic(req.get_header("Authorization"))
        elif self.known:
            header = req.get_header("Authorization")
            subject = peer_subject(req.env) if header is None else None
            identity = self._by_token(header) if subject is None else self._by_subject(subject)
        else:
            # gunicorn always sets REMOTE_ADDR; falcon reads a missing one (an
            # in-process call, as in tests) as 127.0.0.1.
            identity = self._by_address(req.remote_addr)
        req.context.client = identity.name
        req.context.channels = identity.channels

    def _by_token(self, header):
        if header is None:
            raise Unauthorized("this receiver needs a bearer token: "
                               "'Authorization: Bearer TOKEN'")
        # HTTP's own spaces only: str.split() would also take a no-break space.
        scheme, _, token = header.strip(" \t").partition(" ")
        token = token.lstrip(" ")
        if (scheme.lower() != "bearer" or not token
                or not all("!" <= c <= "~" for c in token)):
            raise Unauthorized("malformed Authorization header: expected 'Bearer TOKEN'",
                               error="invalid_request")
        identity = self.clients.find(token)
        if identity is None:
            raise Unauthorized("unknown bearer token", error="invalid_token")
        return identity

    def _by_basic(self, header):
        try:
            decoded = base64.b64decode(header.split()[1], validate=True).decode("utf-8")
        except (IndexError, binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed Authorization header: expected 'Basic "
                               "base64(NAME:TOKEN)'", error="invalid_request") from None
        name, colon, token = decoded.partition(":")
        identity = self.clients.find(token) if colon else None
        if identity is None or not hmac.compare_digest(identity.name.encode(), name.encode()):
            raise Unauthorized("unknown client name and token", error="invalid_token")
        return identity

    def _by_subject(self, subject):
        identity = self.clients.by_subject(subject)
        if identity is None:
            raise Unauthorized("no client is known by the certificate subject "
                               f"{certs.render(subject)!r} (nor was a bearer token sent)",
                               error="invalid_token")
        return identity

    def _by_address(self, address):
        if self.unix or is_loopback(address):
            return LOCAL
        raise Forbidden("this receiver has no client tokens configured and serves "
                        "loopback clients only")


def _is_basic(header):
    return header is not None and header[:6].lower() == "basic "


def peer_subject(env):
    """The subject (a :func:`dropr.certs.of_peer` key) of the client
    certificate of this request's connection, or ``None`` without one
    (gunicorn gives the TLS socket; the handshake verified the certificate
    against ``[receiver] client_ca_file``)."""
    sock = env.get("gunicorn.socket")
    cert = sock.getpeercert() if hasattr(sock, "getpeercert") else None
    return certs.of_peer(cert["subject"]) if cert and cert.get("subject") else None


def check_channel(req, channel):
    """Raise ``Forbidden`` unless the request's client may write to ``channel``."""
    allowed = req.context.channels
    if allowed is not None and channel not in allowed:
        raise Forbidden(f"client {req.context.client!r} may not write to channel {channel!r}")


@functools.lru_cache(maxsize=1024)
def is_loopback(address):
    """Is ``address`` (an IP address as text) on this host: 127.0.0.0/8 or ::1
    (also as an IPv4-mapped IPv6 address)? Remembered for the last addresses
    asked about: parsing one costs more than the rest of the check."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def bind_is_local(bind):
    """Does ``[receiver] bind`` reach loopback clients only?"""
    if bind.startswith("unix:"):
        return True
    host = bind.rpartition(":")[0].strip("[]")
    return host == "localhost" or is_loopback(host)


def startup_notes(config, clients):
    """``[(level, text)]`` for the receiver's start-up log: who it serves, and
    warnings for a setup that may not be what the operator meant."""
    rc = config.receiver
    local = bind_is_local(rc.bind)
    if not len(clients):
        if local:
            return [("info", "no [receiver.clients] tokens: serving loopback clients only, "
                             f"as client {LOCAL_CLIENT!r}")]
        return [("warning", f"bound to {rc.bind} but no [receiver.clients] tokens are "
                            "configured: serving loopback clients only, others get 403; "
                            "configure tokens to accept remote senders")]
    notes = [("info", f"clients known by {words}: {', '.join(clients.names(by))}")
             for by, words in (("token", "bearer token"), ("certificate", "certificate subject"))
             if clients.names(by)]
    if not rc.certfile and not local:
        notes.append(("warning", f"bound to {rc.bind} without TLS: bearer tokens cross the "
                                 "network in clear text; set [receiver] certfile and keyfile"))
    return notes
