"""Who may upload: bearer tokens (401 without a valid one), channel
allow-lists (403), the client name taken from the token, and the
loopback-only mode of a receiver without tokens."""

import io

import pytest
from falcon import testing

from dropr import config as config_mod
from dropr.errors import ConfigError
from dropr.receiver import create_app
from dropr.receiver.auth import Clients, bind_is_local, is_loopback, startup_notes
from dropr.store import Store
from tests.receiver import forms
from tests.receiver.conftest import Ids, snapshot
from tests.support import harness

SHOP_TOKEN = "shop-token-0123456789abcdef"
OPS_TOKEN = "ops-token-fedcba9876543210"
SCRAPE_TOKEN = "scrape-token-0a1b2c3d4e5f"
URL = "/v1/channels/orders/messages"


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def make(tmp_path, *, clients=None, bind=None):
    """(TestClient, Store, Config) for a receiver with ``clients``:
    {name: {"token"|"token_file": ..., "channels": [...]}}."""
    sections = {f"receiver.clients.{name}": keys for name, keys in (clients or {}).items()}
    if bind:
        sections["receiver"] = {"bind": bind}
    config = config_mod.load(harness.write_config(tmp_path, sections=sections))
    store = Store(config.receiver.store, fsync=False, clock=lambda: 1700000000.0)
    return testing.TestClient(create_app(config, store=store, new_id=Ids())), store, config


@pytest.fixture
def secured(tmp_path):
    """A receiver with two clients: "shop" may write "orders" only; "ops",
    whose token is in a file, may write anywhere."""
    (tmp_path / "ops.token").write_text(f"\n  {OPS_TOKEN}\n")
    (tmp_path / "ops.token").chmod(0o600)
    return make(tmp_path, clients={"shop": {"token": SHOP_TOKEN, "channels": ["orders"]},
                                   "ops": {"token_file": str(tmp_path / "ops.token")}})


def post_batch(client, messages, headers, meta_client="host-1", **kwargs):
    body, _ = forms.batch(messages, client=meta_client)
    return client.simulate_post("/v1/batch", body=body,
                                headers={"Content-Type": forms.CONTENT_TYPE, **headers}, **kwargs)


# -- 401 ----------------------------------------------------------------------

@pytest.mark.parametrize("headers, error", [
    ({}, None),
    (auth("not-a-known-token"), "invalid_token"),
    (auth(SHOP_TOKEN + "x"), "invalid_token"),
    (auth(SHOP_TOKEN[:-1]), "invalid_token"),
    ({"Authorization": f"Basic {SHOP_TOKEN}"}, "invalid_request"),
    ({"Authorization": "Bearer"}, "invalid_request"),
    ({"Authorization": ""}, "invalid_request"),
    ({"Authorization": f"Bearer {SHOP_TOKEN} extra"}, "invalid_request"),
])
def test_missing_wrong_or_malformed_token_is_401_and_stores_nothing(secured, headers, error):
    client, store, _ = secured
    before = snapshot(store.root)
    for r in (client.simulate_post(URL, body=b"x", headers=headers),
              post_batch(client, [("A", "orders", 5, b"a")], headers)):
        assert (r.status_code, r.json["error"]["code"]) == (401, "unauthorized")
        challenge = r.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="dropr"')
        assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    assert snapshot(store.root) == before


def test_unknown_route_without_token_is_401_not_404(secured):
    client, _, _ = secured
    assert client.simulate_get("/v1/nothing-here").status_code == 401
    assert client.simulate_get("/v1/nothing-here", headers=auth(OPS_TOKEN)).status_code == 404


def test_read_only_routes_are_open_and_metrics_is_not(secured):
    client, _, _ = secured
    assert client.simulate_get("/v1/health").status_code == 200
    assert client.simulate_get("/v1/openapi.json").status_code == 200
    assert client.simulate_get("/v1/ready").status_code in (200, 503)
    assert client.simulate_get("/metrics").status_code == 401
    assert client.simulate_get("/metrics", headers=auth(OPS_TOKEN)).status_code == 200
    # open for reading only: a POST there still needs a token
    assert client.simulate_post("/v1/health").status_code == 401


def test_scheme_is_case_insensitive(secured):
    client, store, _ = secured
    r = client.simulate_post(URL, body=b"x", headers={"Authorization": f"bEaReR  {SHOP_TOKEN}"})
    assert r.status_code == 201


