"""The OpenAPI document: valid OpenAPI 3, served as kept in the repository,
in agreement with the app's routes, and precise: the app's real answers,
errors included, follow the documented schema of their status code, and the
documented name and id patterns accept exactly what dropr.names accepts."""

import json
import re
from pathlib import Path

import falcon
import pytest
from falcon import testing
from hypothesis import given
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

import dropr
from dropr import config as config_mod
from dropr import names
from dropr.errors import ValidationError
from dropr.receiver import create_app
from dropr.store import Store
from tests.receiver.forms import CONTENT_TYPE, batch, form, meta_part
from tests.support import harness

DOCUMENT = Path(dropr.__file__).parent / "receiver" / "openapi.json"
LOOPBACK = {"remote_addr": "127.0.0.1"}
TOKEN = "web-1-token-0123456789abcdef"


@pytest.fixture(scope="module")
def document():
    return json.loads(DOCUMENT.read_text())


def make_client(tmp_path, clients=None, **receiver):
    """A TestClient for a receiver with ``receiver`` keys and ``clients``
    ({name: [channels]}) known by the token TOKEN + name."""
    path = harness.write_config(tmp_path, sections={"receiver": receiver})
    extra = "".join(f'\n[receiver.clients.{name}]\ntoken = "{TOKEN}-{name}"\n'
                    f"channels = {json.dumps(channels)}\n"
                    for name, channels in (clients or {}).items())
    path.write_text(path.read_text() + extra)
    config = config_mod.load(path)
    store = Store(config.receiver.store, fsync=False)
    return testing.TestClient(create_app(config, store=store))


def app_routes(app):
    """{uri template: {methods with a responder}} by walking falcon's router.
    (``_roots`` is the compiled router's tree; there is no public walk.)"""
    found, nodes = {}, list(app._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children or ())
        if node.resource is not None:
            found[node.uri_template] = {m.lower() for m in falcon.COMBINED_METHODS
                                        if hasattr(node.resource, f"on_{m.lower()}")}
    return found


def test_the_document_is_valid_openapi_3(document):
    validate(document)
    assert document["openapi"].startswith("3.")
    assert document["info"]["version"] == dropr.__version__


def test_routes_and_document_agree(tmp_path, document):
    app = make_client(tmp_path).app
    documented = {path: {m for m in ops if m in {"get", "post", "put", "delete", "patch"}}
                  for path, ops in document["paths"].items()}
    assert app_routes(app) == documented
    for path, ops in document["paths"].items():
        in_path = set(re.findall(r"{(\w+)}", path))
        for op in ops.values():
            params = [document_ref(document, p) for p in op.get("parameters", [])]
            assert {p["name"] for p in params if p["in"] == "path"} == in_path


