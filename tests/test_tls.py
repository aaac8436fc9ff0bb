"""HTTPS end to end: a CA and a certificate for 127.0.0.1 made with the
openssl binary, the real receiver serving them with gunicorn's TLS and
tokens, and ``dropr send --once`` delivering over https. A wrong CA or a
wrong token leaves the messages in deferred/ with the peer marked down."""

import subprocess

import pytest

import dropr
from dropr import config as config_mod
from dropr.peers import Peers
from dropr.sender import transport
from dropr.errors import ConfigError, NotFound
from dropr.spool import Spool
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process

SHOP_TOKEN = "shop-token-5a1d0e4c9b"
SERVER_EXT = """subjectAltName = IP:127.0.0.1
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(folder, name):
    """A self-signed CA: ``folder/name.pem`` and ``folder/name.key``."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=dropr test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return folder / f"{name}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """{"ca", "wrong_ca", "cert", "key"}: a server certificate for IP 127.0.0.1
    signed by "ca", and a second CA that signed nothing."""
    harness.require("openssl")
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "ca")
    wrong_ca = make_ca(folder, "wrong-ca")
    (folder / "server.ext").write_text(SERVER_EXT)
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
            cwd=folder)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
            cwd=folder)
    return {"ca": ca, "wrong_ca": wrong_ca, "cert": folder / "server.pem",
            "key": folder / "server.key"}


@pytest.fixture(scope="module")
def https(tmp_path_factory, pki):
    """The real receiver on https://127.0.0.1:PORT with one client, "shop"."""
    root = tmp_path_factory.mktemp("https-receiver")
    port = harness.free_port()
    path = harness.write_config(root, port=port, sections={
        "receiver": {"certfile": str(pki["cert"]), "keyfile": str(pki["key"])},
        "receiver.clients.shop": {"token": SHOP_TOKEN, "channels": ["orders"]},
    }, peers={"local": {"url": f"https://127.0.0.1:{port}", "ca_file": str(pki["ca"])}})
    receiver = harness.Receiver(path).start()
    yield receiver
    receiver.stop()
    harness.remove_queues(root / "client")


@pytest.fixture
def producer(tmp_path, https):
    """``make(**peer_keys) -> (config_path, spool)``: a producer host whose
    peer "tls" is the https receiver; its SysV queues are removed after."""
    def make(**peer):
        path = harness.write_config(tmp_path, peers={"tls": {"url": https.url, **peer}})
        return path, Spool(config_mod.load(path).client.spool, fsync=False)
    yield make
    harness.remove_queues(tmp_path / "client")


def put_three(config_path, channel="orders"):
    client = dropr.Client(str(config_path))
    return [client.put(f"message {i}".encode(), peer="tls", channel=channel) for i in range(3)]


def server_store(receiver):
    return Store(receiver.config.receiver.store, fsync=False)


def test_delivers_over_https_with_the_ca_and_the_token(producer, https, pki):
    path, spool = producer(ca_file=str(pki["ca"]), token=SHOP_TOKEN)
    ids = put_three(path)
    harness.run_dropr(path, "send", "--once")
    assert (spool.count("queue"), spool.count("deferred"), spool.count("dead")) == (0, 0, 0)
    store = server_store(https)
    for i, mid in enumerate(ids):
        m = store.get("orders", mid)
        assert (m.read(), m.client) == (f"message {i}".encode(), "shop")  # from the token
    assert Peers(spool).state("tls") == {}


def test_token_from_a_file(producer, https, pki, tmp_path):
    (tmp_path / "shop.token").write_text(SHOP_TOKEN + "\n")
    path, spool = producer(ca_file=str(pki["ca"]), token_file=str(tmp_path / "shop.token"))
    ids = put_three(path)
    harness.run_dropr(path, "send", "--once")
    assert spool.count("deferred") == 0
    assert all(server_store(https).get("orders", mid).client == "shop" for mid in ids)


@pytest.mark.parametrize("peer, error", [
    ({"ca_file": "wrong_ca", "token": SHOP_TOKEN}, "(curl error 60)"),
    ({"ca_file": "ca", "token": "not-the-token"}, "HTTP 401 unauthorized"),
    ({"ca_file": "ca"}, "HTTP 401 unauthorized"),
])
def test_wrong_ca_or_token_defers_and_marks_the_peer_down(producer, https, pki, peer, error):
    channel = peer.pop("channel", "orders")
    peer["ca_file"] = str(pki[peer["ca_file"]])
    path, spool = producer(**peer)
    ids = put_three(path, channel)
    harness.run_dropr(path, "send", "--once")
    assert (spool.count("queue"), spool.count("deferred"), spool.count("dead")) == (0, 3, 0)
    state = Peers(spool).state("tls")
    assert state["failures"] == 1 and error in state["error"], state
    assert SHOP_TOKEN not in state["error"]
    for mid in ids:
        with pytest.raises(NotFound):
            server_store(https).get(channel, mid)