# -- the client name comes from the token ---------------------------------------

def test_plain_post_is_stored_with_the_tokens_client(secured):
    client, store, _ = secured
    for token, name in ((SHOP_TOKEN, "shop"), (OPS_TOKEN, "ops")):
        r = client.simulate_post(URL, body=name.encode(), headers={
            **auth(token), "Idempotency-Key": f"P-{name}", "Dropr-Client": "someone-else"})
        assert r.status_code == 201, r.json
        assert store.get("orders", f"P-{name}").client == name


def test_batch_is_stored_with_the_tokens_client_whatever_meta_says(secured):
    client, store, _ = secured
    r = post_batch(client, [("B1", "orders", 5, b"one"), ("B2", "audit", 1, b"two")],
                   auth(OPS_TOKEN), meta_client="shop")
    assert r.status_code == 200, r.json
    assert {store.get("orders", "B1").client, store.get("audit", "B2").client} == {"ops"}


def test_token_file_is_read_stripped(secured):
    client, store, config = secured
    ops = next(c for c in config.receiver.clients if c.name == "ops")
    assert config.token_of(ops) == OPS_TOKEN
    assert client.simulate_post(URL, body=b"x", headers=auth(OPS_TOKEN)).status_code == 201


# -- 403: channels --------------------------------------------------------------

class Unreadable(io.RawIOBase):
    """A request body that fails the test if anyone reads it."""

    def readable(self):
        return True

    def readinto(self, b):
        raise AssertionError("the body was read")


def test_plain_post_to_a_channel_not_allowed_is_403_before_the_body_is_read(secured):
    client, store, _ = secured
    before = snapshot(store.root)
    r = client.simulate_post("/v1/channels/audit/messages", headers=auth(SHOP_TOKEN),
                             extras={"wsgi.input": Unreadable(), "CONTENT_LENGTH": "5"})
    assert (r.status_code, r.json["error"]["code"]) == (403, "forbidden")
    assert "'shop' may not write to channel 'audit'" in r.json["error"]["message"]
    assert snapshot(store.root) == before


def test_batch_with_one_channel_not_allowed_is_403_and_stores_nothing(secured):
    client, store, _ = secured
    before = snapshot(store.root)
    r = post_batch(client, [("C1", "orders", 5, b"ok"), ("C2", "audit", 5, b"no"),
                            ("C3", "orders", 5, b"ok")], auth(SHOP_TOKEN))
    assert (r.status_code, r.json["error"]["code"]) == (403, "forbidden")
    assert "'audit'" in r.json["error"]["message"]
    assert snapshot(store.root) == before
    # the same client, allowed channels only: stored
    r = post_batch(client, [("C1", "orders", 5, b"ok")], auth(SHOP_TOKEN))
    assert r.json["results"] == {"C1": {"status": "stored"}}


def test_client_with_no_channels_may_write_nothing(tmp_path):
    client, store, _ = make(tmp_path, clients={"scraper": {"token": SCRAPE_TOKEN,
                                                           "channels": []}})
    assert client.simulate_post(URL, body=b"x", headers=auth(SCRAPE_TOKEN)).status_code == 403
    assert client.simulate_get("/metrics", headers=auth(SCRAPE_TOKEN)).status_code == 200


# -- no tokens: loopback only ---------------------------------------------------

@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_without_tokens_loopback_clients_are_served_as_local(tmp_path, address):
    client, store, _ = make(tmp_path)
    r = client.simulate_post(URL, body=b"x", headers={"Idempotency-Key": "L1"},
                             remote_addr=address)
    assert r.status_code == 201, r.json
    assert store.get("orders", "L1").client == "local"


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.7", "2001:db8::1",
                                     "::ffff:10.0.0.1", "0.0.0.0"])
def test_without_tokens_other_clients_get_403(tmp_path, address):
    client, store, _ = make(tmp_path)
    before = snapshot(store.root)
    r = client.simulate_post(URL, body=b"x", remote_addr=address, headers=auth("anything"))
    assert (r.status_code, r.json["error"]["code"]) == (403, "forbidden")
    assert "loopback clients only" in r.json["error"]["message"]
    r = post_batch(client, [("A", "orders", 5, b"a")], {}, remote_addr=address)
    assert r.status_code == 403
    assert snapshot(store.root) == before
    assert client.simulate_get("/v1/health", remote_addr=address).status_code == 200


