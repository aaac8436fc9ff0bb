"""The folder where the receiver's workers keep their Prometheus counts, as
the gunicorn master manages it: made fresh for each run before the master
forks (:func:`open_folder`), the files of each worker that exits folded into
one archive file per kind (:func:`worker_exited`, :func:`fold`), removed when
the master exits. Scrapes (:mod:`dropr.receiver.metrics`) read it under
:func:`folder_lock`. Runs in the gunicorn master, but for the lock.
"""

import contextlib
import fcntl
import os
import shutil
import tempfile
import time

import psutil

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
#: Each run's folder is ``<tmp>/dropr-receiver-metrics-<master pid>-<random>``.
FOLDER_PREFIX = "dropr-receiver-metrics-"


def open_folder():
    """In the gunicorn master, before it forks: make a fresh folder for this
    run's counts and name it in ``PROMETHEUS_MULTIPROC_DIR``; returns it.
    Folders left by masters that were killed are removed first."""
    remove_stale_folders()
    path = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
    os.environ[ENV_VAR] = path
    return path


def close_folder():
    """In the gunicorn master as it exits: remove this run's folder."""
    path = os.environ.get(ENV_VAR, "")
    if os.path.basename(path).startswith(f"{FOLDER_PREFIX}{os.getpid()}-"):
        del os.environ[ENV_VAR]
        shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid, live=()):
    """In the gunicorn master when worker ``pid`` has exited (``live``: the
    pids of the workers still running): drop its live gauges and fold the
    counts of every worker that is gone into the archive (:func:`fold`), so
    totals never go down."""
    folder = os.environ.get(ENV_VAR)
    if folder:
        from prometheus_client import multiprocess  # here: the master forks before it counts

        multiprocess.mark_process_dead(pid)
        fold(folder, live)


#: The kinds of metric files the receiver's workers write (counters and histograms).
KINDS = ("counter", "histogram")
#: The lock file of a metrics folder: a scrape reads under a shared lock, a fold
#: writes under an exclusive one.
LOCK_NAME = ".lock"
#: Seconds a fold waits for the scrapes under way; then it is left to the next.
FOLD_WAIT = 1.0


def archive_path(folder, kind):
    """The file that holds the counts of ``kind`` of the workers that exited.
    prometheus_client reads it with the workers' own (by its ``kind_`` prefix;
    the part after it is a pid only for gauges)."""
    return os.path.join(folder, f"{kind}_archive.db")


@contextlib.contextmanager
def folder_lock(folder, how, wait=None):
    """Hold the metrics folder's lock (``fcntl.LOCK_SH`` or ``LOCK_EX``);
    with ``wait`` (seconds), yield False instead if it is not free by then."""
    fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if wait is None:
            fcntl.flock(fd, how)
            yield True
            return
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, how | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)
        yield True
    finally:
        os.close(fd)


def fold(folder, live=()):
    """Add the counts of every worker that is gone (not in ``live``) to the
    folder's archive files and remove its own files. Under the folder's
    exclusive lock, which every scrape takes shared: no scrape sees a count
    twice or not at all. A fold that cannot have the lock within FOLD_WAIT
    (a scrape stuck in a hung worker) is left to the next one: the master
    never waits long. (A master that dies halfway ends the run, whose folder
    the next one replaces.)"""
    from prometheus_client.mmap_dict import MmapedDict

    live = {str(pid) for pid in live}
    with folder_lock(folder, fcntl.LOCK_EX, wait=FOLD_WAIT) as locked:
        if not locked:
            return
        for kind in KINDS:
            gone = [e.path for e in os.scandir(folder) if e.name.startswith(kind + "_")
                    and e.name.endswith(".db") and e.name[len(kind) + 1:-3].isdigit()
                    and e.name[len(kind) + 1:-3] not in live]
            if not gone:
                continue
            archive = MmapedDict(archive_path(folder, kind))
            try:
                for path in gone:
                    for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                        archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
            finally:
                archive.close()
            for path in gone:
                os.unlink(path)


def remove_stale_folders(tmp=None):
    """Remove the folders of masters that no longer run; returns how many."""
    tmp = tmp or tempfile.gettempdir()
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(tmp) as it:
        for entry in it:
            pid = _folder_pid(entry.name)
            if pid is not None and not psutil.pid_exists(pid) and entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _folder_pid(name):
    if not name.startswith(FOLDER_PREFIX):
        return None
    pid = name[len(FOLDER_PREFIX):].partition("-")[0]
    return int(pid) if pid.isdigit() else None
