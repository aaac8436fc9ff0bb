"""The worker kinds the supervisor runs, registered by name.

Each kind is one module with one :class:`~dropr.workers.base.Worker` subclass.
"""

import importlib

KINDS = {
    "sender": "dropr.sender.shell:SenderWorker",
    "retry_scanner": "dropr.retry_scanner.shell:RetryScannerWorker",
    "reaper": "dropr.reaper.shell:ReaperWorker",
    "receiver": "dropr.receiver.shell:ReceiverWorker",
    "legacy_spool": "dropr.legacy.shell:LegacySpoolWorker",
    "metrics": "dropr.metrics.shell:MetricsWorker",
}


def worker_class(kind):
    """The Worker subclass registered as ``kind``."""
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)
