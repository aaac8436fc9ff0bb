"""The HTTP side of a sender: batch uploads to one peer over a kept-alive
pycurl handle, and a readiness probe.

A peer has one receiver URL or several (``urls``): the batches go round
robin to the URLs that answer; a URL that fails is left out for a while (its
own backoff, in memory) and the same batch goes at once to the next one; the
peer fails (``PeerError``) only when every URL failed for this batch.

A batch is ``POST <url>/v1/batch``, multipart as the wire protocol fixes it:
a JSON ``meta`` part, then one part per message whose body libcurl streams
from the spool file itself, so no message is ever read into Python memory.
The files are in the sender's own claim folder, which only droprd's user can
write, and the claim checked each there to be a regular file with one link:
a producer cannot swap in a symlink to make the sender upload another file.
The answer sorts into three outcomes the sender handles differently:

- 200: a result per message id (``stored``, ``duplicate`` or ``rejected``);
- :class:`~dropr.errors.BatchRefused`: 400, 411, 413, 415 or 422 — the
  receiver refused what this batch contains; permanent for the batch as sent;
- :class:`~dropr.errors.Forbidden`: 403 — this client may not write (to a
  channel of) this batch; the sender tries again one channel at a time;
- :class:`~dropr.errors.PeerError`: anything else (connection failure,
  timeout, 5xx, and the other 4xx: 401 is a token to fix, 404/405 a
  wrong URL, 408/429 a busy peer); the messages wait in ``deferred/`` for the
  operator or the peer, rather than being given up because of a config slip.

Over https the peer's certificate is always verified, its name included:
against the peer's ``ca_file`` alone when one is set, else against the
system's CAs. A peer with ``certfile`` and ``keyfile`` presents that client
certificate (mutual TLS). A failed handshake is a ``PeerError`` like any
other connection failure. A peer with a token gets ``Authorization: Bearer`` on
every batch.
"""

import json
import os
import ssl
import time

import pycurl

from dropr import backoff
from dropr.errors import BatchRefused, ConfigError, Forbidden, PeerError, Unreadable

BATCH_PATH = "/v1/batch"
READY_PATH = "/v1/ready"
#: A peer that moves less than LOW_SPEED_BYTES per second for this long (at
#: most the peer's timeout) is cut off; 30 s is also curl's own usual choice.
STALL_SECONDS = 30
LOW_SPEED_BYTES = 1
#: An answer body larger than this is not a dropr receiver talking.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: The 4xx answers that judge the batch's content, not the peer's state.
_REFUSING_4XX = frozenset((400, 411, 413, 415, 422))


class _Answer:
    """Collects a response body up to MAX_ANSWER_BYTES (libcurl write callback)."""

    def __init__(self):
        self.chunks = []
        self.size = 0

    def write(self, data):
        self.size += len(data)
        if self.size > MAX_ANSWER_BYTES:
            return 0  # a short count makes libcurl abort the transfer
        self.chunks.append(data)
        return None

    def body(self):
        return b"".join(self.chunks)


def _base_handle(peer, url, timeout=None):
    curl = pycurl.Curl()
    curl.setopt(pycurl.NOSIGNAL, 1)  # no SIGALRM for DNS timeouts: we have our own timers
    curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(peer.connect_timeout * 1000))
    total = peer.timeout if timeout is None else timeout
    curl.setopt(pycurl.TIMEOUT_MS, int(total * 1000))
    curl.setopt(pycurl.LOW_SPEED_LIMIT, LOW_SPEED_BYTES)
    curl.setopt(pycurl.LOW_SPEED_TIME, max(1, int(min(STALL_SECONDS, total))))
    curl.setopt(pycurl.USERAGENT, "dropr-sender")
    if url.startswith("https://"):
        _verify_peer(curl, peer)
    return curl


def _verify_peer(curl, peer):
    curl.setopt(pycurl.SSL_VERIFYPEER, 1)
    curl.setopt(pycurl.SSL_VERIFYHOST, 2)
    if peer.ca_file:
        # This CA and no other: a certificate from a public CA for the same
        # name must not pass for the receiver of a private one.
        curl.setopt(pycurl.CAINFO, str(peer.ca_file))
        curl.setopt(pycurl.CAPATH, None)
    if peer.certfile:  # mutual TLS: who this host is, to the receiver
        curl.setopt(pycurl.SSLCERT, str(peer.certfile))
        curl.setopt(pycurl.SSLKEY, str(peer.keyfile))


