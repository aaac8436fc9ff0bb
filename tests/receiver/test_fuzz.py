"""Fuzzing the real receiver (gunicorn on loopback) from its OpenAPI
document with schemathesis: valid and invalid requests for every operation,
a bounded number of each. No answer may be a 5xx, every 4xx must be the
JSON error body that the document promises, and no request the document
forbids may be accepted.

``DROPR_FUZZ_EXAMPLES`` raises the examples per operation for a longer run.
"""

import collections
import os
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import negative_data_rejection, not_a_server_error

import dropr.receiver
from tests.support import harness

pytestmark = pytest.mark.process

TOKEN = "fuzz-test-token-0123456789abcdef"
DOCUMENT = Path(dropr.receiver.__file__).with_name("openapi.json")
#: Examples per operation and mode: 6 operations, positive and negative,
#: a few hundred requests in all, well under a minute on two cores.
EXAMPLES = int(os.environ.get("DROPR_FUZZ_EXAMPLES", "50"))
#: Requests made, by operation; the last test checks the run was not vacuous.
REQUESTS = collections.Counter()

schema = schemathesis.openapi.from_path(DOCUMENT)
schema.config.generation.update(modes=["positive", "negative"], max_examples=EXAMPLES)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One receiver with a client token, small limits and a short body timeout."""
    root = tmp_path_factory.mktemp("fuzz")
    receiver = {"max_message_bytes": 64 * 1024, "max_batch_messages": 20,
                "max_batch_bytes": 1024 * 1024, "body_timeout": 5.0}
    config_path = harness.write_config(root, sections={"receiver": receiver})
    with open(config_path, "a") as f:
        f.write(f'\n[receiver.clients.fuzzer]\ntoken = "{TOKEN}"\n')
    r = harness.Receiver(config_path).start()
    yield r
    r.stop()
    harness.remove_queues(root / "client")


@schemathesis.check
def forbidden_data_rejected(ctx, response, case):
    """schemathesis' negative_data_rejection: a request the document forbids
    is refused. But a header the document does not name is not forbidden
    (HTTP lets every client send more: User-Agent, Accept, ...), and a
    "missing" body sent with ``Content-Length: 0`` is an empty message. Any
    4xx is a refusal (schemathesis expects a few: not 411 or 413)."""
    if 400 <= response.status_code < 500:
        return None
    data = case.meta.phase.data if case.meta is not None else None
    if (_value(getattr(data, "scenario", None)) == "object_unexpected_properties"
            and _value(getattr(data, "parameter_location", None)) == "header"):
        return None
    if (getattr(data, "description", None) == "Missing request body"
            and response.request.headers.get("Content-Length") == "0"):
        return None
    return negative_data_rejection(ctx, response, case)


def _value(enum):
    return getattr(enum, "value", None)


@schema.parametrize()
@hypothesis.settings(deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_no_request_gets_a_server_error(running, case):
    response = case.call_and_validate(base_url=running.url, checks=[not_a_server_error, forbidden_data_rejected],
                                      headers={"Authorization": f"Bearer {TOKEN}"},
                                      timeout=30)
    REQUESTS[case.operation.label] += 1
    if 400 <= response.status_code < 500:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and error["message"], response.text


def test_the_fuzzer_made_requests_to_every_operation():
    """Runs after the fuzz run above (pytest keeps the file's order)."""
    print(f"\nfuzz: {sum(REQUESTS.values())} requests: {dict(REQUESTS)}")
    assert len(REQUESTS) == len(list(schema.get_all_operations()))
    assert sum(REQUESTS.values()) >= 6 * 10
