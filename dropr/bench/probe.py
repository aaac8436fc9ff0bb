"""The bench's child processes: each does one measured thing and prints one
JSON line on stdout. Run by :mod:`dropr.bench.procs` as

    python -m dropr.bench.probe put CONFIG COUNT SIZE AT
    python -m dropr.bench.probe putmany CONFIG COUNT SIZE BATCH AT
    python -m dropr.bench.probe putfile CONFIG PATH
    python -m dropr.bench.probe send CONFIG
    python -m dropr.bench.probe batch CONFIG
    python -m dropr.bench.probe post URL COUNT SIZE AT [CONNECTIONS]
    python -m dropr.bench.probe call CONFIG CHANNEL COUNT SIZE AT
    python -m dropr.bench.probe publish SERVERS COUNT SIZE

``AT`` is ``go``: the probe prints ``ready`` once its imports and set-up
are done and starts its loop when it reads a line on stdin, so that several
probes start together (:func:`dropr.bench.procs.probes_started` releases
them at once); ``0`` starts at once. Times are wall-clock seconds;
RSS figures are MiB: ``rss_base`` before the work, ``rss_peak`` the process's
peak (``ru_maxrss``)."""

import logging
import json
import os
import resource
import selectors
import socket
import sys
import time
from urllib.parse import urlsplit

MiB = 1 << 20
#: The start argument of probes that wait to be released together.
GO = "go"


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def _peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _wait_until(at):
    """Block until released (``at`` is ``go``), or return at once (``0``)."""
    if at == GO:
        print("ready", flush=True)
        sys.stdin.readline()
    elif at != "0":
        raise SystemExit(f"the start argument is 'go' or '0', not {at!r}")


def put(config, count, size, at):
    """Put ``count`` messages of ``size`` bytes, one after another."""
    from dropr.client import Client

    client = Client(config)
    body = os.urandom(int(size))
    base = _rss()
    _wait_until(at)
    started = time.time()
    for _ in range(int(count)):
        client.put(body, "local")
    return {"started": started, "ended": time.time(), "rss_base": base, "rss_peak": _peak()}


def putmany(config, count, size, batch, at):
    """Put ``count`` messages of ``size`` bytes with put_many, ``batch`` at a time."""
    from dropr.client import Client

    client = Client(config)
    body = os.urandom(int(size))
    count, batch = int(count), int(batch)
    _wait_until(at)
    started = time.time()
    for done in range(0, count, batch):
        client.put_many([body] * min(batch, count - done), peer="local")
    return {"started": started, "ended": time.time()}


def putfile(config, path):
    """Put the file at ``path`` as one message (streamed, not read into memory)."""
    from dropr.client import Client

    client = Client(config)
    base = _rss()
    started = time.time()
    client.put(path, "local")
    return {"started": started, "ended": time.time(), "rss_base": base, "rss_peak": _peak()}


def _sender(config):
    from dropr import config as config_mod
    from dropr.sender.sender import Sender

    return Sender(config_mod.load(config), name="bench").open()


def send(config):
    """Deliver everything due, as ``dropr send --once`` does."""
    sender = _sender(config)
    base = _rss()
    started, moved = time.time(), 0
    try:
        while (n := sender.drain()) > 0:  # dropr send --once: overlapped steps, not run_once
            moved += n
    finally:
        sender.close()
    return {"started": started, "ended": time.time(), "moved": moved,
            "rss_base": base, "rss_peak": _peak()}


def batch(config):
    """Two batches in a row from a fresh sender: claim from queue/ and upload.
    For each, its whole time and the time of the selection alone (the spool's
    claim: listing, sorting, renaming); the first lists the queue afresh, the
    second is what a running sender pays. And our RSS after them."""
    sender = _sender(config)
    selections = []
    claim = sender.spool.claim

    def timed_claim(*args, **kwargs):
        started = time.perf_counter()
        try:
            return claim(*args, **kwargs)
        finally:
            selections.append(time.perf_counter() - started)
    sender.spool.claim = timed_claim  # this probe's own instance: time it in place
    base = _rss()
    seconds, moved = [], 0
    try:
        for _ in range(2):
            started = time.perf_counter()
            moved += sender.run_once()
            seconds.append(time.perf_counter() - started)
    finally:
        sender.close()
    return {"seconds": seconds, "select": selections, "moved": moved, "rss_base": base,
            "rss": _rss(), "rss_peak": _peak()}