def check_client_certs(config):
    """Load each peer's ``certfile`` with its ``keyfile`` once, as libcurl
    will: ConfigError naming the keys if that fails (missing, unreadable, not
    PEM, not a pair), so that the sender stops before it claims a message
    instead of failing every handshake. Runs in the sender's process."""
    for peer in config.peers.values():
        if not peer.certfile:
            continue
        try:
            ssl.create_default_context().load_cert_chain(peer.certfile, peer.keyfile)
        except OSError as e:  # ssl.SSLError included
            reason = f"{e.strerror}: {e.filename}" if e.filename else (e.strerror or str(e))
            raise ConfigError(f"{config.path}: [{peer.section}] certfile, keyfile: cannot load "
                              f"{peer.certfile} with {peer.keyfile}: {reason}") from None


def _perform(curl, peer, url):
    """Run the request; (status, body). ``PeerError`` if no HTTP answer came."""
    answer = _Answer()
    curl.setopt(pycurl.WRITEFUNCTION, answer.write)
    try:
        curl.perform()
    except pycurl.error as e:
        code, text = e.args if len(e.args) == 2 else (0, str(e))
        raise PeerError(f"peer {peer.name} ({url}): {text} (curl error {code})") from None
    return curl.getinfo(pycurl.RESPONSE_CODE), answer.body()


def _urls_of(peer):
    # A PeerConfig made in code may give url alone; a loaded one has both.
    return peer.urls or (peer.url,)


