"""The parts of the JetStream store that speak to nats-py: the asyncio loop
each process runs it on, publish acks, subject and consumer names, and the
shape of a message read back."""

import asyncio
import dataclasses
import hashlib
import importlib.util
import json
import os
import ssl
import tempfile
import threading

from dropr import names
from dropr.errors import ConfigError, StoreUnavailable


def require_nats():
    """ConfigError unless nats-py is installed: it comes with the extra
    ``dropr[jetstream]``, not with the core a producer host needs."""
    if importlib.util.find_spec("nats") is None:
        raise ConfigError('[store] backend = "jetstream" needs nats-py, which is not '
                          "installed: pip install 'dropr[jetstream]'")


def nats_module():
    import nats  # imported in the process that uses it, after any fork
    import nats.errors
    import nats.js.api
    import nats.js.errors
    return nats


@dataclasses.dataclass(frozen=True)
class StreamMessage:
    """A message read from the stream; ``read()`` gives its body."""

    id: str
    channel: str
    priority: int
    client: str
    received_at: float
    size: int
    seq: int
    body: bytes
    attempts: int = 0
    handle: object = dataclasses.field(default=None, repr=False, compare=False)
    legacy_id: str = None  # a PHP dropr client's own id of the message, if it came from one

    def read(self):
        return self.body

    def open(self):
        """A real file (it has a descriptor, for a command's stdin) holding the body."""
        f = tempfile.TemporaryFile()
        f.write(self.body)
        f.seek(0)
        return f


class Loop:
    """One asyncio loop in a daemon thread, and the connection to the cluster
    it owns; started on first use in each process."""

    def __init__(self):
        self._pid = None
        self._lock = threading.Lock()
        self.loop = None

    def run(self, coro, timeout):
        """Run ``coro`` on the loop; its result, or the exception it raised."""
        loop = self._ensure()
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def _ensure(self):
        with self._lock:
            if self._pid != os.getpid():  # first use, or a fork copied a dead thread
                self.loop = asyncio.new_event_loop()
                threading.Thread(target=self.loop.run_forever, name="dropr-jetstream",
                                 daemon=True).start()
                self._pid = os.getpid()
            return self.loop


def connect_options(settings, where="[store]"):
    """The keyword arguments of ``nats.connect()`` for ``[store]``'s credentials
    and TLS (``settings``: a StoreConfig); ConfigError naming the key for a
    file that cannot be read or loaded. Read once, where the store is opened."""
    s, options = settings, {}
    if s.user:
        options.update(user=s.user, password=s.password)
    if s.token:
        options["token"] = s.token
    for key, option in (("nkey_seed_file", "nkeys_seed"), ("credentials_file", "user_credentials")):
        path = getattr(s, key)
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise ConfigError(f"{where} {key}: cannot read {path}: {e.strerror}") from None
            options[option] = str(path)
    if s.ca_file or s.certfile or any(u.startswith("tls://") for u in s.servers):
        options["tls"] = _tls_context(s, where)
    return options


def _tls_context(s, where):
    """Verifies the servers' certificates against ``ca_file`` (or the system's
    CAs) and their host names; presents ``certfile`` if the servers ask."""
    try:
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    except OSError as e:  # ssl.SSLError included
        raise ConfigError(f"{where} ca_file: cannot load {s.ca_file}: "
                          f"{e.strerror or e}") from None
    if s.certfile:
        try:
            context.load_cert_chain(s.certfile, s.keyfile)
        except OSError as e:
            raise ConfigError(f"{where} certfile, keyfile: cannot load {s.certfile} with "
                              f"{s.keyfile}: {e.strerror or e}") from None
    return context


def unavailable(e):
    what = type(e).__name__ + (f": {e}" if str(e) else "")
    return StoreUnavailable(f"JetStream is not available now ({what}); try later")


def subject_of(prefix, channel, priority):
    return f"{prefix}.{channel}.{priority}"


def msg_id_of(client, message_id):
    """The ``Nats-Msg-Id`` of a message: JetStream's duplicate key, per client."""
    return f"{client}@{message_id}"


def durable_of(channel, priority):
    """The durable consumer of a channel and priority (no dots allowed in it)."""
    digest = hashlib.sha1(channel.encode()).hexdigest()[:8]
    return f"{channel.replace('.', '_')}-{digest}-p{priority}"


class Acks:
    """Publish acks of one connection: one wildcard reply subscription, and
    the future each publish waits on, by a token counted per connection."""

    def __init__(self, nc):
        self.nc = nc
        self.prefix = nc.new_inbox() + "."
        self.waiting = {}
        self._count = 0

    async def start(self):
        await self.nc.subscribe(self.prefix + "*", cb=self._on_reply)

    def expect(self):
        """(token, future) for one more publish; its reply subject is prefix + token."""
        self._count += 1
        token = str(self._count)
        future = self.waiting[token] = asyncio.get_running_loop().create_future()
        return token, future

    def forget(self, tokens):
        """Stop waiting for these publishes (answered or not)."""
        for token in tokens:
            self.waiting.pop(token, None)

    async def _on_reply(self, msg):
        future = self.waiting.pop(msg.subject[len(self.prefix):], None)
        if future is not None and not future.done():
            headers = msg.headers or {}
            status = headers.get("Status")
            future.set_result({"status": status, "description": headers.get("Description", "")}
                              if status else msg.data)


def pub_ack(reply):
    """Whether a publish's ack says duplicate; StoreUnavailable if it is an error."""
    if isinstance(reply, dict):  # a status from the server: 503 is "no stream answers"
        raise StoreUnavailable(f"JetStream is not available now (status {reply['status']}: "
                               f"{reply['description'] or 'no responders'}); try later")
    try:
        ack = json.loads(reply)
    except ValueError:
        ack = {"error": {"description": f"unreadable ack {reply[:80]!r}"}}
    if "error" in ack:
        what = ack["error"].get("description") or ack["error"]
        raise StoreUnavailable(f"JetStream refused a message now ({what}); try later")
    return ack.get("duplicate", False)


def message_of(headers, body, seq, *, attempts=0, handle=None):
    return StreamMessage(
        id=headers.get("Dropr-Id") or headers.get("Nats-Msg-Id", str(seq)),
        channel=headers.get("Dropr-Channel", ""),
        priority=int(headers.get("Dropr-Priority", names.DEFAULT_PRIORITY)),
        client=headers.get("Dropr-Client", ""),
        received_at=float(headers.get("Dropr-Received-At", 0.0)), size=len(body), seq=seq,
        body=body, attempts=attempts, handle=handle,
        legacy_id=headers.get("Dropr-Legacy-Id"))
