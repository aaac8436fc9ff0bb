"""The JetStream store on a real nats-server that wants credentials: user and
password, token, nkey; and docs/backends.md's example of TLS with client
certificates and users whose permissions let only the receivers publish."""

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from dropr import config as config_mod
from dropr.bench.cluster import available, nats_server
from dropr.errors import ConfigError, StoreUnavailable
from dropr.store import Failures
from dropr.store.jetstream import JetStreamStore
from dropr.store.jetstream.wire import connect_options
from tests.support import harness

pytestmark = [pytest.mark.process,
              pytest.mark.skipif(not available(), reason="nats-server is not installed")]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "backends.md"
PASSWORD = "pw-of-the-receiver-0123"
TOKEN = "nats-token-0123456789abcdef"


class Server:
    """One nats-server with JetStream and ``conf`` (its auth and TLS) on a
    free loopback port; stopped by pid."""

    def __init__(self, root, conf, *, env=None):
        self.root, self.port = Path(root), harness.free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "nats.conf"
        path.write_text(f'listen: "127.0.0.1:{self.port}"\n'
                        f'jetstream {{ store_dir: "{self.root / "js"}" }}\n{conf}\n')
        self.log = self.root / "server.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([nats_server(), "-c", str(path)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **(env or {})})

    def wait_ready(self):
        def ready():
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            return "Server is ready" in self.log.read_text()
        harness.wait_for(ready, 15, what="nats-server ready")
        return self

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)


@pytest.fixture
def server(tmp_path):
    """``server(conf, env=None)``: a started :class:`Server`, stopped afterwards."""
    started = []

    def start(conf, env=None):
        started.append(Server(tmp_path / f"nats{len(started)}", conf, env=env))
        return started[-1].wait_ready()
    yield start
    for s in started:
        s.stop()


def store_of(tmp_path, url, **keys):
    settings = config_mod.from_dict({"store": {
        "backend": "jetstream", "servers": [url], "replicas": 1, "connect_timeout": 0.5,
        "publish_timeout": 1.5, "ack_wait": 5.0, **keys}}).store
    return JetStreamStore(settings, scratch=tmp_path / "scratch")


def publish(store, mid, body=b"x"):
    return store.publish(store.stage("orders", mid, body, priority=5, client="shop"))


def nkey_pair(tmp_path):
    """(seed file, public key) of a new user nkey."""
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "user.nk"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return path, nkeys.from_seed(seed).public_key.decode()


@pytest.mark.parametrize("method", ["user", "token", "nkey"])
def test_the_store_authenticates_and_a_refused_login_is_logged(tmp_path, server, caplog, method):
    if method == "user":
        conf = f'authorization {{ users = [{{user: dropr, password: "{PASSWORD}"}}] }}'
        keys = {"user": "dropr", "password": PASSWORD}
        wrong = {"user": "dropr", "password": "not-the-password"}
    elif method == "token":
        conf = f'authorization {{ token: "{TOKEN}" }}'
        keys, wrong = {"token": TOKEN}, {"token": "not-the-token-at-all"}
    else:
        seed, public = nkey_pair(tmp_path)
        conf = f'authorization {{ users = [{{nkey: "{public}"}}] }}'
        keys = {"nkey_seed_file": str(seed)}
        other, _ = nkey_pair(tmp_path / "other")
        wrong = {"nkey_seed_file": str(other)}
    url = f"nats://127.0.0.1:{server(conf).port}"
    store = store_of(tmp_path, url, **keys)
    try:
        assert publish(store, "ID1") == "stored"
        assert [m.id for m in store.messages("orders")] == ["ID1"]
    finally:
        store.close()
    caplog.set_level(logging.WARNING, logger="dropr.store.jetstream")
    for settings in ({}, wrong):
        refused = store_of(tmp_path, url, connect_timeout=0.2, publish_timeout=0.5, **settings)
        try:
            with pytest.raises(StoreUnavailable):
                publish(refused, "ID2")
        finally:
            refused.close()
    assert any("uthorization" in r.getMessage() for r in caplog.records)


def test_unreadable_credentials_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"\[store\] nkey_seed_file: cannot read .*missing.nk"):
        store_of(tmp_path, "nats://127.0.0.1:1", nkey_seed_file=str(tmp_path / "missing.nk"))
    with pytest.raises(ConfigError, match=r"\[store\] ca_file: cannot load"):
        (tmp_path / "ca.pem").write_text("not a certificate\n")
        store_of(tmp_path, "tls://127.0.0.1:1", ca_file=str(tmp_path / "ca.pem"))


