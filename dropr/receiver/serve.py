"""``dropr receiver``: the receiver app under gunicorn, in the foreground.

gunicorn is configured from the dropr config alone: no gunicorn config file,
no ``GUNICORN_CMD_ARGS``, no control socket (it would be one per user, shared
by every receiver on the host). Workers are ``gthread`` with a few threads
each, so the senders' kept-alive connections wait in the worker's poller
instead of holding a whole process.
"""

import math
import os
import signal
import ssl

import gunicorn.app.base

import setproctitle

from dropr.receiver import metricsfolder
from dropr.errors import ConfigError
from dropr.receiver.app import create_app
from dropr.receiver.auth import Clients, startup_notes
from dropr.store.jetstream.wire import require_nats

MASTER_TITLE = "dropr: receiver"
WORKER_TITLE = "dropr: receiver worker"
#: Request threads per worker process.
THREADS = 4
#: The umask gunicorn binds a unix socket with: srwxrwx--- (the receiver's
#: user and group; a reverse proxy joins the group).
SOCKET_UMASK = 0o007
#: Seconds an idle kept-alive connection stays open (the senders pause about
#: [sender] wait between batches; one reconnect after a long pause is cheap).
KEEPALIVE = 30


def settings(config):
    """The gunicorn settings for ``config``, by gunicorn setting name."""
    rc = config.receiver
    # On stop, finish requests in flight, but within the time the supervisor
    # allows before it kills the receiver, with a second to spare.
    graceful = max(1, math.floor(config.supervisor.stop_timeout) - 1)
    return {
        "bind": [rc.bind],
        "workers": rc.workers,
        # gthread, answering the requests gunicorn refuses itself in JSON.
        "worker_class": "dropr.receiver.worker.ThreadWorker",
        "threads": THREADS,
        "keepalive": KEEPALIVE,
        "timeout": max(1, math.ceil(rc.timeout)),
        # Recycled as droprd recycles its workers: after max_messages_per_life
        # requests, spread by up to recycle_jitter of it (0: never).
        "max_requests": config.supervisor.max_messages_per_life,
        "max_requests_jitter": round(config.supervisor.max_messages_per_life
                                     * config.supervisor.recycle_jitter),
        "graceful_timeout": graceful,
        "preload_app": False,  # each worker builds its own app (and id generator)
        "accesslog": None,
        "errorlog": "-",
        "loglevel": config.supervisor.log_level,
        "proc_name": "dropr-receiver",
        "control_socket_disable": True,
        # gunicorn's default umask 0 makes a unix socket srwxrwxrwx: any local
        # user could upload as the loopback client. Owner and group only.
        "umask": SOCKET_UMASK,
        "when_ready": when_ready,
        "pre_fork": pre_fork,
        "post_fork": post_fork,
        "child_exit": child_exit,
        "on_exit": on_exit,
        **_tls_settings(rc),
    }


def _tls_settings(rc):
    if not rc.certfile:
        return {}
    tls = {"certfile": str(rc.certfile), "keyfile": str(rc.keyfile)}
    if rc.client_ca_file:  # mutual TLS: no certificate from this CA, no handshake
        tls.update(ca_certs=str(rc.client_ca_file), cert_reqs=ssl.CERT_REQUIRED)
    return tls


def check_tls(config):
    """Load ``[receiver] certfile`` and ``keyfile`` as gunicorn will, once,
    before it binds: ConfigError naming the keys if that fails (missing,
    unreadable, not PEM, not a pair), instead of every connection failing."""
    rc = config.receiver
    if not rc.certfile:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(rc.certfile,
                                                                           rc.keyfile)
    except OSError as e:  # ssl.SSLError included
        reason = f"{e.strerror}: {e.filename}" if e.filename else (e.strerror or str(e))
        raise ConfigError(f"{config.path}: [receiver] certfile, keyfile: cannot load "
                          f"{rc.certfile} with {rc.keyfile}: {reason}") from None
    if rc.client_ca_file:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=rc.client_ca_file)
        except OSError as e:
            reason = e.strerror or str(e)
            raise ConfigError(f"{config.path}: [receiver] client_ca_file: cannot load "
                              f"{rc.client_ca_file}: {reason}") from None


