"""``dropr consume``: consumers in any language. A command runs once per message
of a channel, as Postfix's ``pipe`` runs one per mail.

The command gets the message body on stdin, streamed from the stored file, and
its metadata in the environment (on top of the inherited one)::

    DROPR_ID  DROPR_CHANNEL  DROPR_PRIORITY  DROPR_CLIENT
    DROPR_RECEIVED_AT (seconds since the epoch)  DROPR_SIZE (bytes)
    DROPR_ATTEMPT (1 on the first try)

How it ends decides where the message goes, each move one rename::

    exit 0                                  -> done/<channel>/
    other exit, killed, or over --timeout   -> queue/<channel>/ again, claimed no
                                               sooner than a [retry] backoff delay
    ... on attempt --max-attempts           -> dead/<channel>/, reason beside it

Delivery is at least once. The consumer holds the lock of its work folder for
its whole life; if it dies while a command runs, the message stays in
``work/<consumer>/`` and the next consumer of the same name returns it to the
queue at start, so a command may see a message again: make it idempotent (by
``DROPR_ID``). A consumer that is killed does not stop the command it runs.
SIGTERM or SIGINT ends the loop once the running command has finished; a
second one kills the command and returns its message uncounted.
"""

import dataclasses
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

from dropr import backoff, names
from dropr.errors import ConfigError, DroprError, NotFound, ValidationError
from dropr.store import Failures

log = logging.getLogger(__name__)

#: Seconds between looks at a running command, the deadline and the signals.
POLL_SLICE = 0.1
#: Seconds a command's process group has between SIGTERM and SIGKILL.
KILL_GRACE = 5.0
#: How much of a failing command's stderr is kept as its reason.
TAIL_BYTES, TAIL_LINES = 4096, 10


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one run of the command ended; ``reason`` says why it failed."""

    ok: bool
    reason: str = ""
    interrupted: bool = False


def message_env(message, attempt):
    """The ``DROPR_*`` variables the command sees for ``message``;
    ``DROPR_LEGACY_ID`` too for a message a PHP dropr client sent."""
    legacy = getattr(message, "legacy_id", None)
    return {**({"DROPR_LEGACY_ID": legacy} if legacy is not None else {}),
        "DROPR_ID": message.id,
        "DROPR_CHANNEL": message.channel,
        "DROPR_PRIORITY": str(message.priority),
        "DROPR_CLIENT": message.client or "",
        "DROPR_RECEIVED_AT": f"{message.received_at:.3f}",
        "DROPR_SIZE": str(message.size),
        "DROPR_ATTEMPT": str(attempt),
    }


class _Tail(threading.Thread):
    """Copies a command's stderr to ours as it comes, keeping its last bytes."""

    def __init__(self, pipe, out):
        super().__init__(daemon=True)
        self._pipe, self._out, self._data = pipe, out, b""

    def run(self):
        with self._pipe:
            while chunk := self._pipe.read(65536):
                self._data = (self._data + chunk)[-TAIL_BYTES:]
                try:
                    self._out.write(chunk)
                    self._out.flush()
                except (OSError, ValueError):
                    pass  # our stderr is gone; keep draining so the command never blocks

    def text(self):
        return "\n".join(self._data.decode(errors="replace").splitlines()[-TAIL_LINES:])


