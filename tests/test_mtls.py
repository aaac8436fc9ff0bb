"""Mutual TLS end to end: a CA made with the openssl binary signs the
receiver's certificate and the clients'; the real receiver (gunicorn) asks
for client certificates ([receiver] client_ca_file) and names a client by its
certificate's subject ([receiver.clients.NAME] cert_subject); ``dropr send``
presents [peers.X] certfile and keyfile. A certificate from another CA, an
expired one, or none is refused at the handshake: nothing reaches the app."""

import socket
import ssl
import subprocess

import pytest

import dropr
from dropr import certs
from dropr import config as config_mod
from dropr.errors import ConfigError
from dropr.peers import Peers
from dropr.spool import Spool
from dropr.store import Store
from tests.support import harness
from tests.test_tls import make_ca, openssl, pki  # noqa: F401 - pki is a fixture

pytestmark = pytest.mark.process  # the certificates: harness.require("openssl") in pki

TOKEN = "mtls-token-3f9a7c21d0"
CLIENT_EXT = """basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
"""


def client_cert(folder, name, *, ca, subject, days=2):
    """A client certificate ``folder/name.pem`` (and ``.key``) signed by CA
    ``ca`` (its .pem and .key beside it); ``days`` < 0: already expired."""
    (folder / "client.ext").write_text(CLIENT_EXT)
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
            cwd=folder)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca.name, "-CAkey",
            ca.with_suffix(".key").name, "-CAcreateserial", "-out", f"{name}.pem",
            "-days", str(days), "-extfile", "client.ext", cwd=folder)
    return {"certfile": str(folder / f"{name}.pem"), "keyfile": str(folder / f"{name}.key")}


def rfc2253_subject(pem):
    """The subject as the README tells operators to print it for cert_subject."""
    out = subprocess.run(["openssl", "x509", "-in", pem, "-noout", "-subject", "-nameopt",
                          "RFC2253"], capture_output=True, text=True, check=True).stdout
    return out.strip().removeprefix("subject=")


@pytest.fixture(scope="module")
def clients(pki):  # noqa: F811
    folder = pki["ca"].parent
    return {
        "good": client_cert(folder, "good", ca=pki["ca"], subject="/O=Example Shop/CN=shop-1"),
        "unnamed": client_cert(folder, "unnamed", ca=pki["ca"], subject="/CN=stranger"),
        "wrong_ca": client_cert(folder, "other", ca=pki["wrong_ca"],
                                subject="/O=Example Shop/CN=shop-1"),
        "expired": client_cert(folder, "expired", ca=pki["ca"],
                               subject="/O=Example Shop/CN=shop-1", days=-1),
    }


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, pki, clients):  # noqa: F811
    """The receiver on https, asking for client certificates signed by "ca":
    client "shop" by its certificate's subject, "tokened" by a token."""
    root = tmp_path_factory.mktemp("mtls-receiver")
    port = harness.free_port()
    path = harness.write_config(root, port=port, sections={
        "receiver": {"certfile": str(pki["cert"]), "keyfile": str(pki["key"]),
                     "client_ca_file": str(pki["ca"])},
        "receiver.clients.shop": {"cert_subject": rfc2253_subject(clients["good"]["certfile"]),
                                  "channels": ["orders"]},
        "receiver.clients.tokened": {"token": TOKEN},
    }, peers={"local": {"url": f"https://127.0.0.1:{port}", "ca_file": str(pki["ca"]),
                        **clients["good"]}})
    receiver = harness.Receiver(path).start()
    yield receiver
    receiver.stop()
    harness.remove_queues(root / "client")


@pytest.fixture
def producer(tmp_path, mtls, pki):  # noqa: F811
    """``make(**peer_keys) -> (config_path, spool)`` for peer "tls", the receiver."""
    def make(**peer):
        path = harness.write_config(tmp_path, peers={"tls": {"url": mtls.url,
                                                             "ca_file": str(pki["ca"]), **peer}})
        return path, Spool(config_mod.load(path).client.spool, fsync=False)
    yield make
    harness.remove_queues(tmp_path / "client")