def test_the_document_is_served_as_kept(tmp_path):
    answer = make_client(tmp_path).simulate_get("/v1/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.content == DOCUMENT.read_bytes()


def document_ref(document, obj):
    """``obj`` with a ``$ref`` to the document followed."""
    while "$ref" in obj:
        node = document
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def check_answer(document, path, method, answer):
    """The answer's status is documented for the operation, and its body
    follows the documented schema."""
    responses = document["paths"][path][method]["responses"]
    status = str(answer.status_code)
    assert status in responses, f"{method.upper()} {path}: {status} is not documented"
    content = document_ref(document, responses[status])["content"]
    media = answer.headers["Content-Type"].split(";")[0]
    documented = next((c for m, c in content.items() if media.startswith(m)), None)
    assert documented is not None, f"{method.upper()} {path} {status}: {media} not documented"
    body = answer.json if media == "application/json" else answer.text
    schema = {"allOf": [documented["schema"]], "components": document["components"]}
    OAS30Validator(schema).validate(body)


MESSAGES = "/v1/channels/{channel}/messages"


def test_plain_post_answers_follow_the_document(tmp_path, document):
    client = make_client(tmp_path, max_message_bytes=8)

    def post(channel, body=b"hello", **headers):
        answer = client.simulate_post(f"/v1/channels/{channel}/messages", body=body,
                                      headers=headers, **LOOPBACK)
        check_answer(document, MESSAGES, "post", answer)
        return answer.status_code
    assert post("orders", **{"Idempotency-Key": "k1", "Dropr-Priority": "0"}) == 201
    assert post("orders", **{"Idempotency-Key": "k1", "Dropr-Priority": "0"}) == 200
    assert post("a..b") == 400
    assert post("orders", **{"Idempotency-Key": "no/slash"}) == 400
    assert post("orders", **{"Dropr-Priority": "10"}) == 400
    assert post("orders", body=b"123456789") == 413
    assert post("orders", body=b"", **{"Content-Length": "0"}) == 201
    no_length = client.simulate_post("/v1/channels/orders/messages", **LOOPBACK)
    check_answer(document, MESSAGES, "post", no_length)
    assert no_length.status_code == 411
    forbidden = client.simulate_post("/v1/channels/orders/messages", body=b"x",
                                     remote_addr="192.0.2.1")
    check_answer(document, MESSAGES, "post", forbidden)
    assert forbidden.status_code == 403


def test_answers_with_tokens_follow_the_document(tmp_path, document):
    client = make_client(tmp_path, clients={"web-1": ["orders"]})
    for headers, status in (({}, 401), ({"Authorization": "Bearer nope"}, 401),
                            ({"Authorization": f"Bearer {TOKEN}-web-1"}, 201)):
        answer = client.simulate_post("/v1/channels/orders/messages", body=b"x", headers=headers)
        check_answer(document, MESSAGES, "post", answer)
        assert answer.status_code == status
    other = client.simulate_post("/v1/channels/other/messages", body=b"x",
                                 headers={"Authorization": f"Bearer {TOKEN}-web-1"})
    check_answer(document, MESSAGES, "post", other)
    assert other.status_code == 403
    metrics = client.simulate_get("/metrics")
    check_answer(document, "/metrics", "get", metrics)
    assert metrics.status_code == 401


def test_batch_answers_follow_the_document(tmp_path, document):
    client = make_client(tmp_path, max_batch_bytes=4096)

    def upload(body, content_type=CONTENT_TYPE):
        answer = client.simulate_post("/v1/batch", body=body,
                                      headers={"Content-Type": content_type}, **LOOPBACK)
        check_answer(document, "/v1/batch", "post", answer)
        return answer
    body, _ = batch([("b1", "orders", 5, b"one"), ("b2", "orders", 5, b"two"),
                     ("b3", "bad..name", 5, b"three")])
    assert [r["status"] for r in upload(body).json["results"].values()] == [
        "stored", "stored", "rejected"]
    assert upload(body).json["results"]["b1"] == {"status": "duplicate"}
    assert upload(form(meta_part({"client": "c", "messages": "no"}))).status_code == 400
    assert upload(b"--x\r\nbroken").status_code == 400
    assert upload(b"{}", "application/json").status_code == 415
    big, _ = batch([("big", "orders", 5, b"x" * 5000)])
    assert upload(big).status_code == 413


def test_store_full_answers_follow_the_document(tmp_path, document):
    client = make_client(tmp_path, min_free_bytes=1 << 60)
    answer = client.simulate_post("/v1/channels/orders/messages", body=b"x", **LOOPBACK)
    check_answer(document, MESSAGES, "post", answer)
    assert answer.status_code == 507
    body, _ = batch([("b1", "orders", 5, b"one")])
    answer = client.simulate_post("/v1/batch", body=body,
                                  headers={"Content-Type": CONTENT_TYPE}, **LOOPBACK)
    check_answer(document, "/v1/batch", "post", answer)
    assert answer.status_code == 507
    ready = client.simulate_get("/v1/ready")
    check_answer(document, "/v1/ready", "get", ready)
    assert ready.status_code == 503


def test_read_only_endpoints_follow_the_document(tmp_path, document):
    client = make_client(tmp_path)
    for path in ("/v1/health", "/v1/ready", "/v1/openapi.json", "/metrics"):
        answer = client.simulate_get(path, **LOOPBACK)
        check_answer(document, path, "get", answer)
        assert answer.status_code == 200


def ecma_pattern(document, schema):
    """The documented pattern for Python's re: ECMA's '$' is Python's '\\Z'."""
    pattern = document["components"]["schemas"][schema]["pattern"]
    assert pattern.startswith("^") and pattern.endswith("$")
    return re.compile(pattern[:-1] + r"\Z")


def documented_accepts(document, schema, value):
    spec = document["components"]["schemas"][schema]
    return (spec["minLength"] <= len(value) <= spec["maxLength"]
            and ecma_pattern(document, schema).match(value) is not None)


def accepts(check, value):
    try:
        check(value)
        return True
    except ValidationError:
        return False


CANDIDATES = st.text(alphabet="aZ09_-.\\/ \n\u00e9\u0430", max_size=70) | st.from_regex(
    r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,70}\Z")


@given(CANDIDATES)
def test_the_name_pattern_is_the_grammar_of_dropr_names(document, value):
    assert documented_accepts(document, "Name", value) == accepts(names.check_name, value)


@given(CANDIDATES)
def test_the_id_pattern_is_the_grammar_of_dropr_ids(document, value):
    assert documented_accepts(document, "Id", value) == accepts(names.check_id, value)
