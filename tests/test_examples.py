"""The client examples of README.md, run as written with the real curl, node
and python against a real receiver. The one change made to them is the
documented one: "127.0.0.1:8080" becomes the test receiver's address."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process

README = Path(__file__).resolve().parent.parent / "README.md"
DOCUMENTED_ADDRESS = "127.0.0.1:8080"
_EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.DOTALL)


def examples():
    """{name: (language, code)} of the marked fenced blocks of README.md."""
    found = {}
    for name, language, code in _EXAMPLE.findall(README.read_text()):
        assert name not in found, f"two README examples named {name}"
        found[name] = (language, code)
    return found


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    r = harness.Receiver(harness.write_config(root)).start()
    yield r
    r.stop()
    harness.remove_queues(root / "client")


#: Examples that use dropr itself: they run with this interpreter's packages,
#: in a folder whose conf/dropr.toml is the test receiver's config.
WITH_DROPR = {"python-call", "curl-call", "operate"}
#: Examples that are not run but written where the receiver reads them.
FILES = {"stock-responder", "stock-config"}


def run(receiver, name, cwd):
    """Run README example ``name`` in ``cwd``; returns its stdout (text)."""
    language, code = examples()[name]
    code = code.replace(DOCUMENTED_ADDRESS, receiver.url.removeprefix("http://"))
    if name in WITH_DROPR:
        (cwd / "conf").mkdir(exist_ok=True)
        (cwd / "conf" / "dropr.toml").write_text(receiver.config_path.read_text())
    if language == "sh":
        command = ["sh", "-c", f'PATH="{Path(sys.executable).parent}:$PATH"\n{code}']
    elif language == "js":
        (cwd / "post.mjs").write_text(code)
        command = ["node", "post.mjs"]
    elif language == "python" and name in WITH_DROPR:
        command = [sys.executable, "-c", code]
    elif language == "python":
        command = [sys.executable, "-S", "-c", code]  # -S: no site-packages, stdlib alone
    else:
        raise AssertionError(f"example {name}: no runner for {language}")
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"example {name} failed: {done.stdout}{done.stderr}"
    return done.stdout


def stored(receiver, message_id):
    message = Store(receiver.config.receiver.store, fsync=False).get("orders", message_id)
    return message.read(), message.priority


def test_every_example_is_marked_and_addressed_as_documented():
    found = examples()
    assert set(found) == {"curl-post", "node-post", "python-post", "curl-batch", "curl-call",
                          "node-call", "python-call", "operate"} | FILES
    assert all(DOCUMENTED_ADDRESS in code for name, (_, code) in found.items()
               if name not in FILES | {"python-call", "operate"})


@harness.needs('curl')
def test_curl_post_stores_then_answers_duplicate(receiver, tmp_path):
    first = run(receiver, "curl-post", tmp_path).splitlines()
    assert json.loads(first[0]) == {"id": "order-1234", "channel": "orders", "status": "stored"}
    assert first[1] == "201"
    again = run(receiver, "curl-post", tmp_path).splitlines()
    assert json.loads(again[0])["status"] == "duplicate" and again[1] == "200"
    assert stored(receiver, "order-1234") == (b'{"order": 1234}', 2)


@harness.needs('node')
def test_node_fetch_post_is_stored(receiver, tmp_path):
    status, _, answer = run(receiver, "node-post", tmp_path).strip().partition(" ")
    assert status == "201"
    assert json.loads(answer) == {"id": "order-1237", "channel": "orders", "status": "stored"}
    assert stored(receiver, "order-1237") == (b'{"order":1237}', 2)


def test_python_stdlib_post_is_stored(receiver, tmp_path):
    out = run(receiver, "python-post", tmp_path).strip()
    assert out == "201 {'id': 'order-1238', 'channel': 'orders', 'status': 'stored'}"
    assert stored(receiver, "order-1238") == (b'{"order": 1238}', 2)


@harness.needs('curl')
def test_curl_batch_stores_both_messages(receiver, tmp_path):
    answer = json.loads(run(receiver, "curl-batch", tmp_path))
    assert answer == {"results": {"order-1235": {"status": "stored"},
                                  "order-1236": {"status": "stored"}}}
    assert stored(receiver, "order-1235") == (b'{"order": 1235}', 2)
    assert stored(receiver, "order-1236") == (b'{"order": 1236}', 5)


@pytest.fixture(scope="module")
def responder(tmp_path_factory):
    """A receiver whose config has the README's responder, next to it."""
    root = tmp_path_factory.mktemp("calls")
    path = harness.write_config(root)
    script = root / "stock.sh"
    script.write_text(examples()["stock-responder"][1])
    script.chmod(0o755)
    with open(path, "a") as f:
        f.write(examples()["stock-config"][1])
    r = harness.Receiver(path).start()
    yield r
    r.stop()
    harness.remove_queues(root / "client")


def test_python_caller_gets_the_shell_responders_answer(responder, tmp_path):
    assert run(responder, "python-call", tmp_path).strip() == "12"


def test_dropr_call_and_curl_get_the_shell_responders_answers(responder, tmp_path):
    assert run(responder, "curl-call", tmp_path).split() == ["12", "0"]


def test_node_caller_gets_the_shell_responders_answer(responder, tmp_path):
    assert run(responder, "node-call", tmp_path).strip() == "200 12"


def test_the_operators_verbs_work_as_the_readme_shows(receiver, tmp_path):
    out = run(receiver, "operate", tmp_path).splitlines()
    channels = [json.loads(line) for line in out if line.startswith('{"channel"')]
    out = [line for line in out if not line.startswith('{"channel"')]  # other examples' too
    assert out[0] == "held 1" and out[2] == "released 1"
    assert json.loads(out[1])["state"] == "hold"
    assert json.loads(out[3])["store"]["state"] == "queued"
    assert out[4] == "paused ops" and {"channel": "ops", "paused": True, "queued": 1}.items() \
        <= next(c for c in channels if c["channel"] == "ops").items()
    assert out[5] == "resumed ops"
    assert json.loads(out[6])["reason"] and out[7] == "requeued 1"
    assert out[8] == "would purge 0"