def send_three(path, channel="orders"):
    client = dropr.Client(str(path))
    ids = [client.put(f"message {i}".encode(), peer="tls", channel=channel) for i in range(3)]
    harness.run_dropr(path, "send", "--once")
    return ids


def stored(receiver, channel):
    return {m.id: m.client for m in Store(receiver.config.receiver.store,
                                          fsync=False).messages(channel)}


def test_a_certificate_from_the_ca_names_the_client_without_a_token(producer, mtls, clients):
    path, spool = producer(**clients["good"])
    ids = send_three(path)
    assert (spool.count("queue"), spool.count("deferred"), spool.count("dead")) == (0, 0, 0)
    assert {i: stored(mtls, "orders")[i] for i in ids} == dict.fromkeys(ids, "shop")
    assert Peers(spool).state("tls") == {}


def test_the_client_named_by_certificate_keeps_its_channels(producer, mtls, clients):
    path, spool = producer(**clients["good"])
    send_three(path, "audit")
    assert spool.count("deferred") == 3  # a 403 defers that channel's messages alone
    assert Peers(spool).state("tls") == {}


def test_a_token_still_names_its_client_over_mutual_tls(producer, mtls, clients):
    path, spool = producer(token=TOKEN, **clients["good"])
    ids = send_three(path, "events")
    assert spool.count("deferred") == 0
    assert {i: stored(mtls, "events")[i] for i in ids} == dict.fromkeys(ids, "tokened")


def test_a_good_certificate_that_names_no_client_gets_401(producer, mtls, clients):
    path, spool = producer(**clients["unnamed"])
    ids = send_three(path)
    assert spool.count("deferred") == 3
    error = Peers(spool).state("tls")["error"]
    assert "HTTP 401 unauthorized: no client is known by the certificate subject " \
        "'CN=stranger'" in error, error
    assert not set(ids) & set(stored(mtls, "orders"))


@pytest.mark.parametrize("which", ["wrong_ca", "expired", None])
def test_refused_at_the_handshake_and_deferred(producer, mtls, clients, which):
    path, spool = producer(**clients[which]) if which else producer()
    ids = send_three(path)
    assert (spool.count("queue"), spool.count("deferred"), spool.count("dead")) == (0, 3, 0)
    state = Peers(spool).state("tls")
    assert state["failures"] == 1 and "curl error" in state["error"], state
    assert not set(ids) & set(stored(mtls, "orders"))
    assert handshake(mtls, clients[which] if which else None) == "refused"


def test_handshake_with_the_good_certificate_gets_an_answer(mtls, clients):
    assert handshake(mtls, clients["good"]).startswith("HTTP/1.1 200")


