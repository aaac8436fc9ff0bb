"""Direct messages through the real receiver (gunicorn, two workers): a shell
responder answers a Python caller, ``dropr call`` and curl byte for byte; a
failing, slow, flooded or missing responder gets its documented status and
leaves nothing running; tokens and channels are enforced; a peer that cannot
be reached fails at once and nothing is spooled."""

import concurrent.futures
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import psutil
import pycurl
import pytest

from dropr import CallFailed, Client, DroprError
from tests.support import harness

pytestmark = pytest.mark.process

TOKEN = "calls-test-token-0123456789"
#: Each slow responder sleeps this long with a marker in its command line, so
#: the test can tell whether any of its processes outlived the call.
SLEEP_MARK = "37.123"


def responders(tmp_path):
    count = tmp_path / "count"
    return {
        "receiver.responders.echo": {"command": ["sh", "-c", "printf 'got:'; cat"]},
        "receiver.responders.env": {
            "command": ["sh", "-c", 'printf "%s|%s|%s|%s" "$DROPR_CHANNEL" "$DROPR_CLIENT" '
                        '"$DROPR_SIZE" "${#DROPR_ID}"; [ -z "$DROPR_ATTEMPT" ]'],
            "content_type": "text/plain; charset=utf-8"},
        "receiver.responders.slow": {
            # A child in the background and the shell itself: both must die.
            "command": ["sh", "-c", f"sleep {SLEEP_MARK} & exec sleep {SLEEP_MARK}"],
            "timeout": 1.0},
        "receiver.responders.fail": {
            "command": ["sh", "-c", f"echo once >> {count}; echo secret-detail >&2; exit 3"]},
        "receiver.responders.killed": {"command": ["sh", "-c", "kill -9 $$"]},
        "receiver.responders.busy": {"command": ["sh", "-c", "sleep 1.5; echo done"],
                                     "max_concurrent": 1},
        "receiver.responders.big": {"command": ["head", "-c", "5000", "/dev/zero"],
                                    "max_reply_bytes": 1000},
        "receiver.responders.script": {"command": ["./answer.sh"]},
        "receiver.responders.secret": {"command": ["echo", "no"]},
    }


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    root = tmp_path_factory.mktemp("calls")
    (root / "answer.sh").write_text("#!/bin/sh\necho \"relative: $(cat)\"\n")
    (root / "answer.sh").chmod(0o755)
    sections = {"receiver": {"max_message_bytes": 100_000}, **responders(root)}
    sections[f"receiver.clients.caller"] = {
        "token": TOKEN,
        "channels": ["echo", "env", "slow", "fail", "busy", "big", "script", "nobody",
                     "killed"]}
    port = harness.free_port()
    dead = harness.free_port()
    peers = {"local": {"url": f"http://127.0.0.1:{port}", "token": TOKEN},
             "down": {"url": f"http://127.0.0.1:{dead}", "token": TOKEN},
             "twice": {"urls": [f"http://127.0.0.1:{port}", f"http://localhost:{port}"],
                       "token": TOKEN},
             "failover": {"urls": [f"http://127.0.0.1:{dead}", f"http://127.0.0.1:{port}"],
                          "token": TOKEN}}
    path = harness.write_config(root, port=port, sections=sections, peers=peers)
    receiver = harness.Receiver(path).start()
    yield receiver, path, root
    receiver.stop()
    harness.remove_queues(root / "client")


def post(url, channel, body, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{url}/v1/channels/{channel}/calls", data=body,
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def leftovers():
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if SLEEP_MARK in " ".join(p.info["cmdline"] or [])]


def test_a_python_caller_gets_the_answer_byte_for_byte(running):
    _, path, _ = running
    client = Client(path)
    body = bytes(range(256)) * 300
    assert client.call(body, peer="local", channel="echo") == b"got:" + body
    assert client.call(b"", peer="local", channel="echo", timeout=5) == b"got:"


