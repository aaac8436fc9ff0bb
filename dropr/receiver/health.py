"""GET /v1/health: the receiver process answers."""


class HealthResource:
    """Answers 200 ``{"status": "ok"}`` while the worker serves requests.
    Runs in receiver worker processes."""

    def on_get(self, req, resp):
        resp.media = {"status": "ok"}
