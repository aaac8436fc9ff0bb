"""The receiver worker: the receiver's gunicorn master as a supervised worker.

The worker process itself becomes gunicorn's arbiter, which forks the HTTP
workers ([receiver] workers). gunicorn's loop runs about once a second; the
worker hooks into it to report to droprd (the messages its HTTP workers
answered are its "handled"), to keep its ``dropr: receiver`` title, and to
hold each HTTP worker to ``[supervisor] max_rss`` as droprd holds its own
workers (gunicorn recycles them after ``max_messages_per_life`` requests).
Signals go to gunicorn unchanged: SIGTERM is its graceful stop.
"""

import logging
import os
import signal
import sys
import time

import psutil
import setproctitle
from gunicorn.arbiter import Arbiter as GunicornArbiter

from dropr.receiver import metrics
from dropr.workers.base import EXIT_BOOT_FAILED, EXIT_OK, Worker

MiB = 1 << 20
#: gunicorn halts with these when an HTTP worker cannot boot or load the app.
GUNICORN_BOOT_ERRORS = (GunicornArbiter.WORKER_BOOT_ERROR, GunicornArbiter.APP_LOAD_ERROR)


class _LastError(logging.Handler):
    """Remembers gunicorn's last error line: why it could not start."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.text = ""

    def emit(self, record):
        self.text = record.getMessage()


class _ReportingArbiter(GunicornArbiter):
    """gunicorn's arbiter, reporting to droprd on every cycle of its loop."""

    def __init__(self, app, worker):
        self.dropr_worker = worker
        super().__init__(app)

    def init_signals(self):
        # A stop asked for before gunicorn had its handlers (the worker's own
        # caught it) is passed on to gunicorn's, or it would be lost.
        super().init_signals()
        if self.dropr_worker.stopping:
            os.kill(os.getpid(), self.dropr_worker.stop_signal)

    def manage_workers(self):
        # Called once before gunicorn's loop and then on every cycle.
        super().manage_workers()
        self.dropr_worker.cycle(self)


class ReceiverWorker(Worker):
    """Serves the receiver (Falcon on gunicorn) inside the supervised tree.
    Runs in the ``dropr: receiver`` process, which is gunicorn's master."""

    kind = "receiver"
    # gunicorn's quick shutdown: its HTTP workers go at once, none is left behind.
    parent_death_signal = signal.SIGINT
    # Running once gunicorn listens (its first cycle), not when the app is built.
    report_on_boot = False

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.app = None
        self.booted = False
        self.stop_signal = signal.SIGTERM
        self._recycling = set()  # HTTP workers told to go for their memory

    def open(self):
        """Build the gunicorn application (config checked, nothing bound yet)."""
        from dropr.receiver.serve import Application

        self.app = Application(self.config)

    def cycle(self, arbiter):
        """One turn of gunicorn's loop: keep the title, hold the HTTP workers to
        max_rss, report, notice orphaning."""
        if not self.booted:
            setproctitle.setproctitle(self.title)  # gunicorn has just set its own
            self.booted = True
        self.hold_rss(arbiter)
        if time.monotonic() - self._last_report >= self.report_interval:
            self.handled = metrics.handled()
        self.report()
        if os.getppid() != self.ppid:
            os.kill(os.getpid(), signal.SIGINT)  # gunicorn's quick shutdown

    def hold_rss(self, arbiter):
        """Recycle (SIGTERM: finish the requests in hand, then go) each HTTP
        worker over max_rss that has been up backoff_reset s; a younger one is
        left alone, so that a limit below a fresh worker's size cannot make
        gunicorn fork without pause."""
        policy, live = self.config.supervisor, set(arbiter.WORKERS)
        self._recycling &= live
        if not policy.max_rss:
            return
        for pid in live - self._recycling:
            try:
                proc = psutil.Process(pid)
                rss, age = proc.memory_info().rss, time.time() - proc.create_time()
            except psutil.Error:
                continue
            if rss > policy.max_rss * MiB and age >= policy.backoff_reset:
                arbiter.log.warning("receiver worker %d: RSS %d MiB over max_rss %d: recycling "
                                    "it", pid, rss // MiB, policy.max_rss)
                self._recycling.add(pid)
                arbiter.kill_worker(pid, signal.SIGTERM)

    def _handle_stop(self, signum, frame):
        # Until gunicorn takes over the signals: remember which stop was asked.
        self.stopping, self.stop_signal = True, signum

    def tick(self):
        """Not used: gunicorn's loop drives this worker (see run())."""
        raise NotImplementedError("the receiver worker runs gunicorn's loop")

    def run(self):
        """Run gunicorn's arbiter until it halts; returns the exit code."""
        if self.stopping:
            return EXIT_OK  # told to stop while booting: nothing to serve yet
        last_error = _LastError()
        logging.getLogger("gunicorn.error").addHandler(last_error)
        try:
            _ReportingArbiter(self.app, self).run()
            code = EXIT_OK
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except RuntimeError as e:  # gunicorn's way to say it cannot start
            print(f"receiver: {e}", file=sys.stderr)
            code = 1
        finally:
            self.report(force=True)
        if code != EXIT_OK:
            booted = self.booted and code not in GUNICORN_BOOT_ERRORS
            if not booted:
                self.report_boot_error(last_error.text or f"gunicorn stopped with exit {code}")
            code = 1 if booted else EXIT_BOOT_FAILED
        sys.stderr.flush()
        return code
