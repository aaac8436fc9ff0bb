"""The HTTP side of a sender: batch uploads to one peer over a kept-alive
pycurl handle, and a readiness probe.

A peer has one receiver URL or several (``urls``): the batches go round
robin to the URLs that answer; a URL that fails is left out for a while (its
own backoff, in memory) and the same batch goes at once to the next one; the
peer fails (``PeerError``) only when every URL failed for this batch.

A batch is ``POST <url>/v1/batch``, multipart as the wire protocol fixes it:
a JSON ``meta`` part, then one part per message, read from the spool file as
libcurl sends (:class:`_Body`): many small messages in one send, a large one
in pieces, never a whole message in memory. The files are in the sender's
own claim folder, which only droprd's user can write, and the claim checked
each there to be a regular file with one link; each is opened without
following a symlink: a producer cannot swap one in to make the sender upload
another file.
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
#: Bytes of a batch's body handed to libcurl at a time (its upload buffer).
UPLOAD_BYTES = 256 * 1024
#: The most bytes of a body's first piece: meta and the first messages go out
#: at once instead of after a whole UPLOAD_BYTES is read.
FIRST_PIECE_BYTES = 64 * 1024
#: How a message file is opened: never through a symlink, never blocking on a FIFO.
_OPEN_MESSAGE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
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


class _Form:
    """The fixed parts of one batch's multipart body: the boundary, the meta
    part and each message's part head, made once per batch. The sender makes
    them on its main thread when it claims the batch (:meth:`Transport.prepare`),
    so that the lane, when the answer to the previous batch is in, puts the
    next one on the wire at once."""

    def __init__(self, meta, batch):
        self.boundary = "dropr-" + os.urandom(12).hex()
        self.batch = batch
        self.head = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\n"
                     f"Content-Type: application/json\r\n\r\n{meta}").encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.heads = [self._part_head(name.id) for name, _, _ in batch]
        self.length = len(self.head) + len(self.tail) + sum(
            len(head) + size for head, (_, _, size) in zip(self.heads, batch))

    def _part_head(self, message_id):
        return (f"\r\n--{self.boundary}\r\nContent-Disposition: form-data; "
                f"name=\"{message_id}\"; filename=\"{message_id}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()


class _Body:
    """The multipart body of one batch, made as libcurl asks for it (its
    READFUNCTION): many small messages go out in one piece of up to
    ``UPLOAD_BYTES``, in one send, instead of libcurl's read, send and poll
    per part; a large one streams through in pieces, so no message is ever
    read whole into memory. Each file is opened when its turn comes, without
    following a symlink; it is in the sender's own claim folder, which only
    droprd's user can write, and the claim checked it there, after its
    rename, to be a regular file with one link. Exactly the size the claim
    saw is sent, as meta announces it; a file that cannot be opened, or is
    shorter by now, ends the upload (``error``: Unreadable) and the receiver,
    short of the body's Content-Length, stores nothing of it.

    The first piece is at most ``FIRST_PIECE_BYTES``: the receiver starts on
    meta and the first messages while the rest is read."""

    def __init__(self, form):
        self.form = form
        self.boundary = form.boundary
        self.length = form.length
        self.error = None
        self._pieces, self._rest, self._first = self._generate(), b"", True

    def _generate(self):
        form = self.form
        yield form.head
        for head, (name, path, size) in zip(form.heads, form.batch):
            yield head
            try:
                fd = os.open(path, _OPEN_MESSAGE)
            except OSError as e:
                raise Unreadable(name.id, e.strerror) from None
            try:
                left = size
                while left:
                    data = os.read(fd, min(left, UPLOAD_BYTES))
                    if not data:
                        raise Unreadable(name.id, f"{left} of its {size} bytes are gone")
                    left -= len(data)
                    yield data
            finally:
                os.close(fd)
        yield form.tail

    def read(self, size):
        """Up to ``size`` bytes of the body (b"" at its end)."""
        if self._first:
            self._first, size = False, min(size, FIRST_PIECE_BYTES)
        chunks, room = [], size
        try:
            while room > 0:
                piece = self._rest or next(self._pieces, None)
                if piece is None:
                    break
                if len(piece) > room:
                    piece, self._rest = piece[:room], piece[room:]
                else:
                    self._rest = b""
                chunks.append(piece)
                room -= len(piece)
        except Unreadable as e:
            self.error = e
            return pycurl.READFUNC_ABORT
        return b"".join(chunks)

    def seek(self, offset, origin):
        """Start again at ``offset`` (libcurl resends a body on a fresh
        connection when a kept-alive one was closed under it)."""
        if origin != os.SEEK_SET:
            return pycurl.SEEKFUNC_CANTSEEK
        self.close()
        self._pieces, self._rest, self._first = self._generate(), b"", False
        while offset > 0:
            data = self.read(min(offset, UPLOAD_BYTES))
            if not isinstance(data, bytes) or not data:
                return pycurl.SEEKFUNC_FAIL
            offset -= len(data)
        return pycurl.SEEKFUNC_OK

    def close(self):
        """Close the file being read, if any."""
        self._pieces.close()


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
        # "Expect: 100-continue" would cost a round trip per batch.
        self._headers = ["Expect:"] + ([f"Authorization: Bearer {token}"] if token else [])
        self._down = {}  # url -> (failures in a row, not to be tried before)
        self._turn = 0

    def prepare(self, batch):
        """The fixed parts of ``batch``'s body (meta, the part heads), made now
        in the caller's thread, for :meth:`send` of the same batch. The sender
        makes them as it hands a batch to the peer's lane, so that the lane
        starts the upload as soon as the previous answer is in."""
        meta = {"client": self.client, "messages": [
            {"id": n.id, "channel": n.channel, "priority": n.priority, "size": size}
            for n, _, size in batch]}
        return _Form(json.dumps(meta, separators=(",", ":")), batch)

    def send(self, batch, *, form=None):
        """Upload ``batch``, a list of ``(name, path, size)`` (``name`` with ``id``,
        ``channel`` and ``priority``); returns ``{id: {"status": ..., ...}}``.
        ``form``: what :meth:`prepare` made of this batch, if anything.

        Tries the peer's URLs in turn until one answers. Raises ``PeerError``
        (every URL failed: try later), ``BatchRefused`` (4xx, permanent),
        ``Forbidden`` (403: a channel this client may not write), or
        ``Unreadable`` if a message file cannot be opened (or is shorter than
        claimed): the upload stops short of its Content-Length, so the
        receiver stores none of it (when the file is in the body's first
        ``FIRST_PIECE_BYTES``, nothing is sent at all)."""
        if form is None or form.batch is not batch:
            form = self.prepare(batch)
        errors = []
        for url in self._order():
            try:
                results = self._send_to(url, form)
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

    def _send_to(self, url, form):
        curl = self._handle(url)
        body = _Body(form)
        try:
            curl.setopt(pycurl.HTTPHEADER, [
                *self._headers, f"Content-Type: multipart/form-data; boundary={body.boundary}"])
            curl.setopt(pycurl.POSTFIELDSIZE_LARGE, body.length)
            curl.setopt(pycurl.READFUNCTION, body.read)
            curl.setopt(pycurl.SEEKFUNCTION, body.seek)
            try:
                status, body_bytes = _perform(curl, self.peer, url)
            except PeerError:
                if body.error is not None:
                    raise body.error from None
                raise
        finally:
            body.close()
        return self._outcome(status, body_bytes, url)

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
            curl.setopt(pycurl.POST, 1)
            curl.setopt(pycurl.UPLOAD_BUFFERSIZE, UPLOAD_BYTES)
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
