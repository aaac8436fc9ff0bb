"""Crash points: named steps where a process can be made to die on purpose.

Every rename, link, fsync and unlink on a message's way from ``put()`` to the
server store calls :func:`crash_point` with the name of the step it has just
done. Normally that is one comparison against ``None``. With the environment
variable ``DROPR_CRASH_AT`` set to a name, the process that reaches that step
sends itself SIGKILL there: no ``finally``, no ``atexit``, no flush, exactly
as if the power of that one process had gone. The tests use it to prove that
every step leaves each message in exactly one directory, and that a restart
delivers it exactly once (docs/reliability.md has the table).

``DROPR_CRASH_AFTER=N`` crashes at the N-th time this process reaches the
step (default 1), for a crash in the middle of a batch.
``DROPR_CRASH_MARK=PATH`` crashes only if ``PATH`` does not exist yet, and
creates it (with the point and the pid) right before dying: of all the
processes that inherit the variables (gunicorn workers, droprd workers and
their replacements) exactly one crashes, once, and the test can wait for the
file.

The variables are read once, at import: they are configuration of the
process, fixed for its life.
"""

import itertools
import os
import signal

#: Every crash point, in the order a message meets them. Each has a test in
#: tests/test_crash_points.py and a row in docs/reliability.md.
CRASH_POINTS = (
    # producer: Spool.put
    "put.after_tmp_write",
    "put.after_fsync",
    "put.after_rename",
    "put.after_dir_fsync",
    # producer: Spool.put_many (Client.put_many, `dropr put FILE FILE...`)
    "put_many.after_tmp_write",
    "put_many.after_flush",
    "put_many.after_rename",
    "put_many.after_dir_fsync",
    # sender: Spool.open_active, claim, to_sent, to_deferred; Peers.mark_down; Sender
    "send.after_new_active_dir",
    "send.after_claim",
    "send.after_upload",
    "send.after_move_sent",
    "send.after_mark_down_write",
    "send.after_mark_down",
    "send.after_defer",
    # giving up on a message: Spool.to_dead (sender and retry scanner)
    "dead.after_reason_write",
    "dead.after_reason_rename",
    "dead.after_move",
    # receiver: Store.stage, publish, sync; the two resources
    "store.after_tmp_write",
    "store.after_tmp_fsync",
    "store.after_link",
    "store.after_publish",
    "store.after_queue_sync",
    "batch.before_answer",
    "messages.before_answer",
    # the operator: Spool.hold and release (`dropr spool hold|release`)
    "hold.after_move",
    "release.after_move",
    # retry scanner (and `dropr spool requeue`): Spool.requeue
    "retry.after_requeue",
    # the operator: Store.requeue (`dropr store requeue`)
    "store.after_requeue",
    # reaper, and a sender starting or stopping: Spool._release_dir
    "active.after_return_to_queue",
    "active.before_remove_dir",
    # legacy-spool worker: Takeover (a PHP client spool taken over)
    "legacy.after_copy",
    "legacy.after_queue",
    "legacy.after_remove",
    # reaper: Spool.remove_older, Store.expire_done and remove_stale_tmp
    "reaper.after_unlink",
    "reaper.after_store_unlink",
)

CRASH_AT = os.environ.get("DROPR_CRASH_AT") or None
CRASH_AFTER = int(os.environ.get("DROPR_CRASH_AFTER") or 1)
CRASH_MARK = os.environ.get("DROPR_CRASH_MARK") or None

if CRASH_AT is not None and CRASH_AT not in CRASH_POINTS:
    raise ValueError(f"DROPR_CRASH_AT={CRASH_AT!r} is not a crash point; "
                     f"known: {', '.join(CRASH_POINTS)}")

# The one piece of mutable module state, and only when a crash is asked for:
# a count of hits that lives exactly as long as the process it is about to kill.
_hits = itertools.count(1)


def crash_point(name):
    """Die by SIGKILL here if ``DROPR_CRASH_AT`` names this step (see the module doc)."""
    if CRASH_AT is None or CRASH_AT != name:
        return
    if next(_hits) < CRASH_AFTER:
        return
    if CRASH_MARK is not None and not _claim_mark():
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _claim_mark():
    """Create the mark file; False if another process (or an earlier life of
    this one) crashed already."""
    try:
        fd = os.open(CRASH_MARK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, f"{CRASH_AT} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return True
