"""The receiver worker: the receiver's gunicorn master as a supervised worker.

The worker process itself becomes gunicorn's arbiter, which forks the HTTP
workers ([receiver] workers). gunicorn's loop runs about once a second; the
worker hooks into it to report to droprd and to keep its ``dropr: receiver``
title. Signals go to gunicorn unchanged: SIGTERM is its graceful stop.
"""

import os
import signal
import sys

import setproctitle
from gunicorn.arbiter import Arbiter as GunicornArbiter

from dropr.workers.base import EXIT_BOOT_FAILED, EXIT_OK, Worker


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
        self.dropr_worker.cycle()


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

    def open(self):
        """Build the gunicorn application (config checked, nothing bound yet)."""
        from dropr.receiver.serve import Application

        self.app = Application(self.config)

    def cycle(self):
        """One turn of gunicorn's loop: keep the title, report, notice orphaning."""
        if not self.booted:
            setproctitle.setproctitle(self.title)  # gunicorn has just set its own
            self.booted = True
        self.report()
        if os.getppid() != self.ppid:
            os.kill(os.getpid(), signal.SIGINT)  # gunicorn's quick shutdown

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
            code = 1 if self.booted else EXIT_BOOT_FAILED
        sys.stderr.flush()
        return code
