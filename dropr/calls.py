"""Direct messages, the caller's side: ask a peer's responder and get its
answer now (``Client.call``, ``dropr call``).

A call never touches the spool: it is one ``POST <url>/v1/channels/{channel}/calls``
on the authenticated link the sender uses (the peer's token, CA and client
certificate), over a kept-alive connection per receiver URL. A peer with
several URLs is tried in turn only while a connection cannot be made: a call
that reached a receiver is never repeated, since its responder may have acted
on it. Runs in the caller's process, inside its :class:`dropr.Client`.
"""

import json
import os

import pycurl

from dropr import names
from dropr.errors import CallFailed
from dropr.sender.transport import _base_handle, _urls_of

CALLS_PATH = "/v1/channels/{channel}/calls"
#: curl errors that mean no connection was made: name not resolved, connection
#: refused or unreachable, TLS handshake failed. Safe to try the next URL.
_NOT_CONNECTED = frozenset((6, 7, 35))
_TIMED_OUT = 28
MAX_REPLY_BYTES = 1 << 30


class Caller:
    """The kept-alive handles of one producer's calls, one per receiver URL."""

    def __init__(self, config):
        self.config = config
        self._handles = {}

    def call(self, data, *, peer, channel, timeout=None):
        """The answer (bytes) of ``peer``'s responder for ``channel`` to ``data``
        (bytes, a path or a binary file object). ``CallFailed`` otherwise."""
        peer_config = self.config.peer(peer)
        names.check_name(channel, "channel")
        body = _read(data)
        timeout = peer_config.timeout if timeout is None else timeout
        token = self.config.token_of(peer_config)
        errors = []
        for url in _urls_of(peer_config):
            curl = self._handle(peer_config, url, token)
            reply = _Reply()
            curl.setopt(pycurl.URL, url + CALLS_PATH.format(channel=channel))
            curl.setopt(pycurl.POSTFIELDS, body)
            curl.setopt(pycurl.TIMEOUT_MS, max(1, int(timeout * 1000)))
            curl.setopt(pycurl.WRITEFUNCTION, reply.write)
            try:
                curl.perform()
            except pycurl.error as e:
                code, text = e.args if len(e.args) == 2 else (0, str(e))
                if code in _NOT_CONNECTED or (code == _TIMED_OUT and not _connected(curl)):
                    errors.append(f"{url}: {text}")
                    self._drop(url)
                    continue
                self._drop(url)
                what = "timeout" if code == _TIMED_OUT else "transport"
                raise CallFailed(None, what, f"peer {peer} ({url}): {text}") from None
            return _outcome(curl.getinfo(pycurl.RESPONSE_CODE), reply.body(), peer, url)
        raise CallFailed(None, "unreachable", f"peer {peer}: no receiver could be reached: "
                         + "; ".join(errors))

    def _handle(self, peer_config, url, token):
        curl = self._handles.get(url)
        if curl is None:
            curl = _base_handle(peer_config, url)
            headers = ["Expect:", "Content-Type: application/octet-stream"]
            if token:
                headers.append(f"Authorization: Bearer {token}")
            curl.setopt(pycurl.HTTPHEADER, headers)
            curl.setopt(pycurl.USERAGENT, "dropr-call")
            self._handles[url] = curl
        return curl

    def _drop(self, url):
        curl = self._handles.pop(url, None)
        if curl is not None:
            curl.close()

    def close(self):
        """Close the kept-alive connections."""
        for url in list(self._handles):
            self._drop(url)


class _Reply:
    def __init__(self):
        self.chunks, self.size = [], 0

    def write(self, data):
        self.size += len(data)
        if self.size > MAX_REPLY_BYTES:
            return 0
        self.chunks.append(data)
        return None

    def body(self):
        return b"".join(self.chunks)


def _connected(curl):
    return curl.getinfo(pycurl.CONNECT_TIME) > 0


def _read(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            return f.read()
    if hasattr(data, "read"):
        return data.read()
    raise CallFailed(None, "invalid", f"data must be bytes, a path or a binary file, "
                     f"not {type(data).__name__}")


def _outcome(status, body, peer, url):
    if status == 200:
        return body
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "unknown", body[:200].decode("utf-8", "replace").strip() or "no body"
    raise CallFailed(status, code, f"peer {peer} ({url}): HTTP {status} {code}: {message}")
