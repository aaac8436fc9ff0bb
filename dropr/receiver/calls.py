"""POST /v1/channels/{channel}/calls: a direct message, answered now.

The body goes to the channel's responder, a command of the operator's
(``[receiver.responders.CHANNEL] command``), on its standard input, with the
``DROPR_*`` variables ``dropr consume`` gives (``DROPR_ID``, ``DROPR_CHANNEL``,
``DROPR_CLIENT``, ``DROPR_SIZE``, ``DROPR_RECEIVED_AT``); what it writes to
standard output is the answer. Nothing is stored: a call that fails is the
caller's to repeat or not. Runs in receiver worker processes, one call per
request thread; the command runs in a process group of its own, killed whole
when it overruns its ``timeout`` or its ``max_reply_bytes``, and when it
exits (nothing it started outlives the call).

How many calls of a channel run at once is bounded across all the worker
processes of one receiver by ``max_concurrent`` lock files (``flock``, held
by the worker that runs the call; the kernel drops a lock when its process
dies) in a private folder of the receiver's (:func:`slots_folder`).
"""

import contextlib
import hashlib
import logging
import os
import selectors
import signal
import subprocess
import tempfile
import time

from dropr import names
from dropr.errors import DroprError, TooLarge
from dropr.fs import lock_file
from dropr.receiver.auth import check_channel

log = logging.getLogger("dropr.receiver")

ROUTE = "/v1/channels/{channel}/calls"


def waits(path):
    """Whether a request for ``path`` may wait for something but the store:
    a call waits for its responder."""
    return path.endswith("/calls")


_CHUNK = 1 << 16
#: Bytes of a responder's stderr kept for the log.
STDERR_KEEP = 8192
#: Outcomes, as the metrics label them.
RESULTS = ("ok", "failed", "timeout", "busy", "too_large")


class CallError(DroprError):
    """A call that gets an error answer: ``status``, ``code`` and extra JSON fields."""

    def __init__(self, status, code, message, **fields):
        super().__init__(message)
        self.status, self.code, self.fields = status, code, fields


def slots_folder(config):
    """The private folder of this receiver's call slots: one per user and
    receiver (its bind address and store), under the system's temporary folder."""
    digest = hashlib.sha256(f"{config.receiver.bind}\0{config.receiver.store}".encode())
    return os.path.join(tempfile.gettempdir(),
                        f"dropr-calls-{os.getuid()}-{digest.hexdigest()[:16]}")


class Slots:
    """At most N calls of a channel at once, across processes: N lock files
    per channel, each ``flock``-ed by the thread whose call runs."""

    def __init__(self, folder):
        self.folder = folder

    def take(self, channel, limit):
        """A held slot (an open descriptor; close it to free the slot), or
        None when all ``limit`` are taken."""
        self._ensure_folder()
        for i in range(limit):
            fd = lock_file(f"{self.folder}/{channel}.{i}", mode=0o600)
            if fd is not None:
                return fd
        return None

    def _ensure_folder(self):
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.folder, 0o700)
        st = os.lstat(self.folder)
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or not os.path.isdir(self.folder):
            raise DroprError(f"{self.folder}: not a private folder of this user; "
                             "the receiver will not keep its call slots there")


