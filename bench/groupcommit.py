"""Would group commit across producer processes beat an fsync per put?

    python bench/groupcommit.py [--producers 4] [--puts 300] [--dir PATH]

Measures, on the filesystem of ``--dir`` (mount a fresh journaled ext4 there),
the durable put of one 1 KiB message per call in two ways, with the same
number of producer processes putting at once:

- ``own``: each producer makes its own put durable, as ``Client.put`` does
  with ``fsync = true``: write, fsync the file, rename into queue/, fsync
  queue/.
- ``shared``: one flusher process shares its flushes: a producer writes its
  file, asks the flusher over a SysV queue for a flush, renames once it is
  answered, and asks again for the rename. The flusher takes every request
  waiting, makes one syncfs(2) of the filesystem for all of them, and answers
  each. This is the design a producer-side group commit in droprd would have.

Prints puts per second for each and their ratio.
"""

import argparse
import ctypes
import multiprocessing
import os
import shutil
import tempfile
import time

import sysv_ipc

BODY = b"x" * 1024
_SYNCFS = ctypes.CDLL(None, use_errno=True).syncfs


def own(root, tag, count):
    tmp, queue = f"{root}/tmp", f"{root}/queue"
    qfd = os.open(queue, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(count):
        fd = os.open(f"{tmp}/{tag}-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, BODY)
        os.fsync(fd)
        os.close(fd)
        os.rename(f"{tmp}/{tag}-{i}", f"{queue}/{tag}-{i}")
        os.fsync(qfd)
    os.close(qfd)


def shared(root, tag, count, key):
    mq = sysv_ipc.MessageQueue(key)
    me = os.getpid()
    tmp, queue = f"{root}/tmp", f"{root}/queue"

    def flushed():
        mq.send(str(me).encode(), type=1)
        mq.receive(type=me)

    for i in range(count):
        fd = os.open(f"{tmp}/{tag}-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, BODY)
        os.close(fd)
        flushed()
        os.rename(f"{tmp}/{tag}-{i}", f"{queue}/{tag}-{i}")
        flushed()


def flusher(root, key, flushes):
    mq = sysv_ipc.MessageQueue(key)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    n = 0
    while True:
        raw, _ = mq.receive(type=1)
        if raw == b"stop":
            break
        waiting = [int(raw)]
        while True:
            try:
                waiting.append(int(mq.receive(type=1, block=False)[0]))
            except sysv_ipc.BusyError:
                break
        if _SYNCFS(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")
        n += 1
        for pid in waiting:
            mq.send(b"", type=pid)
    flushes.value = n


def run(mode, base, producers, count):
    root = tempfile.mkdtemp(dir=base)
    os.makedirs(f"{root}/tmp")
    os.makedirs(f"{root}/queue")
    ctx = multiprocessing.get_context("fork")
    mq = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600)
    flushes = ctx.Value("i", 0)
    helper = ctx.Process(target=flusher, args=(root, mq.key, flushes)) if mode == "shared" else None
    if helper:
        helper.start()
    jobs = [ctx.Process(target=own if mode == "own" else shared,
                        args=(root, p, count) + ((mq.key,) if mode == "shared" else ()))
            for p in range(producers)]
    started = time.perf_counter()
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    elapsed = time.perf_counter() - started
    if helper:
        mq.send(b"stop", type=1)
        helper.join()
    mq.remove()
    shutil.rmtree(root)
    return producers * count / elapsed, flushes.value


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--producers", type=int, default=4)
    p.add_argument("--puts", type=int, default=300, help="per producer")
    p.add_argument("--dir", default=".")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    for run_no in range(args.runs):
        own_rate, _ = run("own", args.dir, args.producers, args.puts)
        shared_rate, flushes = run("shared", args.dir, args.producers, args.puts)
        puts = args.producers * args.puts
        print(f"run {run_no + 1}: {args.producers} producers x {args.puts} durable puts: "
              f"own fsync {own_rate:,.0f}/s, shared flusher {shared_rate:,.0f}/s "
              f"({shared_rate / own_rate:.2f}x; {flushes} syncfs for {2 * puts} requests)")


if __name__ == "__main__":
    main()