def test_without_tokens_a_unix_socket_serves_everyone_on_the_host(tmp_path):
    client, store, _ = make(tmp_path, bind=f"unix:{tmp_path / 'r.sock'}")
    r = client.simulate_post(URL, body=b"x", remote_addr="10.9.9.9")
    assert r.status_code == 201


def test_with_tokens_loopback_needs_a_token_too(secured):
    client, _, _ = secured
    assert client.simulate_post(URL, body=b"x", remote_addr="127.0.0.1").status_code == 401


# -- config and start-up ----------------------------------------------------------

@pytest.mark.parametrize("clients, expected", [
    ({"a": {}}, r"\[receiver.clients.a\] token: required"),
    ({"a": {"token": SHOP_TOKEN, "token_file": "f"}}, r"\[receiver.clients.a\] token, token_file: "
                                              "give one of them, not both"),
    ({"a": {"token": "has space"}}, r"\[receiver.clients.a\] token: expected a token"),
    ({"a": {"token": SHOP_TOKEN, "channels": "orders"}}, r"\[receiver.clients.a\] channels: expected "
                                                  "a list"),
    ({"a": {"token": SHOP_TOKEN, "channels": ["ok", "../etc"]}}, r"\[receiver.clients.a\] channels: "
                                                          "bad channel"),
    ({"a/b": {"token": SHOP_TOKEN}}, r"\[receiver.clients.a/b\]: bad client name"),
    ({"a": {"token": SHOP_TOKEN, "chanels": []}}, r"\[receiver.clients.a\] chanels: unknown key "
                                           r"\(did you mean 'channels'\?\)"),
])
def test_bad_client_config_names_the_key(clients, expected):
    with pytest.raises(ConfigError, match=expected):
        config_mod.from_dict({"receiver": {"clients": clients}})


def test_token_values_never_show_in_errors_or_reprs():
    with pytest.raises(ConfigError) as e:
        config_mod.from_dict({"receiver": {"clients": {"a": {"token": "sec ret"}}}})
    assert "sec ret" not in str(e.value)
    config = config_mod.from_dict({"receiver": {"clients": {"a": {"token": "s3cr3t-s3cr3t-s3cr3t"}}},
                                   "peers": {"p": {"url": "http://host:1",
                                                   "token": "s3cr3t-s3cr3t-s3cr3t"}}})
    assert "s3cr3t" not in repr(config)


@pytest.mark.parametrize("content, expected", [
    (None, "token_file: cannot read .*: No such file"),
    (b" \n\n", "token_file: .* holds no token"),
    (b"two words\n", "token_file: the token in .*: expected a token"),
])
def test_bad_token_file_stops_the_receiver_naming_the_key(tmp_path, content, expected):
    path = tmp_path / "t.token"
    if content is not None:
        path.write_bytes(content)
        path.chmod(0o600)
    config = config_mod.from_dict({"receiver": {"clients": {"a": {"token_file": str(path)}}}})
    with pytest.raises(ConfigError, match=r"\[receiver.clients.a\] " + expected):
        Clients.load(config)


def test_two_clients_with_one_token_is_a_config_error(tmp_path):
    (tmp_path / "t").write_text(SHOP_TOKEN + "\n")
    (tmp_path / "t").chmod(0o600)
    config = config_mod.from_dict({"receiver": {"clients": {
        "a": {"token": SHOP_TOKEN}, "b": {"token_file": str(tmp_path / "t")}}}})
    with pytest.raises(ConfigError, match=r"\[receiver.clients.b\] token: the same as "
                                          r"\[receiver.clients.a\]"):
        Clients.load(config)


def test_loopback_and_bind_helpers():
    assert all(map(is_loopback, ["127.0.0.1", "127.255.0.1", "::1", "::ffff:127.0.0.2"]))
    assert not any(map(is_loopback, ["", "localhost", "10.0.0.1", "::", "fe80::1%eth0"]))
    assert all(map(bind_is_local, ["127.0.0.1:80", "[::1]:80", "localhost:80", "unix:/r.sock"]))
    assert not any(map(bind_is_local, ["0.0.0.0:80", ":80", "[::]:80", "example.org:80"]))


