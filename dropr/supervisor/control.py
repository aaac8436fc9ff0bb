"""How ``droprd`` commands talk to a running supervisor.

    stop            SIGTERM  graceful stop (SIGINT and SIGQUIT do the same)
    reload          SIGHUP   re-read the config file and apply it
    restart [NAME]  a request file, then SIGUSR1

A signal carries no argument, so ``restart`` first writes a small JSON file
(``{"action": "restart", "names": ["sender 2"]}``; no names = every worker)
into the requests folder beside the pidfile (``droprd.pid`` ->
``droprd.requests/``), by a rename so the supervisor never reads half a file,
and then sends SIGUSR1. On SIGUSR1 the supervisor takes every file in that
folder, so several requests arriving together are all honoured even though
their signals merge into one. Once it has acted on a request, it leaves an
answer beside it (``<name>.answer``: ``{"ok": true}``, or ``{"ok": false,
"error": ...}`` for a request it refused because it is stopping) and then
removes the request, which is how the command knows it was done. A request
that vanished without an answer was not acted on: the supervisor stopped
first.
"""

import contextlib
import json
import os
import signal
import time

from dropr.errors import DroprError

RESTART = "restart"


def requests_dir(pidfile):
    """The folder where ``droprd restart`` leaves its requests."""
    return pidfile.with_name(pidfile.stem + ".requests")


def send_request(pidfile, pid, payload, *, timeout=10.0):
    """Leave ``payload`` for the supervisor ``pid`` and wait until it was taken."""
    folder = requests_dir(pidfile)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}.json"
    tmp = folder / f".{name}"
    tmp.write_text(json.dumps(payload))
    os.rename(tmp, folder / name)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while (folder / name).exists():
        if time.monotonic() > deadline:
            raise DroprError(f"the supervisor (pid {pid}) did not take the request "
                             f"within {timeout:g}s; see its log")
        time.sleep(0.02)
    answer = _answer_path(folder / name)
    try:
        said = json.loads(answer.read_text())
    except (FileNotFoundError, ValueError):
        raise DroprError(f"the supervisor (pid {pid}) stopped before it acted on the "
                         "request") from None
    with contextlib.suppress(FileNotFoundError):
        answer.unlink()
    if not said.get("ok"):
        raise DroprError(f"the supervisor (pid {pid}) refused the request: "
                         f"{said.get('error') or 'no reason given'}")


def _answer_path(path):
    return path.with_suffix(".answer")


def take_requests(pidfile):
    """In the supervisor: the waiting requests as ``(path, payload)``, oldest
    first; call :func:`done` on each once acted on. Unreadable ones are removed."""
    folder = requests_dir(pidfile)
    try:
        names = sorted(n for n in os.listdir(folder)
                       if not n.startswith(".") and n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = folder / name
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (ValueError, UnicodeDecodeError):
            done(path, "not a JSON request")
            continue
        out.append((path, payload))
    return out


def done(path, error=""):
    """In the supervisor: answer one request (refused if ``error``) and remove it."""
    answer = _answer_path(path)
    tmp = answer.with_name(f".{answer.name}")
    with contextlib.suppress(OSError):  # the command then says it was not acted on
        tmp.write_text(json.dumps({"ok": not error, "error": error}))
        os.rename(tmp, answer)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