def test_calls_reuse_one_kept_alive_connection(running):
    _, path, _ = running
    client = Client(path)
    client.call(b"1", peer="local", channel="echo")
    client.call(b"2", peer="local", channel="echo")
    (handle,) = client._caller._handles.values()
    assert handle.getinfo(pycurl.NUM_CONNECTS) == 0  # the second call made no new connection


def test_dropr_call_writes_the_answer_to_stdout(running, tmp_path):
    _, path, _ = running
    result = harness.run_dropr(path, "call", "--peer", "local", "--channel", "echo",
                               input=b"\x00from stdin\xff")
    assert result.stdout == b"got:\x00from stdin\xff"
    question = tmp_path / "q.bin"
    question.write_bytes(b"from a file")
    result = harness.run_dropr(path, "call", "--peer", "local", "--channel", "echo", str(question))
    assert result.stdout == b"got:from a file"
    failed = harness.run_dropr(path, "call", "--peer", "local", "--channel", "fail", check=False)
    assert failed.returncode == 1 and failed.stdout == b""
    assert b"responder_failed" in failed.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (Debian package curl)")
def test_curl_gets_the_answer_byte_for_byte(running):
    receiver, _, _ = running
    result = subprocess.run(["curl", "-sS", "--fail-with-body", "--data-binary", "@-",
                             "-H", f"Authorization: Bearer {TOKEN}",
                             f"{receiver.url}/v1/channels/echo/calls"],
                            input=b"curl\x00body", capture_output=True, timeout=30)
    assert result.returncode == 0 and result.stdout == b"got:curl\x00body"


def test_the_responder_sees_the_dropr_environment_and_runs_beside_the_config(running):
    receiver, _, _ = running
    status, body, headers = post(receiver.url, "env", b"12345")
    assert status == 200, body
    assert body == b"env|caller|5|26"  # channel, client, size, a 26-character id; no attempt
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert len(headers["Dropr-Call-Id"]) == 26
    status, body, _ = post(receiver.url, "script", b"q")
    assert (status, body) == (200, b"relative: q\n")


def test_a_failing_responder_is_502_without_its_stderr_which_goes_to_the_log(running):
    receiver, _, root = running
    before = (root / "count").read_text().count("once") if (root / "count").exists() else 0
    status, body, _ = post(receiver.url, "fail", b"x")
    assert status == 502
    assert b'"code": "responder_failed"' in body and b'"exit_status": 3' in body
    assert b"secret-detail" not in body
    harness.wait_for(lambda: "secret-detail" in receiver.log_path.read_text(), 5,
                     what="the responder's stderr in the receiver's log")
    assert (root / "count").read_text().count("once") == before + 1
    status, body, _ = post(receiver.url, "killed", b"x")
    assert status == 502 and b'"exit_status": -9' in body and b"signal 9" in body


def test_a_slow_responder_is_504_and_its_whole_process_group_is_killed(running):
    receiver, _, _ = running
    started = time.monotonic()
    status, body, _ = post(receiver.url, "slow", b"x")
    assert status == 504 and b"responder_timeout" in body
    assert time.monotonic() - started < 5
    harness.wait_for(lambda: not leftovers(), 5, what="the slow responder's processes to go")


def test_more_calls_than_max_concurrent_get_503_across_the_workers(running):
    receiver, _, _ = running
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post(receiver.url, "busy", b"x"), range(6)))
    statuses = sorted(a[0] for a in answers)
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    assert set(statuses) <= {200, 503}
    busy = next(a for a in answers if a[0] == 503)
    assert b"responders_busy" in busy[1] and busy[2]["Retry-After"] == "1"
    assert post(receiver.url, "busy", b"x")[0] == 200  # the slot is free again


def test_limits_of_the_question_and_of_the_answer_are_413(running):
    receiver, _, _ = running
    status, body, _ = post(receiver.url, "echo", b"x" * 100_001)
    assert status == 413 and b"too_large" in body
    status, body, _ = post(receiver.url, "big", b"x")
    assert status == 413 and b"reply_too_large" in body