@pytest.mark.parametrize("receiver, clients, expected", [
    ({"bind": "127.0.0.1:8080"}, {}, [("info", "serving loopback clients only")]),
    ({"bind": "0.0.0.0:8080"}, {}, [("warning", "bound to 0.0.0.0:8080 but no "
                                                "[receiver.clients] tokens")]),
    ({"bind": "0.0.0.0:8080"}, {"a": {"token": SHOP_TOKEN}},
     [("info", "clients known by bearer token: a"), ("warning", "without TLS")]),
    ({"bind": "0.0.0.0:8080", "certfile": "c", "keyfile": "k"}, {"a": {"token": SHOP_TOKEN}},
     [("info", "clients known by bearer token: a")]),
])
def test_startup_notes_say_who_is_served(receiver, clients, expected):
    config = config_mod.from_dict({"receiver": {**receiver, "clients": clients}})
    notes = startup_notes(config, Clients.load(config))
    assert [level for level, _ in notes] == [level for level, _ in expected]
    for (_, text), (_, part) in zip(notes, expected):
        assert part in text


# -- one client cannot drop another's message ----------------------------------

def test_one_client_cannot_pre_empt_anothers_idempotency_key(secured):
    client, store, _ = secured
    key = {"Idempotency-Key": "order-1234"}
    r = client.simulate_post(URL, body=b"shop's", headers={**auth(SHOP_TOKEN), **key})
    assert (r.status_code, r.json["status"]) == (201, "stored")
    r = client.simulate_post(URL, body=b"ops'", headers={**auth(OPS_TOKEN), **key})
    assert (r.status_code, r.json["status"]) == (201, "stored")
    # A re-send by the same client (its answer was lost) is still a duplicate.
    r = client.simulate_post(URL, body=b"shop's", headers={**auth(SHOP_TOKEN), **key})
    assert (r.status_code, r.json["status"]) == (200, "duplicate")
    r = post_batch(client, [("order-1234", "orders", 5, b"ops'")], auth(OPS_TOKEN))
    assert r.json["results"] == {"order-1234": {"status": "duplicate"}}
    stored = {m.client: m.read() for m in store.messages("orders")}
    assert stored == {"shop": b"shop's", "ops": b"ops'"}


@pytest.mark.process
def test_one_client_cannot_drop_anothers_message_on_the_real_receiver(tmp_path):
    import http.client
    import json

    path = harness.write_config(tmp_path, sections={
        "receiver": {"workers": 1},
        "receiver.clients.shop-a": {"token": SHOP_TOKEN},
        "receiver.clients.shop-b": {"token": OPS_TOKEN}})
    receiver = harness.Receiver(path).start()
    host, port = receiver.url.rsplit("/", 1)[1].split(":")

    def post(token, body):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", URL, body=body, headers={
                **auth(token), "Idempotency-Key": "order-1234"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()
    try:
        assert post(SHOP_TOKEN, b"a's order") == (
            201, {"id": "order-1234", "channel": "orders", "status": "stored"})
        assert post(OPS_TOKEN, b"b's order")[0] == 201
        assert post(SHOP_TOKEN, b"a's order") == (
            200, {"id": "order-1234", "channel": "orders", "status": "duplicate"})
    finally:
        receiver.stop()
        harness.remove_queues(tmp_path / "client")
    store = Store(tmp_path / "server", fsync=False)
    assert {m.client: m.read() for m in store.messages("orders")} == {
        "shop-a": b"a's order", "shop-b": b"b's order"}


def test_a_token_after_a_no_break_space_is_malformed(tmp_path):
    """str.split() takes U+00A0 for a space; HTTP does not."""
    from dropr.receiver.auth import Authenticate, Clients, _digest, Identity
    from dropr.errors import Unauthorized

    auth = Authenticate(Clients([(_digest("token-0123456789"), Identity("c"))]), bind="127.0.0.1:1")
    assert auth._by_token("Bearer token-0123456789").name == "c"
    assert auth._by_token("Bearer   token-0123456789 ").name == "c"
    for header in ("Bearer\xa0token-0123456789", "Bearer token-0123456789\xa0",
                   "Bearer\u3000token-0123456789", "Bearer token 0123456789"):
        with pytest.raises(Unauthorized, match="malformed"):
            auth._by_token(header)
