"""``dropr``: the command line for producers, operators and foreground roles.

    dropr put --peer NAME [--channel C] [--priority P] [--ttl S] [--timeout S] [FILE...|-]
    dropr call --peer NAME --channel C [--timeout S] [FILE|-]
    dropr send [--once]
    dropr consume --channel C [--consumer NAME] [--once] [--batch N] [--max-attempts N]
                  [--timeout S] [--poll S] -- COMMAND ARGS...
    dropr receiver
    dropr bench [--fs ext4|tmpfs|here] [--runs N] [--quick] [--only NAME,...] [--fsync on|off|both]
    dropr spool ls [STATE] | count | dead | requeue ID|--all
    dropr store channels | ls CHANNEL | count CHANNEL | cat CHANNEL ID | ack CHANNEL ID
        (cat and ack take --client NAME where several clients sent that id)

``--config PATH`` may come before or after the command (``dropr store
--config F count C`` or ``dropr --config F store count C``).

Exit codes: 0 ok, 1 operational error, 2 usage error (bad arguments or names).
"""

import argparse
import json
import logging
import shutil
import sys

from dropr import config as config_mod
from dropr.errors import DroprError, NotFound, ValidationError
from dropr.options import add_everywhere

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _parser():
    p = argparse.ArgumentParser(prog="dropr", description="dropr store-and-forward queue")
    sub = p.add_subparsers(dest="command", required=True)

    put = sub.add_parser("put", help="spool messages; prints each id")
    put.add_argument("--peer", required=True)
    put.add_argument("--channel", default="common")
    put.add_argument("--priority", type=int, default=5)
    put.add_argument("--ttl", type=float, help="expire after this many seconds")
    put.add_argument("--timeout", type=float,
                     help="seconds to wait for room in a spool at its limits "
                          "(default: [client] put_timeout)")
    put.add_argument("file", nargs="*", default=["-"],
                     help="files to send, one message each, made durable together; "
                          "- (the default) for stdin")

    call = sub.add_parser("call", help="ask a peer's responder; writes its answer to stdout")
    call.add_argument("--peer", required=True)
    call.add_argument("--channel", required=True)
    call.add_argument("--timeout", type=float, help="seconds for the whole call "
                      "(default: the peer's timeout)")
    call.add_argument("file", nargs="?", default="-", help="the question, or - for stdin")

    send = sub.add_parser("send", help="run one sender in the foreground")
    send.add_argument("--once", action="store_true", help="deliver what is deliverable, then exit")

    sub.add_parser("receiver", help="serve the receiver with gunicorn in the foreground")
    from dropr.bench.cli import add_arguments as bench_arguments

    bench_arguments(sub.add_parser("bench", help="measure dropr on a fresh filesystem; "
                                   "print one table (needs no config)"))
    _consume_parser(sub)

    _spool_parser(sub)
    _store_parser(sub)
    trace = sub.add_parser("trace", help="where a message is now, on this host and its peer")
    trace.add_argument("id")
    trace.add_argument("--channel", help="its channel, when this host no longer has the message")
    trace.add_argument("--peer", help="its peer, when this host no longer has the message")
    trace.add_argument("--json", action="store_true", help="one JSON object")
    add_everywhere(p, "--config", help="config file (default: $DROPR_CONFIG, then "
                   "conf/dropr.toml); before or after the subcommand")
    return p


def _selectors(p, *, ids=True):
    if ids:
        p.add_argument("id", nargs="*", help="message ids")
    p.add_argument("--peer")
    p.add_argument("--channel")
    p.add_argument("--all", action="store_true")


def _spool_parser(sub):
    spool = sub.add_parser("spool", help="look at and operate on the client spool")
    ssub = spool.add_subparsers(dest="action", required=True)
    ls = ssub.add_parser("ls", help="list messages (all states, or one)")
    ls.add_argument("state", nargs="?")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ssub.add_parser("count", help="messages per state directory").add_argument(
        "--json", action="store_true", help="one JSON object")
    ssub.add_parser("dead", help="list dead messages with their reasons")
    rq = ssub.add_parser("requeue", help="send dead messages again (their expiry dropped)")
    rq.add_argument("id", nargs="?")
    rq.add_argument("--all", action="store_true")
    _selectors(ssub.add_parser("hold", help="keep messages from being sent (queue/, deferred/ "
                                            "into hold/)"))
    _selectors(ssub.add_parser("release", help="send held messages again (hold/ into queue/)"))
    purge = ssub.add_parser("purge", help="remove messages of one state for good")
    purge.add_argument("state")
    purge.add_argument("--peer")
    purge.add_argument("--channel")
    _purge_options(purge)