@pytest.mark.parametrize("keys, expected", [
    ({"user": "a"}, r"\[store\] password: user and password go together"),
    ({"password": "p"}, r"\[store\] user: user and password go together"),
    ({"token": TOKEN, "nkey_seed_file": "s.nk"}, r"\[store\] token, nkey_seed_file: give one"),
    ({"certfile": "c.pem"}, r"\[store\] keyfile: certfile and keyfile go together"),
    ({"ca_file": "ca.pem"}, r"\[store\] ca_file: only for tls:// servers, got 'nats://"),
    ({"token": "short"}, r"\[store\] token: a token of 5 characters"),
])
def test_bad_nats_credentials_config_names_the_key(keys, expected):
    with pytest.raises(ConfigError, match=expected):
        config_mod.from_dict({"store": {"backend": "jetstream", **keys}})


# -- the documented permissions, with TLS ---------------------------------------

CLIENT_EXT = """basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
"""


def documented_server_conf(pki):
    """docs/backends.md's example, its /etc/nats files replaced by the test's."""
    text = DOCS.read_text()
    conf = re.search(r"<!-- example: nats-permissions -->\n```\n(.*?)```", text, re.DOTALL)
    assert conf, "docs/backends.md has no nats-permissions example"
    return (conf.group(1).replace("/etc/nats/n1.pem", str(pki["cert"]))
            .replace("/etc/nats/n1.key", str(pki["key"]))
            .replace("/etc/nats/ca.pem", str(pki["ca"])))


@pytest.fixture
def nats_pki(tmp_path):
    from tests.test_tls import SERVER_EXT, make_ca, openssl

    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    folder = tmp_path / "pki"
    folder.mkdir()
    make_ca(folder, "ca")
    make_ca(folder, "wrong-ca")
    (folder / "server.ext").write_text(SERVER_EXT)
    (folder / "client.ext").write_text(CLIENT_EXT)
    for name, ext in (("server", "server.ext"), ("client", "client.ext")):
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=dropr test {name}", cwd=folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext,
                cwd=folder)
    return {"ca": folder / "ca.pem", "wrong_ca": folder / "wrong-ca.pem",
            "cert": folder / "server.pem", "key": folder / "server.key",
            "client_cert": folder / "client.pem", "client_key": folder / "client.key"}


def test_only_receivers_may_publish_under_the_documented_permissions(tmp_path, server, nats_pki):
    env = {"RECEIVER_PASSWORD": "receiver-pw-0123", "CONSUMER_PASSWORD": "consumer-pw-0123"}
    url = f"tls://127.0.0.1:{server(documented_server_conf(nats_pki), env).port}"
    tls = {"ca_file": str(nats_pki["ca"]), "certfile": str(nats_pki["client_cert"]),
           "keyfile": str(nats_pki["client_key"])}
    receiver = store_of(tmp_path, url, user="dropr-receiver",
                        password=env["RECEIVER_PASSWORD"], **tls)
    consumer = store_of(tmp_path, url, user="dropr-consumer",
                        password=env["CONSUMER_PASSWORD"], **tls)
    try:
        assert publish(receiver, "OK1") == "stored" and publish(receiver, "BAD1") == "stored"
        claimed = {m.id: m for m in consumer.claim("orders", "c1", limit=2)}
        assert sorted(claimed) == ["BAD1", "OK1"]
        consumer.ack(claimed["OK1"])
        consumer.bury(claimed["BAD1"], Failures(3, 0.0, "exit 1"))
        harness.wait_for(lambda: receiver.count("orders") == 0, 10, what="settled")
        assert [m.id for m in consumer.messages("orders", state="dead")] == ["BAD1"]
        # The consumer's credentials cannot put a message in the queue.
        with pytest.raises(Exception):
            asyncio.run(_forge(url, consumer.settings))
        assert receiver.count("orders") == 0 and consumer.messages("orders") == []
    finally:
        receiver.close()
        consumer.close()
    # A server whose certificate does not chain to ca_file is not spoken to.
    wrong = store_of(tmp_path, url, user="dropr-receiver", password=env["RECEIVER_PASSWORD"],
                     **{**tls, "ca_file": str(nats_pki["wrong_ca"])})
    try:
        with pytest.raises(StoreUnavailable):
            publish(wrong, "ID3")
    finally:
        wrong.close()


async def _forge(url, settings):
    import nats

    nc = await nats.connect([url], allow_reconnect=False, connect_timeout=2,
                            **connect_options(settings))
    try:
        await nc.jetstream(timeout=1).publish(
            "dropr.orders.5", b"forged", headers={"Nats-Msg-Id": "shop@FORGED",
                                                   "Dropr-Client": "shop"})
    finally:
        await nc.close()


def test_a_credentials_file_is_handed_to_the_client(tmp_path):
    creds = tmp_path / "dropr.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n...\n")
    settings = config_mod.from_dict({"store": {"credentials_file": str(creds)}}).store
    assert connect_options(settings) == {"user_credentials": str(creds)}
