"""One record per worker kind: the supervisor, ``droprd status``, reload and
the workers themselves read it, so a kind is described once.

A worker's **name** is what ``ps`` shows after ``dropr: `` (``sender 1``,
``retry-scanner``); the same spelling is used by ``droprd status`` (column
``NAME``, JSON ``name``), the logs, ``droprd restart NAME`` and the metric
label ``worker``. Its **kind** is the key under ``[workers]`` that says how
many to run (``sender``, ``retry_scanner``), also the JSON ``kind``.
"""

import dataclasses
import importlib
import re

#: What every title starts with; the supervisor's own is ``dropr: supervisor``.
TITLE_PREFIX = "dropr: "
#: Seconds between a worker's reports to the supervisor.
REPORT_INTERVAL = 1.0
#: Slack on top of a sender's longest upload, for claiming and moving a batch's files.
_SENDER_MARGIN = 10.0
#: Config sections the workers read besides each kind's own ([store]: the
#: receiver's backend). Kinds read each other's too ([retry]: the senders'
#: backoff; [metrics]: the senders count only while it is on), so a reload
#: that changes any of them replaces every worker.
SHARED_SECTIONS = ("client", "store")


def _no_long_step(config):
    return 0.0


def _sender_longest_step(config):
    """A sender's loop waits at most ``[sender] wait`` for an upload, but when
    it stops or is recycled it finishes the uploads on the wire: one per
    peer at once, each of which may try every URL of its peer for up to
    connect_timeout + timeout. Allow the slowest peer that long."""
    uploads = [len(p.urls or (p.url,)) * (p.connect_timeout + p.timeout)
               for p in config.peers.values()]
    return max(uploads, default=0.0) + config.sender.wait + _SENDER_MARGIN


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of worker. ``order``: its place in ``droprd status`` and in
    the start order; ``section``: the config section that configures it;
    ``numbered``: more than one may run, each named with its number;
    ``budget``: ``[supervisor] max_messages_per_life`` recycles it (the
    receiver's HTTP workers are held to it by gunicorn, not the receiver
    itself); ``longest_step(config)``: the longest one of its steps may go
    without a report when that can exceed ``heartbeat_timeout`` (0: none);
    ``shell``: its :class:`~dropr.workers.base.Worker` class, ``module:Class``."""

    key: str
    name: str
    order: int
    section: str
    shell: str
    numbered: bool = False
    budget: bool = True
    longest_step: object = _no_long_step

    def name_of(self, number=1):
        """The name of worker ``number`` of this kind: ``sender 2``, ``reaper``."""
        return f"{self.name} {number}" if self.numbered else self.name

    def title(self, number=1):
        """What ``ps`` shows: ``dropr: sender 2``, ``dropr: reaper``."""
        return TITLE_PREFIX + self.name_of(number)

    def silence_limit(self, config):
        """How long a worker of this kind may go without reporting before the
        supervisor calls it hung: ``[supervisor] heartbeat_timeout``, but never
        less than two report intervals nor than its own longest step."""
        return max(config.supervisor.heartbeat_timeout, 2 * REPORT_INTERVAL,
                   self.longest_step(config))

    def shell_class(self):
        """The Worker subclass that runs this kind (imported on first use)."""
        module, _, cls = self.shell.partition(":")
        return getattr(importlib.import_module(module), cls)


KINDS = tuple(sorted((
    Kind("sender", "sender", 1, "sender", "dropr.sender.shell:SenderWorker", numbered=True,
         longest_step=_sender_longest_step),
    Kind("retry_scanner", "retry-scanner", 2, "retry",
         "dropr.retry_scanner.shell:RetryScannerWorker"),
    Kind("reaper", "reaper", 3, "reaper", "dropr.reaper.shell:ReaperWorker"),
    Kind("receiver", "receiver", 4, "receiver", "dropr.receiver.shell:ReceiverWorker",
         budget=False),
    Kind("legacy_spool", "legacy-spool", 5, "legacy", "dropr.legacy.shell:LegacySpoolWorker"),
    Kind("metrics", "metrics", 6, "metrics", "dropr.metrics.shell:MetricsWorker", budget=False),
), key=lambda k: k.order))

BY_KEY = {k.key: k for k in KINDS}

#: Config sections whose change replaces every worker on a reload.
WORKER_SECTIONS = SHARED_SECTIONS + tuple(k.section for k in KINDS)


def kind(key):
    """The :class:`Kind` whose ``[workers]`` key is ``key``."""
    return BY_KEY[key]


def wanted(workers):
    """(kind key, number, name) of every worker a ``[workers]`` config asks
    for, in start order."""
    return [(k.key, n, k.name_of(n)) for k in KINDS for n in range(1, getattr(workers, k.key) + 1)]


_OLD_NUMBERED = re.compile(r"^([a-z-]+)-([0-9]+)$")


def canonical_name(text):
    """A worker name as an operator may type it, spelled as ``ps`` shows it:
    ``sender 2`` (also given as the words ``sender``, ``2``, or as the older
    ``sender-2``). Anything else is returned unchanged, stripped."""
    text = " ".join(str(text).split())
    match = _OLD_NUMBERED.match(text)
    if match and any(k.numbered and k.name == match[1] for k in KINDS):
        return f"{match[1]} {match[2]}"
    return text