def _purge_options(p):
    p.add_argument("--older-than", type=float, metavar="SECONDS",
                   help="only messages put (stored) more than SECONDS ago")
    p.add_argument("--yes", action="store_true", help="remove them")
    p.add_argument("--dry-run", action="store_true", help="only count them")


def _store_parser(sub):
    store = sub.add_parser("store", help="look at and operate on the server store")
    tsub = store.add_subparsers(dest="action", required=True)
    tsub.add_parser("channels").add_argument("--json", action="store_true",
                                             help="one JSON object per channel")
    for action in ("ls", "count", "dead"):
        a = tsub.add_parser(action)
        a.add_argument("channel")
        if action != "count":
            a.add_argument("--json", action="store_true", help="one JSON object per line")
    for action in ("cat", "ack"):
        a = tsub.add_parser(action)
        a.add_argument("channel")
        a.add_argument("id")
        a.add_argument("--client", help="the client that sent it (where several sent that id)")
    for action in ("pause", "resume"):
        tsub.add_parser(action, help=f"{action} consumers of a channel").add_argument("channel")
    rq = tsub.add_parser("requeue", help="put dead messages back in the queue (attempts reset)")
    rq.add_argument("channel")
    rq.add_argument("id", nargs="*")
    rq.add_argument("--all", action="store_true")
    purge = tsub.add_parser("purge", help="remove messages of a channel for good")
    purge.add_argument("channel")
    which = purge.add_mutually_exclusive_group(required=True)
    for state in ("queue", "done", "dead"):
        which.add_argument(f"--{state}", dest="state", action="store_const", const=state)
    _purge_options(purge)


def _consume_parser(sub):
    c = sub.add_parser("consume", help="run a command once per message of a channel",
                       usage="dropr consume --channel C [options] -- COMMAND ARGS...")
    c.add_argument("--channel", required=True)
    c.add_argument("--consumer", help="this consumer's name (default: consume-<host>-<channel>)")
    c.add_argument("--once", action="store_true", help="process what is due, then exit")
    c.add_argument("--batch", type=int, default=1, help="messages claimed at a time (default 1)")
    c.add_argument("--max-attempts", type=int, default=5,
                   help="failed runs before a message goes to dead/ (default 5)")
    c.add_argument("--timeout", type=float, help="seconds a command may run (default: no limit)")
    c.add_argument("--poll", type=float, default=0.5,
                   help="seconds between looks at an empty channel (default 0.5)")
    c.add_argument("argv", nargs="*", metavar="COMMAND",
                   help="the command and its arguments, after --")


