"""GET /v1/health (the receiver process answers) and GET /v1/ready (it can
store messages now). A load balancer or an orchestrator sends uploads only
to a receiver that is ready, and restarts one that is not alive."""

import logging

from dropr.errors import StoreUnavailable
from dropr.receiver import errors

log = logging.getLogger("dropr.receiver")


class HealthResource:
    """Answers 200 ``{"status": "ok"}`` while the worker serves requests.
    Runs in receiver worker processes."""

    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


class ReadyResource:
    """Answers 200 when the store can take a message now: a file can be
    created in it, and its filesystem has at least ``min_free_bytes`` and
    ``min_free_inodes`` free; 503 ``not_ready`` (saying which check failed)
    otherwise. Each request checks afresh, writing nothing that stays. The
    answer, open to anyone, never names the store's path: the log does. Runs
    in receiver worker processes."""

    def __init__(self, store, *, min_free_bytes=0, min_free_inodes=0):
        self.store = store
        self.min_free_bytes = min_free_bytes
        self.min_free_inodes = min_free_inodes

    def on_get(self, req, resp):
        try:
            self.store.check_writable()
            free, inodes = self.store.free_bytes(), self.store.free_inodes()
        except OSError as e:
            log.warning("not ready: store %s is not writable: %s", self.store.root, e.strerror)
            errors.answer(resp, 503, "not_ready", f"the store is not writable: {e.strerror}")
            return
        except StoreUnavailable as e:
            errors.answer(resp, 503, "not_ready", str(e))
            return
        if free < self.min_free_bytes:
            errors.answer(resp, 503, "not_ready",
                          f"the store has {free} bytes free, below the "
                          f"{self.min_free_bytes} of [receiver] min_free_bytes")
            return
        if inodes is not None and inodes < self.min_free_inodes:
            errors.answer(resp, 503, "not_ready",
                          f"the store has {inodes} inodes free, below the "
                          f"{self.min_free_inodes} of [receiver] min_free_inodes")
            return
        resp.media = {"status": "ready", "free_bytes": free,
                      "min_free_bytes": self.min_free_bytes, "free_inodes": inodes,
                      "min_free_inodes": self.min_free_inodes}
