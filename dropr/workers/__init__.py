"""The worker kinds the supervisor runs, registered by name.

Each kind is one module with one :class:`~dropr.workers.base.Worker` subclass.
"""

import importlib

KINDS = {
    "sender": "dropr.workers.sender:SenderWorker",
    "retry_scanner": "dropr.workers.retry_scanner:RetryScannerWorker",
    "reaper": "dropr.workers.reaper:ReaperWorker",
    "receiver": "dropr.workers.receiver:ReceiverWorker",
    "legacy_spool": "dropr.workers.legacy_spool:LegacySpoolWorker",
    "metrics": "dropr.workers.metrics:MetricsWorker",
}


def worker_class(kind):
    """The Worker subclass registered as ``kind``."""
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)
