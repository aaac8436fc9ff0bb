"""``droprd``: start, stop and look at the supervisor tree.

    droprd [--config PATH] start [--foreground]
    droprd [--config PATH] stop
    droprd [--config PATH] status [--json]
    droprd [--config PATH] reload
    droprd [--config PATH] restart [NAME]     (NAME as ``ps`` and ``status`` show it: sender 2)

``--config`` defaults to ``$DROPR_CONFIG``, then ``conf/dropr.toml``; it may
also follow the subcommand (``droprd start --config PATH``).
``start`` daemonizes and returns once the workers are started; ``--foreground``
stays attached and logs to stderr (systemd, containers, ``make run``).
How the commands reach the running supervisor: :mod:`dropr.supervisor.control`.

Exit codes (LSB): 0 ok; 1 error (a bad config, already running, a refused
reload); 2 bad arguments; 3 ``status``: not running; 7 ``reload``/``restart``:
not running.
"""

import argparse
import json
import os
import signal
import sys
import time

from dropr import config as config_mod
from dropr.errors import AlreadyRunning, DroprError
from dropr.options import add_everywhere
from dropr.spool import Spool
from dropr.supervisor import control, daemon, status
from dropr.supervisor import log as log_mod
from dropr.supervisor.arbiter import Arbiter
from dropr.workers import kinds

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_STOPPED, EXIT_NOT_RUNNING = 0, 1, 2, 3, 7

def _parser():
    p = argparse.ArgumentParser(prog="droprd", description="dropr supervisor (angel)")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the supervisor and its workers")
    start.add_argument("--foreground", action="store_true",
                       help="do not daemonize; log to stderr")
    sub.add_parser("stop", help="stop gracefully; claimed messages go back to queue/")
    st = sub.add_parser("status", help="workers, their health, and the spool (exit 3: stopped)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("reload", help="re-read the config (validated first) and apply it")
    rs = sub.add_parser("restart", help="restart one worker (e.g. sender 2, reaper), or all")
    rs.add_argument("name", nargs="*", help="worker name as `droprd status` shows it "
                    "(\"sender 2\", or the words sender 2)")
    add_everywhere(p, "--config", help="config file (default: $DROPR_CONFIG, then "
                   "conf/dropr.toml); before or after the subcommand")
    return p


def main(argv=None):
    """Entry point of the ``droprd`` command."""
    args = _parser().parse_args(argv)
    try:
        path = config_mod.resolve_path(args.config).resolve()
        config = config_mod.load(path)
        return _COMMANDS[args.command](args, config)
    except (DroprError, OSError) as e:
        print(f"droprd: {e}", file=sys.stderr)
        return EXIT_ERROR


def cmd_start(args, config):
    """Start the tree, in the background unless --foreground."""
    pidfile = daemon.Pidfile(config.supervisor.pidfile)
    pid = pidfile.running_pid()
    if pid:
        raise AlreadyRunning(f"already running (pid {pid}; "
                             f"pidfile {config.supervisor.pidfile})")
    # A spool that producers cannot use is said here, by name, before anything
    # starts (and fixed where droprd's user owns it): not by each put() later.
    Spool(config.client.spool, fsync=config.client.fsync,
          group=config.client.group).create(strict=True)
    if args.foreground:
        log_mod.setup(config.supervisor.log_level)
        pidfile.acquire()
        return Arbiter(config, pidfile=pidfile).run()
    readiness, answer = daemon.daemonize(config.supervisor.log_file)
    if readiness is None:
        ok, text = answer
        print(text if ok else f"droprd: {text}", file=sys.stdout if ok else sys.stderr)
        return EXIT_OK if ok else EXIT_ERROR
    return _run_daemon(config, pidfile, readiness)


def _run_daemon(config, pidfile, readiness):
    log_mod.setup(config.supervisor.log_level)
    try:
        pidfile.acquire()
    except AlreadyRunning as e:
        readiness.failed(str(e))
        return EXIT_ERROR
    return Arbiter(config, pidfile=pidfile, ready=readiness).run()


def cmd_stop(args, config):
    """Stop gracefully and wait until the supervisor is gone."""
    path = config.supervisor.pidfile
    pid = _running(path)
    if not pid:
        print("droprd is not running")
        return EXIT_OK
    os.kill(pid, signal.SIGTERM)
    policy = config.supervisor
    if _wait(lambda: not daemon.running_pid(path, settle=0),
             policy.stop_timeout + policy.kill_timeout + 10.0):
        _wait(lambda: not daemon.alive(pid), 2.0)  # it lets go of the pidfile just before exiting
        print(f"droprd stopped (pid {pid})")
        return EXIT_OK
    print(f"droprd: pid {pid} did not stop in time; killing it", file=sys.stderr)
    os.kill(pid, signal.SIGKILL)  # its workers follow through their parent-death signal
    _wait(lambda: not daemon.running_pid(path, settle=0), 5.0)
    return EXIT_ERROR


def cmd_status(args, config):
    """Print the workers and the spool; exit 3 when the tree is not running."""
    pid = daemon.running_pid(config.supervisor.pidfile)
    if not pid:
        print(json.dumps({"running": False}) if args.json else "droprd is not running")
        return EXIT_STOPPED
    document = status.read(config.supervisor.status_file) or {"pid": pid, "workers": []}
    document["running"] = True
    status.add_live(document)
    counts = Spool(config.client.spool).counts()
    if args.json:
        document["spool_counts"] = counts
        print(json.dumps(document, indent=1))
    else:
        print(status.render(document, counts))
    return EXIT_OK


def cmd_reload(args, config):
    """SIGHUP after the config has been validated (by loading it in main())."""
    pid = _running(config.supervisor.pidfile)
    if not pid:
        print("droprd is not running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    before = _generation(config)
    os.kill(pid, signal.SIGHUP)
    if not _wait(lambda: _generation(config) > before, 10.0):
        print(f"droprd: pid {pid} did not confirm the reload; see its log", file=sys.stderr)
        return EXIT_ERROR
    result = (status.read(config.supervisor.status_file) or {}).get("reload") or {}
    if not result.get("ok"):
        print(f"droprd: reload refused: {result.get('error', 'unknown error')}", file=sys.stderr)
        return EXIT_ERROR
    print(f"droprd reloaded (pid {pid})")
    return EXIT_OK


def cmd_restart(args, config):
    """Ask the supervisor to restart one worker, or all of them."""
    pid = _running(config.supervisor.pidfile)
    if not pid:
        print("droprd is not running (start it with `droprd start`)", file=sys.stderr)
        return EXIT_NOT_RUNNING
    name = kinds.canonical_name(" ".join(args.name))
    document = status.read(config.supervisor.status_file) or {}
    known = [w["name"] for w in document.get("workers", [])]
    if name and known and name not in known:
        print(f"droprd: no worker named {name!r} (workers: {', '.join(known)})",
              file=sys.stderr)
        return EXIT_USAGE
    names = [name] if name else []
    control.send_request(config.supervisor.pidfile, pid, {"action": control.RESTART,
                                                          "names": names})
    print(f"droprd: restarting {name or 'every worker'}")
    return EXIT_OK


def _running(path):
    pid = daemon.running_pid(path)
    if pid == -1:
        raise DroprError(f"{path} is locked but holds no pid")
    return pid


def _generation(config):
    return (status.read(config.supervisor.status_file) or {}).get("generation", 0)


def _wait(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


_COMMANDS = {
    "start": cmd_start,
    "stop": cmd_stop,
    "status": cmd_status,
    "reload": cmd_reload,
    "restart": cmd_restart,
}


if __name__ == "__main__":
    sys.exit(main())