def post(url, count, size, at, connections=1):
    """POST ``count`` bodies of ``size`` bytes to the plain messages endpoint
    over ``connections`` kept-alive connections at once, each with one
    request in flight, from this one process with plain sockets: a load
    tool's cost per request, not an HTTP library's, so that the client is
    not what limits the figure. A connection the server closes (its answer
    says so) is opened again."""
    parts = urlsplit(url)
    body = os.urandom(int(size))
    request = (f"POST /v1/channels/common/messages HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
               f"\r\n").encode("ascii") + body
    left = int(count)  # requests not sent yet
    answers = {"errors": 0, "duplicates": 0, "answered": 0}
    poller = selectors.DefaultSelector()

    def send(sock):
        nonlocal left
        left -= 1
        sock.sendall(request)

    def connect():
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        poller.register(sock, selectors.EVENT_READ, bytearray())
        send(sock)

    _wait_until(at)
    started = time.time()
    for _ in range(min(int(connections), left)):
        connect()
    while poller.get_map():
        for key, _ in poller.select(30):
            sock, buf = key.fileobj, key.data
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed a connection with a request in flight")
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            head = bytes(buf[:end]).lower() if end >= 0 else b""
            at_length = head.find(b"content-length:")
            length = int(head[at_length + 15:].split(b"\r\n", 1)[0]) if at_length >= 0 else 0
            if end < 0 or len(buf) < end + 4 + length:
                continue  # the rest of the answer is on its way
            status = int(head[9:12])
            answers["answered"] += 1
            answers["errors"] += status not in (200, 201)
            answers["duplicates"] += status == 200  # no Idempotency-Key: a new id each time
            del buf[:end + 4 + length]
            if b"\r\nconnection: close" in head:
                poller.unregister(sock)
                sock.close()
                if left > 0:
                    connect()
            elif left > 0:
                send(sock)
            else:
                poller.unregister(sock)
                sock.close()
    return {"started": started, "ended": time.time(), "errors": answers["errors"],
            "duplicates": answers["duplicates"]}


def call(config, channel, count, size, at):
    """Make ``count`` calls of ``size`` bytes to peer ``local``'s responder for
    ``channel``, one after another over one kept-alive connection; the
    latency of each (seconds) and how many answers were not the echo."""
    from dropr.client import Client

    client = Client(config)
    body = os.urandom(int(size))
    wrong, seconds = 0, []
    _wait_until(at)
    started = time.time()
    for _ in range(int(count)):
        t = time.perf_counter()
        wrong += client.call(body, peer="local", channel=channel) != body
        seconds.append(time.perf_counter() - t)
    return {"started": started, "ended": time.time(), "wrong": wrong, "seconds": seconds}


def spawn(count):
    """The cost of the call path's one obvious step alone: start ``cat``,
    feed it 1 KiB, read it back, reap it; ``count`` times, seconds each."""
    import subprocess

    seconds = []
    for _ in range(int(count)):
        t = time.perf_counter()
        subprocess.run(["cat"], input=b"x" * 1024, capture_output=True, start_new_session=True)
        seconds.append(time.perf_counter() - t)
    return {"seconds": seconds}


def publish(servers, count, size, in_flight=1000):
    """The JetStream limit beside the jetstream scenario: one nats-py client
    publishes ``count`` bodies of ``size`` bytes with an id header each to a
    stream of its own (replicas 3, one per server in ``servers``, comma
    separated), keeping ``in_flight`` acks outstanding."""
    import asyncio

    import nats
    import nats.js.api as api

    async def run():
        nc = await nats.connect(servers.split(","))
        js = nc.jetstream(publish_async_max_pending=int(in_flight))
        await js.add_stream(api.StreamConfig(
            name="BENCHRAW", subjects=["benchraw.>"], num_replicas=min(3, len(servers.split(","))),
            retention=api.RetentionPolicy.WORK_QUEUE))
        body = os.urandom(int(size))
        started = time.time()
        futures = [await js.publish_async("benchraw.common.5", body, wait_stall=30,
                                          headers={"Nats-Msg-Id": f"raw-{i}"})
                   for i in range(int(count))]
        acks = await asyncio.gather(*futures)
        ended = time.time()
        await js.delete_stream("BENCHRAW")
        await nc.close()
        return {"started": started, "ended": ended, "acked": len(acks)}
    return asyncio.run(run())


COMMANDS = {"call": call, "spawn": spawn, "put": put, "putmany": putmany, "putfile": putfile,
            "send": send, "batch": batch, "post": post,
            "publish": publish}


def main(argv=None):
    """Run one probe command; its result as one JSON line on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(json.dumps(COMMANDS[argv[0]](*argv[1:])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