def handshake(receiver, cert):
    """Python's ssl to the receiver: the first line of the answer to GET
    /v1/health, or "refused" when the TLS layer failed (with TLS 1.3 the
    server's verdict on the client's certificate comes with the first read)."""
    context = ssl.create_default_context(cafile=str(receiver.ca_file))
    if cert:
        context.load_cert_chain(cert["certfile"], cert["keyfile"])
    host, port = receiver.url.removeprefix("https://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = tls.recv(4096)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return "refused"
    return answer.decode("latin-1").split("\r\n")[0] if answer else "refused"


def test_a_client_certificate_that_cannot_load_stops_the_sender_before_it_claims(
        producer, clients, tmp_path):
    path, spool = producer(certfile=clients["good"]["certfile"],
                           keyfile=str(tmp_path / "missing.key"))
    client = dropr.Client(str(path))
    for i in range(3):
        client.put(b"waits", peer="tls", channel="orders")
    result = harness.run_dropr(path, "send", "--once", check=False)
    assert result.returncode != 0
    assert b"[peers.tls] certfile, keyfile: cannot load" in result.stderr
    assert (spool.count("queue"), spool.count("active")) == (3, 0)


def test_start_up_log_says_who_is_known_how(mtls, pki):  # noqa: F811
    log = mtls.log_path.read_text()
    assert f"clients must present a certificate signed by {pki['ca']}" in log
    assert "clients known by bearer token: tokened" in log
    assert "clients known by certificate subject: shop" in log


def test_an_unreadable_client_ca_file_stops_the_receiver(tmp_path, pki):  # noqa: F811
    path = harness.write_config(tmp_path, sections={"receiver": {
        "certfile": str(pki["cert"]), "keyfile": str(pki["key"]),
        "client_ca_file": str(tmp_path / "missing.pem")}})
    result = harness.run_dropr(path, "receiver", check=False, timeout=30)
    assert result.returncode != 0
    assert b"[receiver] client_ca_file: cannot load" in result.stderr


@pytest.mark.parametrize("data, expected", [
    ({"receiver": {"client_ca_file": "ca.pem"}},
     r"\[receiver\] client_ca_file: client certificates need HTTPS"),
    ({"receiver": {"clients": {"a": {"cert_subject": "CN=a"}}}},
     r"\[receiver.clients.a\] cert_subject: the receiver asks for client certificates only "
     r"with \[receiver\] client_ca_file"),
    ({"receiver": {"certfile": "c", "keyfile": "k", "client_ca_file": "ca",
                   "clients": {"a": {"cert_subject": "CN"}}}},
     r"\[receiver.clients.a\] cert_subject: expected TYPE=value"),
    ({"receiver": {"certfile": "c", "keyfile": "k", "client_ca_file": "ca",
                   "clients": {"a": {"cert_subject": 7}}}},
     r"\[receiver.clients.a\] cert_subject: expected a certificate subject"),
    ({"receiver": {"clients": {"a": {"channels": []}}}},
     r"\[receiver.clients.a\] token: required \(or token_file, .* or cert_subject"),
    ({"peers": {"p": {"url": "https://h:1", "certfile": "c.pem"}}},
     r"\[peers.p\] keyfile: certfile and keyfile go together"),
    ({"peers": {"p": {"url": "http://h:1", "certfile": "c.pem", "keyfile": "k.pem"}}},
     r"\[peers.p\] certfile: only for an https:// url"),
])
def test_bad_mutual_tls_config_names_the_key(data, expected):
    with pytest.raises(ConfigError, match=expected):
        config_mod.from_dict(data)


def test_two_clients_with_one_subject_are_refused(tmp_path):
    config = config_mod.from_dict({"receiver": {
        "certfile": "c", "keyfile": "k", "client_ca_file": "ca", "clients": {
            "a": {"cert_subject": "CN=web,O=Shop"}, "b": {"cert_subject": "cn = web, o=Shop"}}}},
        path=tmp_path / "dropr.toml")
    from dropr.receiver.auth import Clients

    with pytest.raises(ConfigError, match=r"\[receiver.clients.b\] cert_subject: the same as "
                                          r"\[receiver.clients.a\]'s"):
        Clients.load(config)


def test_subjects_compare_as_rfc_4514_names():
    peer = ((("countryName", "DE"),), (("organizationName", "Example, Shop"),),
            (("commonName", "web-1"), ("userId", "7")))
    assert certs.of_peer(peer) == certs.parse(r"UID=7+CN=web-1, O=Example\, Shop,C=DE")
    assert certs.of_peer(peer) == certs.parse(r"cn=web-1+uid=7,o=Example\2C Shop,c=DE")
    assert certs.of_peer(peer) != certs.parse(r"CN=web-1,O=Example\, Shop,C=DE")
    assert certs.render(certs.of_peer(peer)) == "CN=web-1+UID=7,O=Example, Shop,C=DE"
