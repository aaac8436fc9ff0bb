"""POST /v1/channels/{channel}/messages: one message as a raw body, for curl
and producers that do not speak the batch protocol."""

from dropr import names
from dropr.errors import TooLarge
from dropr.store import STORED

#: The client name stored with plain POSTs (they carry no client identity).
HTTP_CLIENT = "http"


class MessagesResource:
    """Stores one raw body in a channel and answers 201 (stored) or 200
    (duplicate). Headers: ``Idempotency-Key`` (the message id; without it a
    new id is made) and ``Dropr-Priority`` (0-9, default 5). Runs in receiver
    worker processes, one request per thread."""

    def __init__(self, store, limits, *, new_id):
        self.store = store
        self.message_limit = limits.max_message_bytes or None  # 0 = no limit
        self.new_id = new_id

    def on_post(self, req, resp, channel):
        names.check_name(channel, "channel")
        key = req.get_header("Idempotency-Key")
        message_id = self.new_id() if key is None else names.check_id(key, "Idempotency-Key")
        priority = req.get_header("Dropr-Priority", default=names.DEFAULT_PRIORITY)
        priority = names.check_priority(priority)
        length = req.content_length
        if self.message_limit is not None and length is not None and length > self.message_limit:
            raise TooLarge(f"message of {length} bytes is over the limit of {self.message_limit}")
        # Without a Content-Length the body is chunked: the server decodes it
        # and ends the stream, so reading the raw stream cannot overrun.
        body = req.bounded_stream if length is not None else req.stream
        status = self.store.put(channel, message_id, body, priority=priority,
                                client=HTTP_CLIENT, limit=self.message_limit)
        if status != STORED:
            # The copy that won may be another request's, linked but not yet
            # synced; sync before saying "duplicate", which lets the client forget it.
            self.store.sync([channel])
        resp.status = 201 if status == STORED else 200
        resp.media = {"id": message_id, "channel": channel, "status": status}