def test_a_channel_the_token_may_not_write_defers_its_messages_alone(producer, https, pki):
    path, spool = producer(ca_file=str(pki["ca"]), token=SHOP_TOKEN)
    put_three(path, "audit")
    harness.run_dropr(path, "send", "--once")
    assert (spool.count("queue"), spool.count("deferred"), spool.count("dead")) == (0, 3, 0)
    assert Peers(spool).state("tls") == {}  # the token's other channels are fine


@harness.needs('curl')
def test_curl_with_the_ca_and_the_token(https, pki):
    url = https.url + "/v1/channels/orders/messages"

    def curl(*args):
        return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-D", "-", "--cacert",
                               str(pki["ca"]), "--data-binary", "hi", *args, url],
                              capture_output=True, text=True, timeout=30)
    answer = curl("-H", f"Authorization: Bearer {SHOP_TOKEN}", "-H", "Idempotency-Key: CURL-TLS")
    assert answer.stdout.startswith("HTTP/1.1 201"), answer
    assert server_store(https).get("orders", "CURL-TLS").read() == b"hi"
    answer = curl()
    assert answer.stdout.startswith("HTTP/1.1 401")
    assert 'www-authenticate: bearer realm="dropr"' in answer.stdout.lower()
    # plain HTTP to the HTTPS port gets no answer that curl takes for HTTP
    plain = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            url.replace("https:", "http:")], capture_output=True, text=True,
                           timeout=30)
    assert plain.stdout != "201"


def test_probe_verifies_the_peer_like_the_sender(https, pki):
    peer = https.config.peers["local"]
    assert transport.probe(peer) == (True, "")
    wrong = config_mod.from_dict({"peers": {"local": {"url": https.url,
                                                      "ca_file": str(pki["wrong_ca"])}}})
    ok, reason = transport.probe(wrong.peers["local"])
    assert not ok and "(curl error 60)" in reason


def test_start_up_log_says_https_and_who_is_served(https):
    log = https.log_path.read_text()
    assert f"serving HTTPS with certificate {https.config.receiver.certfile}" in log
    assert "clients known by bearer token: shop" in log


def test_a_key_that_does_not_match_the_certificate_stops_the_receiver(tmp_path, pki):
    path = harness.write_config(tmp_path, sections={
        "receiver": {"certfile": str(pki["cert"]), "keyfile": str(pki["ca"].with_suffix(".key"))}})
    result = harness.run_dropr(path, "receiver", check=False, timeout=30)
    assert result.returncode != 0
    assert b"[receiver] certfile, keyfile: cannot load" in result.stderr


def test_unreadable_peer_token_file_stops_the_sender_before_it_claims(producer, pki, tmp_path):
    path, spool = producer(ca_file=str(pki["ca"]), token_file=str(tmp_path / "missing.token"))
    put_three(path)
    result = harness.run_dropr(path, "send", "--once", check=False)
    assert result.returncode != 0
    assert b"[peers.tls] token_file: cannot read" in result.stderr
    assert (spool.count("queue"), spool.count("active")) == (3, 0)


@pytest.mark.parametrize("peer, expected", [
    ({"url": "http://127.0.0.1:1", "ca_file": "ca.pem"}, r"\[peers.p\] ca_file: only for an "
                                                         "https:// url"),
    ({"url": "https://h:1", "token": SHOP_TOKEN, "token_file": "f"},
     r"\[peers.p\] token, token_file"),
    ({"url": "https://h:1", "token": "with\nnewline"}, r"\[peers.p\] token: expected a token"),
])
def test_bad_peer_tls_or_token_config_names_the_key(peer, expected):
    with pytest.raises(ConfigError, match=expected):
        config_mod.from_dict({"peers": {"p": peer}})


@pytest.mark.parametrize("receiver, expected", [
    ({"certfile": "c.pem"}, r"\[receiver\] keyfile: certfile and keyfile go together"),
    ({"keyfile": "k.pem"}, r"\[receiver\] certfile: certfile and keyfile go together"),
])
def test_certfile_and_keyfile_go_together(receiver, expected):
    with pytest.raises(ConfigError, match=expected):
        config_mod.from_dict({"receiver": receiver})
