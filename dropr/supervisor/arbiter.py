"""The angel: droprd's supervisor loop.

One loop with a fixed cycle, after gunicorn's arbiter: sleep until a signal
arrives or the tick passes; handle each recorded signal; read the workers'
reports; reap the exited; check the health of the living; murder the ones
that outstayed their deadline; bring the tree back to what the config asks
for; write the status file. Signal handlers only record the signal on a
``queue.SimpleQueue`` and, through ``signal.set_wakeup_fd``, wake the loop.

Signals: TERM, INT, QUIT stop gracefully; HUP reloads the config; USR1 takes
the restart requests (see :mod:`dropr.supervisor.control`); CHLD wakes the loop.
"""

import contextlib
import logging
import os
import queue
import random
import select
import shutil
import signal
import time

import setproctitle

from dropr.errors import ConfigError
from dropr.ipc import Notices
from dropr.spool import Spool, perms
from dropr.supervisor import control, reload, slots, status
from dropr.supervisor import log as log_mod
from dropr.supervisor.health import Health
from dropr.supervisor.slots import THEN_REMOVE, THEN_RESTART, THEN_STOP
from dropr.supervisor.states import State
from dropr.workers import kinds
from dropr.workers.base import EXIT_BOOT_FAILED

log = logging.getLogger(__name__)

TITLE = "dropr: supervisor"


