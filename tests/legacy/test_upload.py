"""The receiver's legacy path, through the real receiver (gunicorn): uploads
built by PHP exactly as the original client builds them are taken and
answered as the PHP server answers; a re-send stores nothing twice; Basic
auth from a peer URL's user:password; hostile serialized data and malformed
uploads are refused whole with nothing stored; one bad message is refused
alone (inqueue false)."""

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dropr import config as config_mod
from dropr.legacy import phpser
from dropr.receiver.legacy import dropr_id
from dropr.store import Store
from tests.support import harness

pytestmark = pytest.mark.process

PHP = Path(__file__).parent / "php"
LEGACY_PATH = "/server/server.php"
TOKEN = "legacy-test-token-0123456789"
needs_php = pytest.mark.skipif(shutil.which("php") is None,
                               reason="needs php (Debian packages php-cli, php-curl)")


def php_name(priority, channel, stamp="1796024531-36079900",
             peer="HttpUpload;http://127.0.0.1/server/server.php"):
    """A PHP spool file name: priority, microtime, base64 of peer key and channel."""
    return "_".join((str(priority), stamp, base64.b64encode(peer.encode()).decode(),
                     base64.b64encode(channel.encode()).decode()))


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy")
    path = harness.write_config(root, sections={
        "receiver": {"legacy_path": LEGACY_PATH, "max_batch_messages": 20,
                     "max_message_bytes": 10_000},
        "receiver.clients.shop": {"token": TOKEN, "channels": ["orders", "common"]}})
    r = harness.Receiver(path).start()
    yield r
    r.stop()
    harness.remove_queues(root / "client")


def store_of(receiver):
    return Store(receiver.config.receiver.store, fsync=False)


