"""GET /v1/health (the receiver process answers) and GET /v1/ready (it can
store messages now). A load balancer or an orchestrator sends uploads only
to a receiver that is ready, and restarts one that is not alive."""

from dropr.errors import StoreUnavailable
from dropr.receiver import errors


class HealthResource:
    """Answers 200 ``{"status": "ok"}`` while the worker serves requests.
    Runs in receiver worker processes."""

    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


class ReadyResource:
    """Answers 200 when the store can take a message now: a file can be
    created in it, and its filesystem has at least ``min_free_bytes`` free;
    503 ``not_ready`` (saying which check failed) otherwise. Each request
    checks afresh, writing nothing that stays. Runs in receiver worker
    processes."""

    def __init__(self, store, *, min_free_bytes=0):
        self.store = store
        self.min_free_bytes = min_free_bytes

    def on_get(self, req, resp):
        root = self.store.root
        try:
            self.store.check_writable()
            free = self.store.free_bytes()
        except OSError as e:
            errors.answer(resp, 503, "not_ready", f"store {root} is not writable: {e.strerror}")
            return
        except StoreUnavailable as e:
            errors.answer(resp, 503, "not_ready", str(e))
            return
        if free < self.min_free_bytes:
            errors.answer(resp, 503, "not_ready",
                          f"store {root} has {free} bytes free, below the "
                          f"{self.min_free_bytes} of [receiver] min_free_bytes")
            return
        resp.media = {"status": "ready", "free_bytes": free,
                      "min_free_bytes": self.min_free_bytes}
