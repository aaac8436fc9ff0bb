"""The ``process`` marker, enforced: a test that starts a process (a
subprocess, a fork, a spawn; gunicorn, droprd, a worker, nats-server, a
``dropr`` command, ``ps``) must carry ``process``, so that ``pytest -m "not
process"`` (``make test-fast``) runs only what starts none.

Every way Python starts a process is watched for the whole session (the
process goes on starting; the guard only notes it); while a test without the
marker sets up, runs or tears down, what it starts fails it, naming the
program. tests/conftest.py calls :func:`check` around each phase."""

import _posixsubprocess
import contextlib
import functools
import os
import subprocess

import pytest

MARK = "process"

_started = None  # while a test without the marker runs: what it started


def _note(what):
    if _started is not None:
        _started.append(what)


def _argv(args):
    if isinstance(args, (str, bytes, os.PathLike)):
        return os.fsdecode(args)
    return " ".join(os.fsdecode(a) for a in args)


def _watch(owner, name, describe):
    original = getattr(owner, name, None)
    if original is None or getattr(original, "_watched", False):
        return

    @functools.wraps(original)
    def watched(*args, **kwargs):
        _note(describe(*args, **kwargs))
        return original(*args, **kwargs)
    watched._watched = True
    setattr(owner, name, watched)


def install():
    """Watch every way a process starts (once per session)."""
    _watch(subprocess.Popen, "_execute_child",
           lambda self, args, *rest, **kw: f"subprocess {_argv(args)!r}")
    _watch(os, "fork", lambda: "os.fork()")
    _watch(os, "forkpty", lambda: "os.forkpty()")
    _watch(os, "posix_spawn", lambda path, argv, *a, **kw: f"os.posix_spawn {_argv(argv)!r}")
    _watch(os, "posix_spawnp", lambda path, argv, *a, **kw: f"os.posix_spawnp {_argv(argv)!r}")
    # multiprocessing's spawn and forkserver start methods (subprocess is watched above)
    _watch(_posixsubprocess, "fork_exec", lambda args, *a, **kw: f"fork_exec {_argv(args)!r}")


@contextlib.contextmanager
def check(item, phase):
    """Around one phase of ``item``: fail it if it starts a process without
    the marker."""
    global _started
    if item.get_closest_marker(MARK) is not None:
        yield
        return
    previous, _started = _started, []
    started = _started
    try:
        yield
    finally:
        _started = previous
    if started:
        pytest.fail(f"{item.nodeid} starts a process in its {phase} ({started[0]}"
                    f"{f' and {len(started) - 1} more' if len(started) > 1 else ''}) but is not "
                    f"marked `{MARK}`: add @pytest.mark.{MARK} (or to the module's pytestmark)",
                    pytrace=False)