def _error_of(body):
    """(code, message) from a dropr error body; best effort for anything else."""
    try:
        error = json.loads(body)["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return "unknown", text or "no error body"


def _add_file(form, message_id, path, fds):
    """A part that libcurl streams from ``path`` itself (in C: no Python per
    chunk). ``path`` is in the sender's own claim folder under ``active/``,
    which only droprd's user can write, and the claim checked it there, after
    its rename, to be a regular file with one link (``Spool._claimed_size``):
    no producer can swap a symlink in between. ``fds`` is kept for the caller's
    sake (nothing is opened here). Unreadable if libcurl cannot open it."""
    try:
        form.add(name=message_id, file=os.fsencode(path), filename=message_id,
                 content_type="application/octet-stream")
    except pycurl.error as e:
        raise Unreadable(message_id, e.args[-1] if e.args else str(e)) from None


def _results_of(body, peer, url):
    try:
        results = json.loads(body)["results"]
    except (ValueError, KeyError, TypeError):
        results = None
    if not isinstance(results, dict):
        # A 200 that is not a dropr answer: nothing is known to be stored, so retry later.
        raise PeerError(f"peer {peer.name} ({url}): answer 200 without a results table")
    return results


class Transport:
    """Uploads batches to one peer, over one kept-alive pycurl handle per
    receiver URL, spreading them round robin over the URLs that answer.

    Lives in a sender process (under droprd, or ``dropr send``); one per peer,
    made lazily by the Sender and reused across batches. A URL that fails is
    skipped for ``backoff.delay(failures, base=backoff_base, cap=backoff_cap)``
    seconds (kept in memory only: a restarted sender tries every URL again)."""

    def __init__(self, peer, *, client, token="", backoff_base=1.0, backoff_cap=60.0,
                 clock=time.monotonic):
        self.peer = peer
        self.client = client
        self.token = token  # "" = none: the peer serves loopback clients without one
        self._backoff = (backoff_base, backoff_cap)
        self._clock = clock
        self._handles = {}
        self._down = {}  # url -> (failures in a row, not to be tried before)
        self._turn = 0

    def send(self, batch):
        """Upload ``batch``, a list of ``(name, path, size)`` (``name`` with ``id``,
        ``channel`` and ``priority``); returns ``{id: {"status": ..., ...}}``.

        Tries the peer's URLs in turn until one answers. Raises ``PeerError``
        (every URL failed: try later), ``BatchRefused`` (4xx, permanent),
        ``Forbidden`` (403: a channel this client may not write), or
        ``Unreadable`` before anything is sent if a message file cannot be opened."""
        errors = []
        for url in self._order():
            try:
                results = self._send_to(url, batch)
            except PeerError as e:
                self._mark_down(url)
                errors.append(str(e))
                continue
            self._down.pop(url, None)
            return results
        raise PeerError("; ".join(errors))

    def down_urls(self):
        """The URLs left out now, each with how many failures in a row."""
        now = self._clock()
        return {url: n for url, (n, until) in self._down.items() if until > now}

    def _order(self):
        """Every URL, next in turn first; those in their backoff last (soonest
        due first), tried only when all the others fail."""
        urls = _urls_of(self.peer)
        start = self._turn % len(urls)
        self._turn += 1
        turn = urls[start:] + urls[:start]
        now = self._clock()
        resting = sorted((u for u in turn if self._down.get(u, (0, 0.0))[1] > now),
                         key=lambda u: self._down[u][1])
        return [u for u in turn if u not in resting] + resting

    def _mark_down(self, url):
        failures = self._down.get(url, (0, 0.0))[0] + 1
        base, cap = self._backoff
        self._down[url] = (failures, self._clock() + backoff.delay(failures, base=base, cap=cap))

    def _send_to(self, url, batch):
        curl = self._handle(url)
        meta = {"client": self.client, "messages": [
            {"id": n.id, "channel": n.channel, "priority": n.priority, "size": size}
            for n, _, size in batch]}
        fds = []
        try:
            with pycurl.CurlMime(curl) as form:
                form.add_field("meta", json.dumps(meta, separators=(",", ":")),
                               content_type="application/json")
                for name, path, _ in batch:
                    _add_file(form, name.id, path, fds)
                curl.setopt(pycurl.MIMEPOST, form)
                try:
                    status, body = _perform(curl, self.peer, url)
                finally:
                    # The form dies with this block; libcurl must not keep a pointer to it.
                    curl.unsetopt(pycurl.MIMEPOST)
        finally:
            for fd in fds:
                os.close(fd)
        return self._outcome(status, body, url)

    def _outcome(self, status, body, url):
        if status == 200:
            return _results_of(body, self.peer, url)
        code, message = _error_of(body)
        if status in _REFUSING_4XX:
            raise BatchRefused(status, code, message)
        if status == 403:
            # The client's right to a channel: the same answer from every URL.
            raise Forbidden(f"peer {self.peer.name} ({url}): HTTP 403 {code}: {message}")
        raise PeerError(f"peer {self.peer.name} ({url}): HTTP {status} {code}: {message}")

    def _handle(self, url):
        curl = self._handles.get(url)
        if curl is None:
            curl = _base_handle(self.peer, url)
            curl.setopt(pycurl.URL, url + BATCH_PATH)
            # "Expect: 100-continue" would cost a round trip per batch.
            headers = ["Expect:"]
            if self.token:
                headers.append(f"Authorization: Bearer {self.token}")
            curl.setopt(pycurl.HTTPHEADER, headers)
            self._handles[url] = curl
        return curl

    def close(self):
        """Close the handles and their kept-alive connections."""
        handles, self._handles = self._handles, {}
        for curl in handles.values():
            curl.close()


def probe(peer, *, timeout=5.0):
    """``GET <url>/v1/ready`` of each of the peer's URLs until one answers 200:
    ``(True, "")``, else ``(False, reasons)``.

    Used by the retry scanner to see whether a peer marked down is back: it is
    back as soon as one of its receivers can store messages (readiness, not
    mere liveness: a receiver whose store is full or unwritable answers
    ``/v1/health`` but not ``/v1/ready``)."""
    reasons = []
    for url in _urls_of(peer):
        ok, reason = _probe_url(peer, url, timeout)
        if ok:
            return True, ""
        reasons.append(reason)
    return False, "; ".join(reasons)


def _probe_url(peer, url, timeout):
    curl = _base_handle(peer, url, timeout=timeout)
    try:
        curl.setopt(pycurl.URL, url + READY_PATH)
        status, body = _perform(curl, peer, url)
    except PeerError as e:
        return False, str(e)
    finally:
        curl.close()
    if status == 200:
        return True, ""
    code, message = _error_of(body)
    return False, f"peer {peer.name} ({url}): HTTP {status} {code}: {message}"
