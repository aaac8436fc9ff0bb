"""Fuzzing the real receiver (gunicorn on loopback) from its OpenAPI
document with schemathesis: valid and invalid requests for every operation,
a bounded number of each. No answer may be a 5xx, and every 4xx must be the
JSON error body that the document promises.

``DROPR_FUZZ_EXAMPLES`` raises the examples per operation for a longer run.
"""

import collections
import os
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

import dropr.receiver
from tests import harness

pytestmark = pytest.mark.process

TOKEN = "fuzz-test-token-0123456789abcdef"
DOCUMENT = Path(dropr.receiver.__file__).with_name("openapi.json")
#: Examples per operation and mode: 6 operations, positive and negative,
#: a few hundred requests in all, well under a minute on two cores.
EXAMPLES = int(os.environ.get("DROPR_FUZZ_EXAMPLES", "30"))
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


@schema.parametrize()
@hypothesis.settings(deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_no_request_gets_a_server_error(running, case):
    response = case.call_and_validate(base_url=running.url, checks=[not_a_server_error],
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
