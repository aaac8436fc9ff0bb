"""The senders' counts for droprd's metrics: ``dropr_sender_messages_total{peer,result}``.

Each sender process counts into its own file of prometheus_client's
multiprocess mode (``counter_<pid>.db``) in a folder of its supervisor's run,
``droprd.metrics/<supervisor pid>/`` beside the pidfile; the metrics worker
sums the folder at each scrape, the files of senders that have exited
included, so a killed sender's counts stay in the totals. The totals start
from 0 when droprd starts (a new folder).

Senders are recycled for ever, and each life leaves a file: the metrics
worker folds the files of exited senders into one, ``counter_archive.db``
(:func:`compact`), so the folder stays small. A fold is crash-safe: the files
being folded and the old archive are first moved into ``.fold/`` (out of the
sum), the new archive is renamed into the folder (the commit), then
``.fold/`` is removed; a fold found unfinished is completed or undone by
whether the new archive is in place.
"""

import contextlib
import glob
import os
import shutil

import psutil

from dropr.errors import ConfigError
from dropr.results import DUPLICATE, STORED

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
NAME = "dropr_sender_messages"
#: The sender's results, as ``dropr_sender_messages_total{result}`` names them.
RESULTS = (STORED, DUPLICATE, "deferred", "dead")
DOC = "Messages settled by the senders, by peer and result."
ARCHIVE = "counter_archive.db"
FOLD = ".fold"
#: Exited senders' files it takes to start a fold.
FOLD_AT = 16


def counts_folder(config, supervisor_pid):
    """Where the senders of the supervisor ``supervisor_pid`` keep their counts."""
    pidfile = config.supervisor.pidfile
    return pidfile.with_name(pidfile.stem + ".metrics") / str(supervisor_pid)


def remove_stale_folders(config, supervisor_pid):
    """Remove the count folders of supervisors that no longer run; returns how many."""
    parent, removed = counts_folder(config, supervisor_pid).parent, 0
    with contextlib.suppress(FileNotFoundError), os.scandir(parent) as it:
        for entry in it:
            if entry.name.isdigit() and int(entry.name) != supervisor_pid and \
                    not psutil.pid_exists(int(entry.name)):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


class SenderCounts:
    """``dropr_sender_messages_total{peer,result}`` as one sender process counts
    it, in prometheus_client's multiprocess files under ``folder``. Made in
    the sender process, before anything there imports prometheus_client."""

    def __init__(self, folder):
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[ENV_VAR] = str(folder)
        import prometheus_client
        import prometheus_client.values

        if not prometheus_client.values.ValueClass._multiprocess:
            raise ConfigError(f"prometheus_client was imported before {ENV_VAR} was set: "
                              "the senders' counts would not add up")
        self._counter = prometheus_client.Counter(NAME, DOC, ("peer", "result"), registry=None)

    def add(self, peer, **results):
        """Count ``results`` (result -> how many) for ``peer``."""
        for result, n in results.items():
            if n:
                self._counter.labels(peer, result).inc(n)


def totals(folder):
    """{(peer, result): count} summed over the files in ``folder``."""
    return _sum(glob.glob(os.path.join(folder, "*.db")))


def _sum(files):
    from prometheus_client.multiprocess import MultiProcessCollector

    out = {}
    for family in MultiProcessCollector.merge(files, accumulate=False):
        for sample in family.samples:
            if sample.name == NAME + "_total":
                key = (sample.labels.get("peer", ""), sample.labels.get("result", ""))
                out[key] = out.get(key, 0.0) + sample.value
    return out


def compact(folder, *, at=FOLD_AT, alive=psutil.pid_exists):
    """Fold the files of exited senders into the archive once there are ``at``
    of them (and finish a fold a crash interrupted). Returns how many it
    folded. Runs in the metrics worker, which alone reads the folder: the
    caller keeps scrapes out meanwhile."""
    fold = os.path.join(folder, FOLD)
    _recover(folder, fold)
    dead = [f for f in glob.glob(os.path.join(folder, "counter_*.db"))
            if _pid(f) is not None and not alive(_pid(f))]
    if len(dead) < at:
        return 0
    os.mkdir(fold)
    archive = os.path.join(folder, ARCHIVE)
    # The archive first: while it is in the folder, an unfinished fold counts
    # as committed (see _recover).
    for path in [*([archive] if os.path.exists(archive) else []), *dead]:
        os.rename(path, os.path.join(fold, os.path.basename(path)))
    new = os.path.join(fold, "archive.new")
    _write(new, _sum(glob.glob(os.path.join(fold, "*.db"))))
    os.rename(new, archive)  # the commit
    shutil.rmtree(fold)
    return len(dead)


def _recover(folder, fold):
    if not os.path.isdir(fold):
        return
    if not os.path.exists(os.path.join(folder, ARCHIVE)):
        # Not committed: the old archive and the files go back as they were.
        for path in glob.glob(os.path.join(fold, "*.db")):
            os.rename(path, os.path.join(folder, os.path.basename(path)))
    shutil.rmtree(fold)


def _pid(path):
    pid = os.path.basename(path)[len("counter_"):-len(".db")]
    return int(pid) if pid.isdigit() else None


def _write(path, counts):
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    archive = MmapedDict(path)
    try:
        for (peer, result), value in sorted(counts.items()):
            key = mmap_key(NAME, NAME + "_total", ("peer", "result"), (peer, result), DOC)
            archive.write_value(key, value, 0.0)
    finally:
        archive.close()