def main(argv=None):
    """Entry point of the ``dropr`` command."""
    args = _parser().parse_args(argv)
    if args.command == "bench":  # makes its own configs, so it needs none
        from dropr.bench.cli import main as bench_main

        raw = sys.argv[1:] if argv is None else list(argv)
        args.argv = raw[raw.index("bench") + 1:]
        return bench_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    config = None
    try:
        config = config_mod.load(args.config)
        return _COMMANDS[args.command](args, config) or EXIT_OK
    except ValidationError as e:
        print(f"dropr: {e}", file=sys.stderr)
        return EXIT_USAGE
    except PermissionError as e:
        print(f"dropr: {_explain(e, args.command, config)}", file=sys.stderr)
        return EXIT_ERROR
    except (DroprError, OSError) as e:
        print(f"dropr: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _explain(error, command, config):
    """A PermissionError said as what this user lacks where (README: Users and permissions)."""
    from dropr.spool import perms

    if config is None:
        return error
    if command in ("consume", "store", "receiver"):
        return perms.explain(error, config.receiver.group, "[receiver] group")
    return perms.explain(error, config.client.group, "[client] group")


def cmd_put(args, config):
    from dropr.client import Client

    if args.file.count("-") > 1:
        raise ValidationError("stdin (-) can be read only once")
    bodies = [sys.stdin.buffer if f == "-" else f for f in args.file]
    client = Client(config)
    if len(bodies) == 1:
        ids = [client.put(bodies[0], args.peer, args.channel, args.priority, ttl=args.ttl,
                          timeout=args.timeout)]
    else:
        ids = client.put_many(bodies, peer=args.peer, channel=args.channel,
                              priority=args.priority, ttl=args.ttl, timeout=args.timeout)
    print("\n".join(ids))


def cmd_call(args, config):
    from dropr.client import Client

    data = sys.stdin.buffer.read() if args.file == "-" else args.file
    answer = Client(config).call(data, peer=args.peer, channel=args.channel, timeout=args.timeout)
    sys.stdout.buffer.write(answer)
    sys.stdout.buffer.flush()


def cmd_send(args, config):
    from dropr.sender.sender import main as send_main

    return send_main(config, once=args.once)


def cmd_consume(args, config):
    from dropr.consume import main as consume_main

    return consume_main(config, channel=args.channel, command=args.argv,
                        consumer=args.consumer, once=args.once, batch=args.batch,
                        max_attempts=args.max_attempts, timeout=args.timeout, poll=args.poll)


def cmd_receiver(args, config):
    from dropr.receiver.serve import main as serve_main

    return serve_main(config)


def _spool(config):
    from dropr.spool import Spool

    return Spool(config.client.spool, fsync=config.client.fsync,
                 group=config.client.group).create()


def cmd_spool(args, config):
    from dropr.admin import spool as admin

    spool = _spool(config)
    if args.action == "count":
        admin.count(spool, json_out=args.json)
    elif args.action == "ls":
        admin.ls(spool, args.state, json_out=args.json)
    elif args.action == "dead":
        for name in spool.names("dead"):
            print(f"{name.id}\t{name.peer}\t{name.channel}\t{spool.reason(name).strip()}")
    elif args.action == "requeue":
        return _spool_requeue(spool, args, config)
    elif args.action == "hold":
        admin.hold(spool, args)
    elif args.action == "release":
        if admin.release(spool, args):
            _wake(spool, config)
    elif args.action == "purge":
        admin.purge(spool, args)


def _wake(spool, config):
    from dropr.ipc import Notices

    notices = Notices.open(spool.root)
    if notices is not None and config.client.notify_max:
        notices.wake(config.client.notify_max)


def _spool_requeue(spool, args, config):
    """Dead messages back to queue/ as new: no attempts, no due time, and no
    expiry (the operator wants them sent, however late); then wake the senders."""
    if bool(args.id) == bool(args.all):
        raise ValidationError("give one message ID or --all")
    dead = [n for n in spool.names("dead") if args.all or n.id == args.id]
    if not dead:
        raise NotFound("no dead messages" if args.all else f"no dead message {args.id}")
    for name in dead:
        spool.requeue("dead", name, attempts=0, due_ms=0, expires_ms=0)
        print(name.id)
    _wake(spool, config)


def cmd_store(args, config):
    from dropr.admin import store as admin
    from dropr.store import open_store

    store = open_store(config)  # [store] backend: files or jetstream
    try:
        admin.check_backend(store, args.action, json_out=getattr(args, "json", False))
        if args.action == "channels":
            admin.channels(store, json_out=args.json)
        elif args.action == "count":
            print(store.count(args.channel))
        elif args.action == "ls":
            admin.ls(store, args.channel, json_out=args.json)
        elif args.action == "dead":
            admin.dead(store, args.channel, json_out=args.json)
        elif args.action in ("pause", "resume"):
            admin.pause(store, args.channel, args.action == "pause")
        elif args.action == "requeue":
            admin.requeue(store, args)
        elif args.action == "purge":
            admin.purge(store, args)
        elif args.action == "cat":
            _store_cat(store, args)
        elif args.action == "ack":
            message = store.get(args.channel, args.id, client=args.client)
            store.ack(message)
            print(json.dumps({"id": message.id, "status": "done"}))
    finally:
        store.close()


def _store_cat(store, args):
    message = store.get(args.channel, args.id, client=args.client)
    if message.legacy_id is not None:  # the body alone on stdout; this on stderr
        print(f"dropr: {message.id}: sent by a PHP dropr client as {message.legacy_id}",
              file=sys.stderr)
    with message.open() as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
    sys.stdout.buffer.flush()


def cmd_trace(args, config):
    from dropr.admin.trace import trace

    return trace(config, args.id, channel=args.channel, peer=args.peer, json_out=args.json)


_COMMANDS = {
    "put": cmd_put,
    "call": cmd_call,
    "send": cmd_send,
    "consume": cmd_consume,
    "receiver": cmd_receiver,
    "spool": cmd_spool,
    "store": cmd_store,
    "trace": cmd_trace,
}


if __name__ == "__main__":
    sys.exit(main())