class Command:
    """The consumer's command, run once per message in a session of its own (so
    that a timeout kills all it started). Used in the ``dropr consume`` process;
    ``stop_count`` tells how many stop signals have come."""

    def __init__(self, argv, *, timeout=None, env=None, stderr=None, stop_count=lambda: 0):
        self.argv = list(argv)
        self.timeout = timeout
        self._env = dict(os.environ if env is None else env)
        self._stderr = stderr or sys.stderr.buffer
        self._stop_count = stop_count

    def run(self, message, attempt):
        """Run the command with ``message`` on stdin; returns its :class:`Outcome`."""
        env = {**self._env, **message_env(message, attempt)}
        with message.open() as body:  # the child gets the descriptor, never our memory
            proc = subprocess.Popen(self.argv, stdin=body, stderr=subprocess.PIPE, bufsize=0,
                                    env=env, start_new_session=True)
        tail = _Tail(proc.stderr, self._stderr)
        tail.start()
        how = self._wait(proc)
        tail.join(1.0)  # a background child may hold stderr open; do not wait for it
        return self._outcome(proc.returncode, how, tail.text())

    def _wait(self, proc):
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            try:
                proc.wait(POLL_SLICE)
                return "exited"
            except subprocess.TimeoutExpired:
                pass
            if self._stop_count() >= 2:
                _kill_group(proc)
                return "interrupted"
            if deadline is not None and time.monotonic() >= deadline:
                _kill_group(proc)
                return "timed out"

    def _outcome(self, returncode, how, stderr_tail):
        if how == "interrupted":
            return Outcome(False, "interrupted by a second stop signal", interrupted=True)
        if how == "timed out":
            reason = f"timed out after {self.timeout:g}s"
        elif returncode == 0:
            return Outcome(True)
        elif returncode < 0:
            reason = f"killed by signal {_signal_name(-returncode)}"
        else:
            reason = f"exit status {returncode}"
        if stderr_tail:
            reason += "\nlast lines of stderr:\n" + stderr_tail
        return Outcome(False, reason)


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _kill_group(proc):
    """SIGTERM the command's process group; SIGKILL what is left after KILL_GRACE."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(KILL_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)  # children that outlived their leader, too
    proc.wait()


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class Consumer:
    """Claims the messages of one channel and settles each by how its command
    ended: ack, retry later with backoff, or bury. Runs in the ``dropr consume``
    process. Building it has no side effects; :meth:`open` locks the work folder,
    :meth:`close` gives back what is still claimed and lets go of the lock."""

    def __init__(self, store, command, *, channel, name, retry, max_attempts=5, batch=1,
                 signals=None, clock=time.time, rand=random.random):
        self.store = store
        self.command = command
        self.channel = names.check_name(channel, "channel")
        self.name = names.check_name(name, "consumer")
        self.retry = retry
        self.max_attempts = max_attempts
        self.batch = batch
        self.signals = [] if signals is None else signals  # filled by the signal handlers
        self._clock = clock
        self._rand = rand
        self._work = None

    def open(self):
        """Lock ``work/<name>/`` (``AlreadyRunning`` if taken), return what a dead
        earlier run left there to the queue; returns self."""
        self._work = self.store.open_work(self.name)
        if self._work.recovered:
            log.warning("%s: returned %d messages of an earlier run to the queue",
                        self.name, self._work.recovered)
        self.store.tidy_failures(self.channel)
        log.info("%s: consuming channel %s with %s", self.name, self.channel,
                 " ".join(self.command.argv))
        return self

    def close(self):
        """Give claimed, unprocessed messages back to the queue; release the lock."""
        if self._work is not None:
            try:
                self.store.unclaim(self._work)
            finally:
                self._work.close()
                self._work = None

    def run(self, *, once=False, poll=0.5):
        """Consume until a stop signal; with ``once``, until nothing is due."""
        while not self.signals:
            if self.run_once() == 0:
                if once:
                    break
                self._pause(poll)

    def _pause(self, seconds):
        deadline = time.monotonic() + seconds
        while not self.signals and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(POLL_SLICE, left))

    def run_once(self):
        """Claim up to ``batch`` due messages and handle each; returns how many were
        claimed. After a stop signal the rest of the batch waits for :meth:`close`."""
        claimed = self.store.claim(self.channel, self.name, self.batch)
        for message in claimed:
            if self.signals:
                break
            self.handle(message)
        return len(claimed)

    def handle(self, message):
        """Run the command for one claimed message and settle it; returns the Outcome."""
        attempt = self.store.failures(message).attempts + 1
        try:
            outcome = self.command.run(message, attempt)
        except OSError as e:
            raise DroprError(f"cannot run {self.command.argv[0]}: {e.strerror or e}") from None
        try:
            self._settle(message, attempt, outcome)
        except NotFound:
            log.warning("%s gone from the work folder (moved by an operator?), attempt %d",
                        message.id, attempt)
        return outcome

    def _settle(self, message, attempt, outcome):
        why = outcome.reason.partition("\n")[0]
        if outcome.ok:
            self.store.ack(message)
            log.info("%s done, attempt %d", message.id, attempt)
        elif outcome.interrupted:
            self.store.release(message)
            log.warning("%s released, attempt %d %s", message.id, attempt, why)
        elif attempt >= self.max_attempts:
            self.store.bury(message, Failures(attempt, 0.0, outcome.reason))
            log.error("%s dead, attempt %d of %d: %s", message.id, attempt, self.max_attempts, why)
        else:
            r = self.retry
            wait = backoff.delay(attempt, base=r.base, factor=r.factor, cap=r.cap,
                                 jitter=r.jitter, rand=self._rand)
            self.store.retry(message, Failures(attempt, self._clock() + wait, outcome.reason))
            log.warning("%s retry in %.2fs, attempt %d failed: %s", message.id, wait, attempt, why)


def default_name(config, channel):
    """``consume-<host>-<channel>``: one consumer per channel on each host, unless named."""
    return f"consume-{config.client.name}-{channel}"[: names.NAME_MAX]


def _check(channel, command, *, batch, max_attempts, timeout, poll):
    names.check_name(channel, "channel")
    if not command:
        raise ValidationError("no command given: dropr consume --channel C -- COMMAND ARGS...")
    if shutil.which(command[0]) is None:
        raise ValidationError(f"command {command[0]!r} not found or not executable")
    for option, value in (("--batch", batch), ("--max-attempts", max_attempts)):
        if value < 1:
            raise ValidationError(f"{option} must be at least 1, not {value}")
    for option, value in (("--timeout", timeout), ("--poll", poll)):
        if value is not None and not value > 0:
            raise ValidationError(f"{option} must be a positive number of seconds, not {value}")


def main(config, *, channel, command, consumer=None, once=False, batch=1, max_attempts=5,
         timeout=None, poll=0.5):
    """``dropr consume``: one Consumer in the foreground until SIGTERM or SIGINT (or,
    with ``once``, until nothing is due). Returns the exit code (0)."""
    _check(channel, command, batch=batch, max_attempts=max_attempts, timeout=timeout, poll=poll)
    if config.receiver.store is None:
        raise ConfigError(f"{config.path}: [receiver] store is not set; dropr consume reads it")
    from dropr.store import open_store

    store = open_store(config)  # [store] backend: files or jetstream
    signals = []
    cmd = Command(command, timeout=timeout, stop_count=lambda: len(signals))
    c = Consumer(store, cmd, channel=channel, name=consumer or default_name(config, channel),
                 retry=config.retry, max_attempts=max_attempts, batch=batch, signals=signals)
    handlers = {sig: signal.signal(sig, lambda signum, frame: signals.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        c.open().run(once=once, poll=poll)
    finally:
        c.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0
