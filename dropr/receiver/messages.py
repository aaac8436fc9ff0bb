"""POST /v1/channels/{channel}/messages: one message as a raw body, for curl
and producers that do not speak the batch protocol."""

from dropr import names
from dropr.errors import TooLarge, ValidationError
from dropr.faults import crash_point
from dropr.receiver.auth import check_channel
from dropr.receiver.limits import RECHECK_BYTES
from dropr.receiver.strict import header_number
from dropr.results import STORED


_ANSWER = '{{"id": "{}", "channel": "{}", "status": "{}"}}'


def _header(req, name, default=None):
    """A header's value. The server hands header bytes over as Latin-1; text
    a client sent in UTF-8 is decoded as such, so that an error message shows
    what the client wrote (a look-alike letter, not its bytes as Latin-1)."""
    value = req.get_header(name)
    if value is None:
        return default
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


class MessagesResource:
    """Stores one raw body in a channel, under the client its bearer token
    names, and answers 201 (stored) or 200 (duplicate). Headers:
    ``Idempotency-Key`` (the message id; without it a new id is made) and
    ``Dropr-Priority`` (0-9, default 5). Runs in receiver worker processes,
    one request per thread."""

    def __init__(self, store, limits, *, new_id, floor):
        self.store = store
        self.message_limit = limits.max_message_bytes or None  # 0 = no limit
        self.new_id = new_id
        self.floor = floor  # a limits.DiskFloor

    def on_post(self, req, resp, channel):
        names.check_name(channel, "channel")
        check_channel(req, channel)  # before a byte of the body is read
        key = _header(req, "Idempotency-Key")
        message_id = self.new_id() if key is None else names.check_id(key, "Idempotency-Key")
        priority = req.get_header("Dropr-Priority")
        priority = names.check_priority(names.DEFAULT_PRIORITY if priority is None else
                                        header_number(priority, "Dropr-Priority", 3))
        length = req.content_length
        if self.message_limit is not None and length is not None and length > self.message_limit:
            raise TooLarge(f"message of {length} bytes is over the limit of {self.message_limit}")
        self.floor.check(length or 0, messages=1)
        status = self._store(req, channel, message_id, priority, fresh=key is None)
        if status != STORED:
            # The copy that won may be another request's, linked but not yet
            # synced; sync before saying "duplicate", which lets the client forget it.
            self.store.sync([channel])
        crash_point("messages.before_answer")
        resp.status = 201 if status == STORED else 200
        # What falcon's JSON handler would write for {"id", "channel", "status"},
        # without it: a checked id and channel have nothing to escape.
        resp.data = _ANSWER.format(message_id, channel, status).encode()

    def _store(self, req, channel, message_id, priority, fresh):
        # Without a Content-Length the body is chunked: the server decodes it
        # and ends the stream, so reading the raw stream cannot overrun.
        body = req.bounded_stream if req.content_length is not None else req.stream
        staged = self.store.stage(channel, message_id, body, priority=priority,
                                  client=req.context.client, limit=self.message_limit)
        try:
            self._check_staged(req.content_length, staged.size)
        except BaseException:
            self.store.discard(staged)
            raise
        # A fresh id (made here, not the client's key) cannot be stored already.
        return self.store.publish(staged, fresh=fresh)  # removes the staged file, whatever happens

    def _check_staged(self, length, size):
        # gunicorn ends the body stream quietly when the client shuts its side
        # of the connection early: a short body is a broken upload, not a message.
        if length is not None and size != length:
            raise ValidationError(f"the body ended after {size} of the {length} bytes "
                                  f"that Content-Length announces")
        if size >= RECHECK_BYTES:  # a chunked body's size was not known before
            self.floor.recheck()
