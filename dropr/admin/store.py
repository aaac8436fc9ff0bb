"""``dropr store``: channels, listings, pause and resume, dead letters,
requeue and purge, on either store backend."""

from dropr.admin import emit
from dropr.errors import DroprError, NotFound, ValidationError

#: The store methods each verb needs beyond listing and counting.
NEEDS = {"channels": "stats", "dead": "dead_messages", "pause": "pause", "resume": "resume",
         "requeue": "requeue", "purge": "purge"}


def check_backend(store, verb, *, json_out=True):
    """``DroprError`` naming the backend when it cannot do ``verb`` yet."""
    method = NEEDS.get(verb)
    if method and (verb != "channels" or json_out) and not hasattr(store, method):
        raise DroprError(f"dropr store {verb}: not available with the "
                         f"{type(store).__name__} backend yet (files only)")


def channels(store, *, json_out):
    for channel in store.channels():
        if json_out:
            emit(store.stats(channel))
        else:
            print(channel)


def ls(store, channel, *, json_out):
    for m in store.messages(channel):
        if json_out:
            emit({"id": m.id, "channel": m.channel, "priority": m.priority, "size": m.size,
                  "client": m.client, "received_at": m.received_at, "legacy_id": m.legacy_id})
        else:
            legacy = f"\t{m.legacy_id}" if m.legacy_id is not None else ""
            print(f"{m.priority}\t{m.id}\t{m.size}\t{m.client}\t{m.received_at:.3f}{legacy}")


def dead(store, channel, *, json_out):
    for m, reason in store.dead_messages(channel):
        if json_out:
            emit({"id": m.id, "channel": m.channel, "priority": m.priority, "size": m.size,
                  "client": m.client, "received_at": m.received_at, "reason": reason or None})
        else:
            print(f"{m.id}\t{m.priority}\t{m.client}\t{reason}")


def requeue(store, args):
    """Dead messages of a channel back in its queue (attempts reset); prints how many."""
    if bool(args.id) == bool(args.all):
        raise ValidationError("give message IDs or --all")
    wanted = set(args.id)
    chosen = [m for m, _ in store.dead_messages(args.channel) if args.all or m.id in wanted]
    missing = wanted - {m.id for m in chosen}
    if missing:
        raise NotFound(f"no dead message {', '.join(sorted(missing))} in channel {args.channel}")
    for m in chosen:
        store.requeue(m)
    print(f"requeued {len(chosen)}")


def purge(store, args):
    """Remove the messages of a channel in one state; prints how many. Exit 2
    without --yes or --dry-run."""
    if args.yes == args.dry_run:
        raise ValidationError("purge removes messages for good: give --yes to do it, or "
                              "--dry-run to count what it would remove")
    n = store.purge(args.channel, args.state, older_than=args.older_than, dry_run=args.dry_run)
    print(f"{'would purge' if args.dry_run else 'purged'} {n}")


def pause(store, channel, paused):
    (store.pause if paused else store.resume)(channel)
    print(f"{'paused' if paused else 'resumed'} {channel}")