def php_upload(url, client, files):
    result = subprocess.run(["php", str(PHP / "upload.php"), url, client, *map(str, files)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def with_basic(url, name=None, token=TOKEN):
    name = name or "shop"
    return url.replace("http://", f"http://{name}:{token}@") + LEGACY_PATH


@needs_php
def test_a_php_client_upload_is_stored_and_answered_as_the_php_server_does(receiver, tmp_path):
    files = []
    for i, (priority, channel) in enumerate([(9, "orders"), (0, "orders"), (5, "common")]):
        f = tmp_path / php_name(priority, channel, stamp=f"1796024531-3607990{i}")
        f.write_bytes(f"body {i}\n".encode() + bytes(range(256)))
        files.append(f)
    answer = php_upload(with_basic(receiver.url), "web-1", files)
    assert answer == {"status": 200,
                      "result": {f.name: {"inqueue": True} for f in files}}
    store = store_of(receiver)
    for f in files:
        message = store.get(f.name.split("_")[3] and base64.b64decode(
            f.name.split("_")[3]).decode(), dropr_id("shop", "web-1", f.name))
        assert message.read() == f.read_bytes()
        assert message.legacy_id == f.name and message.client == "shop"
        assert message.priority == int(f.name[0])


@needs_php
def test_a_resend_after_a_lost_answer_stores_nothing_twice(receiver, tmp_path):
    f = tmp_path / php_name(3, "orders", stamp="1796024999-00000001")
    f.write_bytes(b"once")
    store = store_of(receiver)
    before = store.count("orders")
    for _ in range(2):
        answer = php_upload(with_basic(receiver.url), "web-2", [f])
        assert answer["result"] == {f.name: {"inqueue": True}}
    assert store.count("orders") == before + 1


@needs_php
def test_basic_auth_with_a_wrong_token_is_refused(receiver, tmp_path):
    f = tmp_path / php_name(3, "orders", stamp="1796024999-00000002")
    f.write_bytes(b"x")
    answer = php_upload(with_basic(receiver.url, token="not-the-token-0123456789"), "web-3", [f])
    assert answer == {"status": 401, "result": None}
    answer = php_upload(with_basic(receiver.url, name="other"), "web-3", [f])
    assert answer == {"status": 401, "result": None}


# -- raw requests: what PHP would never send ---------------------------------

def form(parts, boundary="dropr-legacy-test"):
    """A multipart body of [(name, value bytes, filename or None)]."""
    out = []
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
                   + value + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def post(receiver, body, content_type):
    request = urllib.request.Request(receiver.url + LEGACY_PATH, data=body, method="POST",
                                     headers={"Content-Type": content_type,
                                              "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def meta(entries):
    return phpser.dumps({k: e for k, e in enumerate(entries)})


def entry(k, message_id, channel="orders", priority=5, kind=1):
    return {"message": f"f_{k}", "messageId": message_id, "channel": channel,
            "priority": priority, "messageType": kind}


def test_one_bad_message_is_refused_alone(receiver):
    store = store_of(receiver)
    before = {c: store.count(c) for c in ("orders", "common")}
    entries = [entry(0, "good-1"), entry(1, "bad-channel", channel="a+b"),
               entry(2, "bad-priority", priority=10), entry(3, "direct", kind=2),
               entry(4, "no-part"), entry(5, "too-big"), entry(6, "good-2", priority="7"),
               entry(7, "not-allowed", channel="secret")]
    parts = [("client", b"web-9", None)]
    parts += [(f"f_{k}", b"body %d" % k, f"f{k}") for k in (0, 1, 2, 3, 6, 7)]
    parts.append(("f_5", b"x" * 10_001, "f5"))
    parts.append(("metaData", meta(entries), None))
    status, body = post(receiver, *form(parts))
    assert status == 200, body
    assert phpser.loads(body) == {
        "good-1": {"inqueue": True}, "bad-channel": {"inqueue": False},
        "bad-priority": {"inqueue": False}, "direct": {"inqueue": False},
        "no-part": {"inqueue": False}, "too-big": {"inqueue": False},
        "good-2": {"inqueue": True}, "not-allowed": {"inqueue": False}}
    assert store.count("orders") == before["orders"] + 2
    assert store.get("orders", dropr_id("shop", "web-9", "good-2")).priority == 7


HOSTILE_META = [
    b'O:8:"stdClass":0:{}',                                    # an object
    b'a:1:{i:0;O:8:"stdClass":0:{}}',
    b'a:1:{i:0;C:11:"ArrayObject":0:{}}',
    b'a:1:{i:0;a:5:{s:7:"message";s:3:"f_0";s:9:"messageId";r:1;s:7:"channel";s:6:"orders";'
    b's:8:"priority";i:5;s:11:"messageType";i:1;}}',                # a reference
    b'a:1:{i:0;a:5:{s:7:"message";s:3:"f_0";s:9:"messageId";s:99:"x";s:7:"channel";'
    b's:6:"orders";s:8:"priority";i:5;s:11:"messageType";i:1;}}',   # a length that lies
    b'a:9:{i:0;N;}',                                            # a count that lies
    b'a:1:{i:0;a:1:{i:0;a:1:{i:0;N;}}}',                        # too deep
    b'a:21:{' + b"".join(b"i:%d;N;" % i for i in range(21)) + b"}",   # past the batch limit
    b'a:2:{i:0;N;i:0;N;}',                                      # a key twice
    b'd:0.5;',
    b'a:1:{i:0;a:5:{s:7:"message";s:3:"f_0";s:9:"messageId";s:1:"x";s:7:"channel";'
    b's:6:"orders";s:8:"priority";i:5;s:5:"extra";i:1;}}',         # not the original's keys
    b"",
]


@pytest.mark.parametrize("payload", HOSTILE_META)
def test_hostile_serialized_data_is_refused_whole_and_nothing_is_stored(receiver, payload):
    store = store_of(receiver)
    before = store.count("orders")
    # A good message part beside the hostile metadata: it must not be stored either.
    status, body = post(receiver, *form([("client", b"web-h", None),
                                         ("f_0", b"body", "f0"), ("metaData", payload, None)]))
    assert 400 <= status < 500, (status, body)
    assert json.loads(body)["error"]["code"] in ("invalid", "too_large")
    assert store.count("orders") == before


@pytest.mark.parametrize("parts, code", [
    ([("f_0", b"body", "f0"), ("metaData", b"a:0:{}", None)], 400),               # no client
    ([("client", b"web", None), ("f_0", b"body", "f0")], 400),                    # no metaData
    ([("client", b"a", None), ("client", b"b", None), ("metaData", b"a:0:{}", None)], 400),
    ([("client", b"web", None), ("other", b"x", None), ("metaData", b"a:0:{}", None)], 400),
])
def test_malformed_uploads_are_refused(receiver, parts, code):
    status, body = post(receiver, *form(parts))
    assert status == code, body


def test_only_multipart_with_a_length_is_read(receiver):
    status, _ = post(receiver, b"client=web", "application/x-www-form-urlencoded")
    assert status == 415


def test_without_legacy_path_the_path_is_not_served(tmp_path):
    path = harness.write_config(tmp_path)
    assert config_mod.load(path).receiver.legacy_path == ""


@pytest.mark.parametrize("value", ["server.php", "/v1/batch", "/", "/a//b", "/a b", "/../x"])
def test_a_bad_legacy_path_is_refused_naming_the_key(tmp_path, value):
    with pytest.raises(config_mod.ConfigError, match=r"\[receiver\] legacy_path"):
        harness.write_config(tmp_path, sections={"receiver": {"legacy_path": value}})


def test_the_php_id_shows_in_store_ls_cat_and_consume(receiver, tmp_path):
    parts = [("client", b"web-c", None), ("f_0", b"legacy body", "f0"),
             ("metaData", meta([entry(0, "9_1796024531-1_abc+/=_Y29tbW9u", channel="common")]),
              None)]
    assert post(receiver, *form(parts))[0] == 200
    path = receiver.config_path
    new_id = dropr_id("shop", "web-c", "9_1796024531-1_abc+/=_Y29tbW9u")
    listed = harness.run_dropr(path, "store", "ls", "common").stdout.decode()
    assert f"\t{new_id}\t" in listed and listed.rstrip().endswith("\t9_1796024531-1_abc+/=_Y29tbW9u")
    cat = harness.run_dropr(path, "store", "cat", "common", new_id)
    assert cat.stdout == b"legacy body" and b"9_1796024531-1_abc+/=_Y29tbW9u" in cat.stderr
    seen = tmp_path / "seen"
    harness.run_dropr(path, "consume", "--channel", "common", "--once", "--",
                      "sh", "-c", f'echo "$DROPR_ID $DROPR_LEGACY_ID" >> {seen}')
    assert f"{new_id} 9_1796024531-1_abc+/=_Y29tbW9u" in seen.read_text().splitlines()
