"""POST /v1/channels/{channel}/messages, GET /v1/health and the error answers
on falcon's TestClient."""

import logging
import os
import threading
import time

import pytest
from falcon import testing

from dropr import config as config_mod
from dropr.receiver import create_app
from dropr.store import Store
from tests.receiver.conftest import files, snapshot
from tests.support import harness

URL = "/v1/channels/orders/messages"


def test_health(client_store):
    client, _ = client_store
    r = client.simulate_get("/v1/health")
    assert (r.status_code, r.json) == (200, {"status": "ok"})


@pytest.mark.parametrize("size", [0, 5 * 1024 * 1024])
def test_body_is_stored_byte_identical(make_client, size):
    client, store = make_client(fsync=True)
    data = os.urandom(size)
    r = client.simulate_post(URL, body=data, headers={"Idempotency-Key": "K1",
                                                      "Content-Length": str(size)})
    assert (r.status_code, r.json) == (201, {"id": "K1", "channel": "orders", "status": "stored"})
    m = store.get("orders", "K1")
    assert (m.read(), m.priority, m.client) == (data, 5, "local")
    assert files(store.root / "tmp") == []


def test_same_key_is_stored_once_even_after_ack(client_store):
    client, store = client_store
    headers = {"Idempotency-Key": "K1", "Dropr-Priority": "0"}
    assert client.simulate_post(URL, body=b"one", headers=headers).status_code == 201
    r = client.simulate_post(URL, body=b"two", headers=headers)
    assert (r.status_code, r.json["status"]) == (200, "duplicate")
    store.ack(store.get("orders", "K1"))
    r = client.simulate_post(URL, body=b"three", headers=headers)
    assert (r.status_code, r.json["status"]) == (200, "duplicate")
    assert files(store.root) == ["done/orders/0.local@K1"]
    assert store.get("orders", "K1").read() == b"one"


def test_without_key_a_new_id_is_made(client_store):
    client, store = client_store
    ids = [client.simulate_post(URL, body=b"x").json["id"] for _ in range(2)]
    assert ids == ["GEN0001", "GEN0002"]
    assert store.count("orders") == 2


def test_a_made_id_sent_again_as_a_key_is_a_duplicate_over_its_whole_life(client_store):
    # A plain POST skips the look for earlier copies (its id is new); a keyed one never does.
    client, store = client_store
    made = client.simulate_post(URL, body=b"one").json["id"]
    headers = {"Idempotency-Key": made}
    (m,) = store.claim("orders", "worker-a")
    r = client.simulate_post(URL, body=b"two", headers=headers)
    assert (r.status_code, r.json["status"]) == (200, "duplicate")
    store.ack(m)
    r = client.simulate_post(URL, body=b"three", headers=headers)
    assert (r.status_code, r.json["status"]) == (200, "duplicate")
    assert files(store.root) == [f"done/orders/5.local@{made}"]


class RacyIds:
    """An id generator that reads its state, pauses, then writes it: called by
    two threads at once it makes the same id twice."""

    def __init__(self):
        self.last = 0

    def __call__(self):
        n = self.last + 1
        time.sleep(0.0005)  # widens the window a thread switch needs to race
        self.last = n
        return f"R{n:05d}"


def test_concurrent_posts_get_distinct_ids(tmp_path):
    """The worker serves requests on several threads that share one id generator."""
    config = config_mod.load(harness.write_config(tmp_path))
    client = testing.TestClient(create_app(config, new_id=RacyIds()))
    answers = []

    def post_many():
        answers.extend(client.simulate_post(URL, body=b"x").json["status"] for _ in range(40))
    threads = [threading.Thread(target=post_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ["stored"] * 160
    assert Store(config.receiver.store).count("orders") == 160


@pytest.mark.parametrize("path, headers, body, status, code", [
    ("/v1/channels/a..b/messages", {}, b"x", 400, "invalid"),
    ("/v1/channels/" + "c" * 65 + "/messages", {}, b"x", 400, "invalid"),
    ("/v1/channels/%2E%2E/messages", {}, b"x", 400, "invalid"),
    (URL, {"Idempotency-Key": "a/b"}, b"x", 400, "invalid"),
    (URL, {"Idempotency-Key": ""}, b"x", 400, "invalid"),
    (URL, {"Dropr-Priority": "10"}, b"x", 400, "invalid"),
    (URL, {"Dropr-Priority": "high"}, b"x", 400, "invalid"),
    (URL, {}, b"x" * 11, 413, "too_large"),
])
def test_bad_post_changes_nothing(make_client, path, headers, body, status, code):
    client, store = make_client(max_message_bytes=10)
    store.put("orders", "OLD", b"kept", priority=5, client="h")
    before = snapshot(store.root)
    r = client.simulate_post(path, body=body, headers=headers)
    assert (r.status_code, r.json["error"]["code"]) == (status, code)
    assert r.json["error"]["message"]
    assert snapshot(store.root) == before


#: How a server hands over a chunked body: no length, the header that says chunked.
CHUNKED = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}


def test_body_over_the_limit_without_content_length_changes_nothing(make_client):
    """A chunked body has no Content-Length: the store's limit stops it."""
    client, store = make_client(max_message_bytes=10)
    before = snapshot(store.root)
    r = client.simulate_post(URL, body=b"x" * 11, extras=CHUNKED)
    assert (r.status_code, r.json["error"]["code"]) == (413, "too_large")
    assert snapshot(store.root) == before
    r = client.simulate_post(URL, body=b"x" * 10, extras=CHUNKED)
    assert r.status_code == 201 and store.get("orders", r.json["id"]).read() == b"x" * 10


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/nowhere", 404, "not_found"),
    ("GET", "/v1/batch", 405, "method_not_allowed"),
    ("DELETE", URL, 405, "method_not_allowed"),
])
def test_routing_errors_are_json(client_store, method, path, status, code):
    client, _ = client_store
    r = client.simulate_request(method, path)
    assert (r.status_code, r.json["error"]["code"]) == (status, code)
    if status == 405:
        assert "POST" in r.headers["allow"]


class Broken(Store):
    """A store with a bug: the receiver must not show it to the client."""

    def stage(self, *args, **kwargs):
        raise KeyError("secret internals")


def test_unexpected_error_is_500_without_details_and_logged(make_client, tmp_path, caplog):
    client, _ = make_client(store=Broken(tmp_path / "broken"))
    with caplog.at_level(logging.ERROR, logger="dropr.receiver"):
        r = client.simulate_post(URL, body=b"x")
    assert r.status_code == 500
    assert r.json == {"error": {"code": "internal_error", "message": "internal error"}}
    assert "secret" not in r.text
    assert "secret internals" in caplog.text and "Traceback" in caplog.text