class CallsResource:
    """Runs the channel's responder for each call and answers with its output.
    Built by ``create_app`` in each receiver worker process."""

    def __init__(self, responders, limits, *, new_id, slots, workdir, metrics=None,
                 clock=time.time, timer=time.monotonic):
        self.responders = {r.name: r for r in responders}
        self.message_limit = limits.max_message_bytes or None
        self.new_id = new_id
        self.slots = slots
        self.workdir = workdir  # commands run here: the config file's folder
        self.metrics = metrics
        self._clock = clock
        self._timer = timer

    def on_post(self, req, resp, channel):
        names.check_name(channel, "channel")
        check_channel(req, channel)
        responder = self.responders.get(channel)
        if responder is None:
            raise CallError(404, "no_responder", f"no responder for channel {channel!r}")
        length = req.content_length
        if self.message_limit is not None and length is not None and length > self.message_limit:
            raise TooLarge(f"call of {length} bytes is over the limit of {self.message_limit}")
        started = self._timer()
        slot = self.slots.take(channel, responder.max_concurrent)
        if slot is None:
            self._count(channel, "busy", started)
            raise CallError(503, "responders_busy", f"{responder.max_concurrent} calls of "
                            f"channel {channel!r} are running; try again shortly")
        try:
            result, reply, call_id = self._call(req, channel, responder)
        except CallError as e:
            self._count(channel, {413: "too_large", 504: "timeout"}.get(e.status, "failed"),
                        started)
            raise
        finally:
            os.close(slot)
        self._count(channel, result, started)
        resp.status = 200
        resp.content_type = responder.content_type
        resp.set_header("Dropr-Call-Id", call_id)
        resp.data = reply

    def _call(self, req, channel, responder):
        call_id = self.new_id()
        with tempfile.TemporaryFile() as body:
            size = self._read_body(req, body)
            body.seek(0)
            env = {**os.environ, "DROPR_ID": call_id, "DROPR_CHANNEL": channel,
                   "DROPR_CLIENT": req.context.client or "", "DROPR_SIZE": str(size),
                   "DROPR_RECEIVED_AT": f"{self._clock():.3f}"}
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            run = Run(responder, body, env=env, cwd=self.workdir, timer=self._timer)
            reply = run.wait()
        return "ok", reply, call_id

    def _read_body(self, req, out):
        # Without a Content-Length the body is chunked: gunicorn ends the stream.
        stream = req.bounded_stream if req.content_length is not None else req.stream
        size = 0
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if self.message_limit is not None and size > self.message_limit:
                raise TooLarge(f"call is over the limit of {self.message_limit} bytes")
            out.write(chunk)
        if req.content_length is not None and size != req.content_length:
            raise CallError(400, "invalid", f"the body ended after {size} of the "
                            f"{req.content_length} bytes that Content-Length announces")
        return size

    def _count(self, channel, result, started):
        if self.metrics is not None:
            self.metrics.called(channel, result, self._timer() - started)


class Run:
    """One responder process: started at once, fed ``stdin`` (an open file),
    its stdout collected up to ``max_reply_bytes``, its stderr logged. Lives
    in the request thread that made it."""

    def __init__(self, responder, stdin, *, env, cwd, timer=time.monotonic):
        self.responder = responder
        self._timer = timer
        self.deadline = timer() + responder.timeout
        try:
            self.proc = subprocess.Popen(list(responder.command), stdin=stdin,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=env, cwd=cwd, start_new_session=True)
        except OSError as e:
            log.error("responder of channel %s: cannot start %s: %s", responder.name,
                      responder.command[0], e.strerror or e)
            raise CallError(502, "responder_failed", "the responder could not be started",
                            exit_status=None) from None

    def wait(self):
        """The reply (bytes) of a command that exited 0; else ``CallError``.
        The whole process group is gone when this returns."""
        try:
            reply, stderr, overflow = self._collect()
            if overflow:
                raise CallError(413, "reply_too_large", f"the responder's answer grew past "
                                f"{self.responder.max_reply_bytes} bytes")
            status = self.proc.wait(timeout=max(0.0, self.deadline - self._timer()))
        except (subprocess.TimeoutExpired, TimeoutError):
            raise self._timed_out() from None
        finally:
            self._kill_group()
        self._log(stderr, status)
        if status != 0:
            what = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
            raise CallError(502, "responder_failed", f"the responder {what}",
                            exit_status=status)
        return reply

    def _collect(self):
        """Read stdout and stderr to their ends: (reply, stderr, overflowed)."""
        limit = self.responder.max_reply_bytes
        out, err = bytearray(), bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ, out)
            sel.register(self.proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map():
                left = self.deadline - self._timer()
                if left <= 0:
                    raise TimeoutError
                for key, _ in sel.select(left):
                    data = os.read(key.fd, _CHUNK)
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    buf = key.data
                    if buf is out:
                        buf += data
                        if len(out) > limit:
                            return b"", bytes(err), True
                    elif len(err) < STDERR_KEEP:
                        buf += data[: STDERR_KEEP - len(err)]
        return bytes(out), bytes(err), False

    def _timed_out(self):
        log.warning("responder of channel %s ran past its timeout of %g s: killed",
                    self.responder.name, self.responder.timeout)
        return CallError(504, "responder_timeout", f"the responder did not answer within "
                         f"{self.responder.timeout:g} s")

    def _kill_group(self):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.proc.stdout.close()
            self.proc.stderr.close()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.proc.wait(timeout=5)

    def _log(self, stderr, status):
        if not stderr and status == 0:
            return
        level = logging.INFO if status == 0 else logging.WARNING
        text = stderr.decode("utf-8", "replace").rstrip()
        log.log(level, "responder of channel %s exited %s%s", self.responder.name, status,
                f"; stderr: {text}" if text else "")


def handle_call_error(req, resp, ex, params):
    """Falcon error handler: a :class:`CallError` as the receiver's JSON error."""
    resp.status = ex.status
    resp.media = {"error": {"code": ex.code, "message": str(ex), **ex.fields}}
    if ex.status == 503:
        resp.set_header("Retry-After", "1")
