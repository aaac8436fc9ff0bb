"""``dropr spool``: list, count, hold, release and purge the client spool."""

import os
import time

from dropr import ids
from dropr.admin import emit
from dropr.errors import ValidationError
from dropr.spool import STATES

#: What an operator can list (tmp/ holds half-written files, not messages).
LISTED = tuple(s for s in STATES if s != "tmp")
#: Where hold takes messages from; release puts them back in queue/.
HOLDABLE = ("queue", "deferred")
#: What purge may remove: not active/ (on the wire now) nor tmp/.
PURGEABLE = ("queue", "deferred", "hold", "sent", "dead")


def check_state(state, allowed=LISTED):
    if state not in allowed:
        raise ValidationError(f"unknown state {state!r}: expected one of {', '.join(allowed)}")
    return state


def entries(spool, state):
    """(state, name, path) of every message in ``state`` (all claim folders for active)."""
    dirs = spool.active_dirs() if state == "active" else [spool.dirs[state]]
    for d in dirs:
        for name in spool.names(None, directory=d):
            yield state, name, d / str(name)


def row(spool, state, name, path):
    """The JSON row of one message (null where not known)."""
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        size = None
    queued_ms = ids.timestamp_ms(name.id)
    return {"id": name.id, "state": state, "peer": name.peer, "channel": name.channel,
            "priority": name.priority, "size": size, "attempts": name.attempts,
            "queued_at": queued_ms / 1000 if queued_ms is not None else None,
            "next_attempt": name.due_ms / 1000 if name.due_ms else None,
            "expires": name.expires_ms / 1000 if name.expires_ms else None,
            "reason": (spool.reason(name).strip() or None) if state == "dead" else None}


def ls(spool, state, *, json_out):
    states = [check_state(state)] if state else list(LISTED)
    for st in states:
        for st_, name, path in entries(spool, st):
            if json_out:
                emit(row(spool, st_, name, path))
            else:
                print(f"{st_}\t{name.priority}\t{name.id}\t{name.peer}\t{name.channel}\t"
                      f"{name.attempts}")


def count(spool, *, json_out):
    counts = spool.counts()
    if json_out:
        emit(counts)
    else:
        for state, n in counts.items():
            print(f"{state:<9} {n}")


def select(spool, states, *, ids_=(), peer=None, channel=None, all_=False, older_than=None,
           now=None):
    """(state, name) of the messages in ``states`` that the selectors pick."""
    wanted = set(ids_)
    limit_ms = None
    if older_than is not None:
        limit_ms = ((now if now is not None else time.time()) - older_than) * 1000
    for state in states:
        for st, name, _ in entries(spool, state):
            if wanted and name.id not in wanted:
                continue
            if peer is not None and name.peer != peer:
                continue
            if channel is not None and name.channel != channel:
                continue
            if limit_ms is not None and (ids.timestamp_ms(name.id) or 0) > limit_ms:
                continue
            if wanted or peer or channel or all_ or older_than is not None:
                yield st, name


def check_selectors(args, what):
    chosen = bool(args.id) + (args.peer is not None) + (args.channel is not None) + args.all
    if not chosen:
        raise ValidationError(f"say which messages to {what}: IDs, --peer P, --channel C or --all")
    if args.id and chosen > 1:
        raise ValidationError("give IDs or --peer/--channel/--all, not both")


def hold(spool, args):
    """Move the selected messages of queue/ and deferred/ into hold/; prints how many."""
    check_selectors(args, "hold")
    moved = sum(spool.hold(st, name) for st, name in
                list(select(spool, HOLDABLE, ids_=args.id, peer=args.peer,
                            channel=args.channel, all_=args.all)))
    print(f"held {moved}")


def release(spool, args):
    """Move the selected held messages back into queue/; prints how many."""
    check_selectors(args, "release")
    moved = sum(spool.release(name) for _, name in
                list(select(spool, ("hold",), ids_=args.id, peer=args.peer,
                            channel=args.channel, all_=args.all)))
    print(f"released {moved}")
    return moved


def purge(spool, args):
    """Remove the selected messages of one state for good (or count them, with
    --dry-run); prints how many. Exit 2 without --yes or --dry-run."""
    check_state(args.state, PURGEABLE)
    if args.yes == args.dry_run:
        raise ValidationError("purge removes messages for good: give --yes to do it, or "
                              "--dry-run to count what it would remove")
    chosen = list(select(spool, (args.state,), peer=args.peer, channel=args.channel,
                         all_=True, older_than=args.older_than))
    if args.dry_run:
        print(f"would purge {len(chosen)}")
        return
    print(f"purged {sum(spool.purge(st, name) for st, name in chosen)}")