class Arbiter:
    """Forks the workers named in ``[workers]``, watches them, restarts them by
    the restart policy, applies reloads and stops them cleanly. Runs in the
    droprd supervisor process (daemon or foreground); one per process.

    ``pidfile`` is an acquired :class:`~dropr.supervisor.daemon.Pidfile`;
    ``ready`` (optional) is told once the workers are started."""

    SIGNALS = ("TERM", "INT", "QUIT", "HUP", "USR1", "CHLD")

    def __init__(self, config, *, pidfile, ready=None, clock=time.monotonic,
                 wall=time.time, rand=random.random):
        self.config = config
        self.pidfile = pidfile
        self.ready = ready
        self.spool = Spool(config.client.spool, fsync=config.client.fsync,
                           group=config.client.group)
        self.slots = {}
        self.notices = None
        self.stopping = False
        self.generation = 0
        self.reload_result = None
        self.started_wall = 0.0
        self._clock, self._wall, self._rand = clock, wall, rand
        self._signals = queue.SimpleQueue()
        self._pipe = None
        self.health = Health()

    # -- the loop -------------------------------------------------------------

    def run(self):
        """Start the workers and supervise them until told to stop; returns the
        exit code. Cleans up (queues, status file, pidfile) on the way out."""
        code = 0
        try:
            self.start()
            while not (self.stopping and not any(s.alive for s in self.slots.values())):
                self.loop_once()
        except Exception as e:
            log.exception("supervisor failed; killing every worker")
            if self.ready is not None:
                self.ready.failed(f"droprd failed to start: {e}")
            self._kill_all()
            code = 1
        self.cleanup()
        log.info("stopped")
        return code

    def start(self):
        """Take over the process, make the queues and spool, start the workers."""
        setproctitle.setproctitle(TITLE)
        self.started_wall = self._wall()
        self._init_signals()
        self.spool.create(strict=True)
        gid = perms.group_id(self.config.client.group) if self.config.client.group else None
        self.notices = Notices.replace(self.spool.root, gid=gid)
        self.config.supervisor.status_file.parent.mkdir(parents=True, exist_ok=True)
        slots.reconcile(self.slots, self.config.workers)
        self.manage()
        self.write_status()
        log.info("started with %d workers (config %s)", len(self.slots), self.config.path)
        if self.ready is not None:
            self.ready.ready(f"droprd started (pid {os.getpid()})")

    def loop_once(self):
        """One cycle: wait, handle signals, read reports, reap, check, murder,
        manage, write the status file."""
        self.sleep(self.config.supervisor.tick)
        while True:
            try:
                signum = self._signals.get_nowait()
            except queue.Empty:
                break
            name = signal.Signals(signum).name.removeprefix("SIG").lower()
            getattr(self, f"handle_{name}")()
        self.read_reports()
        self.reap()
        self.check_health()
        self.murder()
        self.manage()
        self.write_status()

    def sleep(self, timeout):
        """Wait up to ``timeout`` s; a signal ends the wait at once."""
        with contextlib.suppress(InterruptedError):
            select.select([self._pipe[0]], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._pipe[0], 512):
                pass

    def _init_signals(self):
        self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        for name in self.SIGNALS:
            signal.signal(getattr(signal, f"SIG{name}"), self._record)

    def _stop_signals(self):
        return {getattr(signal, f"SIG{name}") for name in self.SIGNALS}

    def _record(self, signum, frame):
        self._signals.put_nowait(signum)

    # -- signal handlers --------------------------------------------------------

    def handle_term(self):
        """SIGTERM: stop gracefully."""
        self.begin_stop("SIGTERM")

    def handle_int(self):
        """SIGINT (Ctrl-C in the foreground): stop gracefully."""
        self.begin_stop("SIGINT")

    def handle_quit(self):
        """SIGQUIT: stop gracefully."""
        self.begin_stop("SIGQUIT")

    def handle_chld(self):
        """SIGCHLD: nothing to do here; the loop reaps every cycle."""

    def handle_usr1(self):
        """SIGUSR1: act on the waiting restart requests."""
        for path, request in control.take_requests(self.pidfile.path):
            if self.stopping:
                control.done(path, "droprd is stopping")
                continue
            if request.get("action") == control.RESTART:
                self.restart(request.get("names") or [])
            control.done(path)

    def handle_hup(self):
        """SIGHUP: re-read the config file and apply it (see
        :mod:`dropr.supervisor.reload`); a bad one is refused."""
        if self.stopping:
            return
        self.generation += 1
        try:
            new = reload.load(self.config)
        except (ConfigError, ValueError) as e:  # whatever the file holds, the tree goes on
            log.error("reload refused, keeping the running config: %s", e)
            self.reload_result = {"ok": False, "error": str(e), "time": self._wall()}
            return
        old, self.config = self.config, new
        log_mod.set_level(new.supervisor.log_level)
        self._apply_counts()
        if reload.workers_affected(old, new):
            log.info("worker settings changed: replacing every worker")
            self.restart([])
        elif reload.receiver_affected(old, new) and "receiver" in self.slots:
            log.info("receiver settings changed: replacing the receiver")
            self.restart(["receiver"])
        log.info("reloaded %s (generation %d)", new.path, self.generation)
        self.reload_result = {"ok": True, "error": "", "time": self._wall()}

    # -- verbs: spawn, kill, reap, murder, manage ---------------------------------

    def spawn(self, slot):
        """Fork a process for ``slot``. The child becomes the worker and never
        returns from here."""
        try:
            cls = kinds.kind(slot.kind).shell_class()
        except Exception as e:
            slot.state, slot.error = State.FATAL, f"cannot load worker kind {slot.kind}: {e}"
            log.error("%s: %s", slot.name, slot.error)
            return
        worker = cls(self.config, number=slot.number, ppid=os.getpid(),
                     max_messages=self._budget(slot.kind))
        # Signals wait, blocked, until the child has shed our handlers: one
        # arriving in between would be taken by our handler and lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._stop_signals())
        try:
            pid = os.fork()
        except OSError as e:  # EAGAIN, ENOMEM: often gone by the next try
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            slot.not_forked(e, self._clock(), self.config.supervisor)
            log.error("%s: cannot fork (%s); trying again in %.1fs", slot.name, e,
                      slot.restart_at - self._clock())
            return
        if pid == 0:
            self._become(worker, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        slot.spawned(pid, self._clock(), self._wall(), worker.max_messages)
        self.health.watch(pid)
        log.info("spawned %s (pid %d)", slot.name, pid)

    def _become(self, worker, mask):
        """In the child: shed the supervisor's signals and descriptors, then run."""
        code = EXIT_BOOT_FAILED
        try:
            signal.set_wakeup_fd(-1)
            for name in self.SIGNALS:
                signal.signal(getattr(signal, f"SIG{name}"), signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a waiting SIGTERM ends it here
            for fd in (*self._pipe, self.pidfile.fd):
                if fd is not None:
                    os.close(fd)
            if self.ready is not None:
                self.ready.close()
            worker.init_process()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            log.exception("%s crashed", worker.title)
            code = 1
        finally:
            os._exit(code)

    def kill(self, slot, sig, then, deadline, reason=""):
        """Send ``sig`` to a worker (once) and note what follows its exit and
        why; it gets SIGKILL if it is still there at ``deadline``."""
        if slot.state is not State.STOPPING:
            self._send(slot.pid, sig)
        slot.stopping(then, deadline, reason)

    def reap(self):
        """Collect every exited child and apply the restart policy to its slot."""
        exits = []
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            exits.append((pid, wait_status))
        if exits:
            self.read_reports()  # a worker's last report, sent just before it exited
        for pid, wait_status in exits:
            slot = self._slot_of(pid)
            if slot is not None:
                self._exited(slot, wait_status)

    def _exited(self, slot, wait_status):
        self.health.forget(slot.pid)
        pid = slot.pid
        keep = slot.exited(wait_status, self._clock(), self.config.supervisor, self._wall())
        level = logging.WARNING if slot.failed else logging.INFO
        log.log(level, "%s (pid %d) %s: now %s%s", slot.name, pid, slot.last_exit,
                "removed" if not keep else slot.state, f" ({slot.error})" if slot.error else "")
        if not keep:
            del self.slots[slot.name]

    def murder(self):
        """SIGKILL every stopping worker past its deadline."""
        now = self._clock()
        for slot in self.slots.values():
            if slot.state is State.STOPPING and slot.kill_at is not None and now >= slot.kill_at:
                log.warning("%s (pid %d) did not stop in time: SIGKILL", slot.name, slot.pid)
                self._send(slot.pid, signal.SIGKILL)
                slot.kill_at = None

    def manage(self):
        """Start a process for every slot that is due (new, or restart delay over)."""
        if self.stopping:
            return
        now = self._clock()
        for slot in list(self.slots.values()):
            if slot.due(now):
                self.spawn(slot)

    # -- health -----------------------------------------------------------------

    def read_reports(self):
        """Take the workers' heartbeats and counters from the report queue."""
        now, wall = self._clock(), self._wall()
        for report in self.notices.reports():
            slot = self._slot_of(report.get("pid"))
            if slot is not None and slot.alive:
                slot.heard(report, now, wall)

    def check_health(self):
        """psutil (gone, zombie, RSS) and heartbeat checks of every living worker."""
        now, policy = self._clock(), self.config.supervisor
        for slot in list(self.slots.values()):
            if not slot.alive:
                continue
            slot.settle(now, policy)
            verdict = self.health.judge(slot, now, policy,
                                        kinds.kind(slot.kind).silence_limit(self.config))
            if verdict is None:
                continue
            if verdict.gone:
                self._exited(slot, None)  # vanished without our waitpid seeing it
                continue
            log.warning("%s (pid %d) %s: terminating", slot.name, slot.pid, verdict.why)
            self.kill(slot, signal.SIGTERM, verdict.then, now + policy.kill_timeout, verdict.why)

    # -- operator actions -----------------------------------------------------------

    def begin_stop(self, why):
        """Ask every worker to finish (or return) its work and exit; SIGKILL
        follows after ``stop_timeout``. The loop ends when all are gone."""
        if self.stopping:
            return
        log.info("stopping on %s", why)
        self.stopping = True
        deadline = self._clock() + self.config.supervisor.stop_timeout
        for slot in self.slots.values():
            if slot.alive:
                then = THEN_REMOVE if slot.then == THEN_REMOVE else THEN_STOP
                self.kill(slot, signal.SIGTERM, then, deadline)
            else:
                slot.state = State.STOPPED

    def restart(self, names):
        """Replace the named workers (every worker if none): a running one
        gracefully, a waiting or fatal one at once, forgetting past failures.
        A name may be spelled the older way (``sender-2``)."""
        names = [kinds.canonical_name(n) for n in names]
        unknown = [n for n in names if n not in self.slots]
        if unknown:
            log.warning("restart: no worker named %s", ", ".join(unknown))
        targets = [self.slots[n] for n in names if n in self.slots] if names else list(
            self.slots.values())
        now = self._clock()
        for slot in targets:
            if slot.then == THEN_REMOVE:
                continue
            log.info("restarting %s", slot.name)
            slot.revive(now)
            if slot.alive:
                self.kill(slot, signal.SIGTERM, THEN_RESTART,
                          now + self.config.supervisor.stop_timeout)

    def _apply_counts(self):
        """Bring the slots in line with [workers]: surplus ones are stopped
        gracefully and forgotten once gone, missing ones are started by manage()."""
        deadline = self._clock() + self.config.supervisor.stop_timeout
        for slot in slots.reconcile(self.slots, self.config.workers):
            log.info("%s is no longer wanted: stopping it", slot.name)
            self.kill(slot, signal.SIGTERM, THEN_REMOVE, deadline)

    # -- status and clean-up ---------------------------------------------------------

    def write_status(self):
        """Replace the status file with the current state of the tree."""
        document = status.document(
            pid=os.getpid(), state="stopping" if self.stopping else "running",
            config=self.config, started=self.started_wall, now=self._wall(),
            generation=self.generation, reload=self.reload_result, slots=self.slots.values())
        try:
            status.write(self.config.supervisor.status_file, document)
        except OSError as e:
            log.warning("cannot write the status file: %s", e)

    def cleanup(self):
        """After the last worker is gone: return claims left in active/ to queue/,
        remove the queues, the status file, the requests and the pidfile."""
        with contextlib.suppress(OSError):
            moved = self.spool.recover_orphans()
            if moved:
                log.info("returned %d claimed messages to queue/", moved)
        if self.notices is not None:
            self.notices.remove()
        status.remove(self.config.supervisor.status_file)
        shutil.rmtree(control.requests_dir(self.pidfile.path), ignore_errors=True)
        signal.set_wakeup_fd(-1)
        self.pidfile.release()

    def _kill_all(self):
        for slot in self.slots.values():
            if slot.alive:
                self._send(slot.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(slot.pid, 0)
                slot.state, slot.pid = State.STOPPED, None

    # -- helpers -----------------------------------------------------------------------

    def _slot_of(self, pid):
        for slot in self.slots.values():
            if slot.pid == pid and pid is not None:
                return slot
        return None

    def _budget(self, kind):
        """This life's message budget: max_messages_per_life +/- recycle_jitter
        (0, none, for a kind that is not recycled by count)."""
        policy = self.config.supervisor
        if not policy.max_messages_per_life or not kinds.kind(kind).budget:
            return 0
        spread = 1.0 + policy.recycle_jitter * (2.0 * self._rand() - 1.0)
        return max(1, round(policy.max_messages_per_life * spread))

    @staticmethod
    def _send(pid, sig):
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(pid, sig)