def log_access_notes(server, config):
    """Say in the start-up log how clients reach the receiver and who may."""
    rc = config.receiver
    server.log.info("serving %s", f"HTTPS with certificate {rc.certfile}" if rc.certfile
                    else "plain HTTP (no [receiver] certfile)")
    if rc.client_ca_file:
        server.log.info("clients must present a certificate signed by %s", rc.client_ca_file)
    for level, text in startup_notes(config, server.app.clients):
        server.log.log(level, text)


def when_ready(server):
    """gunicorn hook, in the master once it listens and before it forks: make
    the folder where the workers keep their metrics; say where, and on what store."""
    config = server.app.config
    folder = metricsfolder.open_folder()
    server.log.info("dropr receiver listening on %s, store %s (fsync %s), metrics in %s",
                    config.receiver.bind, config.receiver.store,
                    "on" if config.receiver.fsync else "off", folder)
    log_access_notes(server, config)


def child_exit(server, worker):
    """gunicorn hook, in the master when a worker has exited."""
    metricsfolder.worker_exited(worker.pid, live=server.WORKERS)


def on_exit(server):
    """gunicorn hook, in the master as it stops: remove the metrics folder."""
    metricsfolder.close_folder()


#: The signals a gunicorn master sends its workers to stop them.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
_unblock_after_fork = []  # [True] once the master unblocks them after each fork


def pre_fork(server, worker):
    """gunicorn hook, in the master before each fork. gunicorn titles the master
    itself after when_ready (and again on reload), always before it forks.

    The stop signals are blocked across the fork (and unblocked in the master
    right after it): until the new worker sets its own handlers it has the
    master's, which only queue a signal for the master's loop, that the
    worker never runs. A stop sent in that moment was lost, and the master
    waited its whole graceful_timeout before it killed the worker."""
    setproctitle.setproctitle(MASTER_TITLE)
    if not _unblock_after_fork:
        os.register_at_fork(after_in_parent=_unblock_stops)
        _unblock_after_fork.append(True)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _unblock_stops():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def post_fork(server, worker):
    """gunicorn hook, in the new worker right after gunicorn titled it: the
    stop signals, blocked since before the fork, now end the worker (one
    sent since, at once). A worker that has not booted holds no request; it
    sets its own handlers early in its boot."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit_booting)
    _unblock_stops()
    setproctitle.setproctitle(WORKER_TITLE)


def _exit_booting(signum, frame):
    os._exit(0)  # no clean-up to do yet, and no core for SIGQUIT


class Application(gunicorn.app.base.BaseApplication):
    """gunicorn serving the receiver app for one :class:`~dropr.config.Config`.

    Building it has no side effects (no sockets, signals, titles, and no files
    but the token files and the TLS pair it reads to check them), so the
    supervisor can build it and call :meth:`run` in a forked worker;
    ``run()`` makes the calling process the gunicorn master
    ("dropr: receiver"), which forks the workers ("dropr: receiver worker")
    that each build their own app. ``run()`` ends the process with
    ``SystemExit`` when gunicorn stops."""

    def __init__(self, config):
        self.config = config
        if config.store.backend == "jetstream":
            require_nats()  # here, not in every worker that fails to boot
        check_tls(config)
        # Read once here, in the master: a bad token file stops the start, and
        # the workers inherit the tokens.
        self.clients = Clients.load(config)
        super().__init__(prog="dropr receiver")

    def load_config(self):
        for name, value in settings(self.config).items():
            # Settings an older gunicorn lacks (the control socket) are left out.
            if name in self.cfg.settings:
                self.cfg.set(name, value)

    def load(self):
        return create_app(self.config, clients=self.clients)


def main(config):
    """Run the receiver in the foreground until it is stopped; returns the exit code."""
    try:
        Application(config).run()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