def test_a_channel_without_a_responder_is_404(running):
    receiver, _, _ = running
    status, body, _ = post(receiver.url, "nobody", b"x")
    assert status == 404 and b"no_responder" in body


def test_tokens_and_channel_permissions_are_enforced(running):
    receiver, _, _ = running
    assert post(receiver.url, "echo", b"x", token=None)[0] == 401
    assert post(receiver.url, "echo", b"x", token="wrong-token-0123456789")[0] == 401
    status, body, _ = post(receiver.url, "secret", b"x")
    assert status == 403 and b"forbidden" in body


def test_call_failed_carries_status_and_code(running):
    _, path, _ = running
    client = Client(path)
    with pytest.raises(CallFailed) as caught:
        client.call(b"x", peer="local", channel="slow")
    assert (caught.value.status, caught.value.code) == (504, "responder_timeout")
    with pytest.raises(CallFailed) as caught:
        client.call(b"x", peer="local", channel="nobody")
    assert (caught.value.status, caught.value.code) == (404, "no_responder")


def test_a_peer_that_cannot_be_reached_fails_at_once_and_spools_nothing(running):
    _, path, root = running
    spool = root / "client"
    before = sorted(str(p) for p in spool.rglob("*")) if spool.exists() else []
    started = time.monotonic()
    with pytest.raises(CallFailed) as caught:
        Client(path).call(b"x", peer="down", channel="echo")
    assert caught.value.code == "unreachable" and caught.value.status is None
    assert time.monotonic() - started < 3
    assert sorted(str(p) for p in spool.rglob("*") if "tmp" not in p.parts) == [
        p for p in before if "/tmp" not in p]
    assert not [p for p in spool.rglob("*") if p.is_file() and "queue" in p.parts]


def test_the_next_url_is_tried_only_when_no_connection_was_made(running):
    _, path, root = running
    client = Client(path)
    assert client.call(b"over", peer="failover", channel="echo") == b"got:over"
    before = (root / "count").read_text().count("once") if (root / "count").exists() else 0
    with pytest.raises(CallFailed) as caught:  # reached a responder: not asked again
        client.call(b"x", peer="twice", channel="fail")
    assert caught.value.status == 502
    assert (root / "count").read_text().count("once") == before + 1


def test_calls_are_counted_by_channel_and_result(running):
    receiver, _, _ = running
    post(receiver.url, "echo", b"x")
    post(receiver.url, "nobody", b"x")
    request = urllib.request.Request(receiver.url + "/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        lines = r.read().decode().splitlines()
    ok = [line for line in lines if line.startswith("dropr_receiver_calls_total{")
          and 'channel="echo"' in line and 'result="ok"' in line]
    assert ok and float(ok[0].split()[-1]) >= 1
    assert any(line.startswith("dropr_receiver_call_duration_seconds_count{")
               and 'channel="echo"' in line for line in lines)
    assert not any('channel="nobody"' in line for line in lines)


def test_a_bad_responder_config_names_its_key(tmp_path):
    for table, text in (({"timeout": 1}, "command: required"),
                        ({"command": "cat"}, "command: expected a list of strings"),
                        ({"command": ["cat"], "max_concurrent": 0}, "max_concurrent"),
                        ({"command": ["cat"], "timeot": 1}, "did you mean 'timeout'")):
        with pytest.raises(DroprError, match=text):
            harness.write_config(tmp_path, sections={"receiver.responders.c": table})
    with pytest.raises(DroprError, match="bad channel"):
        harness.write_config(tmp_path, sections={'receiver.responders."a..b"': {"command": ["x"]}})


def test_client_call_checks_its_arguments(running):
    _, path, _ = running
    client = Client(path)
    with pytest.raises(DroprError, match="unknown peer"):
        client.call(b"x", peer="nowhere", channel="echo")
    with pytest.raises(DroprError, match="bad channel"):
        client.call(b"x", peer="local", channel="a/b")
    with pytest.raises(DroprError, match="timeout"):
        client.call(b"x", peer="local", channel="echo", timeout=-1)
    assert os.environ.get("DROPR_CRASH_AT") is None
