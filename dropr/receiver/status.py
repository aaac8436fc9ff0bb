"""GET /v1/channels/{channel}/messages/{id} (and /v1/messages/{id}, for a
message whose channel the asker no longer knows): where a stored message is
now — ``queued``, ``claimed`` (by which consumer), ``acked`` or ``dead`` (with
its reason) — never its body. A client sees only the messages stored under
its own name; another's is answered 404 as if absent. Runs in receiver
worker processes."""

import falcon

from dropr import names

FIELDS = ("id", "channel", "state", "priority", "client", "received_at", "size", "consumer",
          "reason", "acked_at")


class MessageStatusResource:
    """Answers where one message is, from the store's ``locate``."""

    def __init__(self, store):
        self.store = store

    def on_get(self, req, resp, message_id, channel=None):
        if not hasattr(self.store, "locate"):
            raise falcon.HTTPNotImplemented(description="this receiver's store backend cannot "
                                            "say where a message is yet")
        names.check_id(message_id)
        client = req.context.client
        if channel is None:
            found = self.store.locate_anywhere(message_id, client=client)
        else:
            names.check_name(channel, "channel")
            found = self.store.locate(channel, message_id, client=client)
        resp.media = {k: found.get(k) for k in FIELDS}
