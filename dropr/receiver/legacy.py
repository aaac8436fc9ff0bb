"""POST ``[receiver] legacy_path``: an upload of the PHP dropr client, read as
it is sent and answered as the PHP server answers.

The PHP client (``dropr_Client_Peer_HttpUpload``) posts ``multipart/form-data``
with a ``client`` field (its host name), one file part ``f_K`` per message and
a ``metaData`` field, PHP ``serialize()`` of ``K => {message: "f_K",
messageId, channel, priority, messageType}``, in that order: the bodies come
before the metadata that names them, so each is kept in a scratch file until
``metaData`` has arrived. The answer is ``serialize()`` of ``messageId =>
{inqueue: bool}``; the PHP client moves a message to its ``sent/`` only for
``inqueue`` true and sends the others again later.

What is wrong with the request as a whole (not multipart, a field missing or
twice, ``metaData`` not the strict subset :mod:`dropr.legacy.phpser` reads,
entries not of the original's shape, over the batch limits) is a 4xx with
the receiver's JSON error, and nothing is stored. What is wrong with one
message (a channel outside dropr's grammar or the client's channels, a
priority outside 0-9, a direct message ``messageType`` 2, over
``max_message_bytes``, no file part) is ``inqueue`` false for it alone, and
logged. A PHP message id is the PHP client's spool file name, longer than
dropr's ids and holding ``/``, ``+`` and ``=``: it is mapped to a dropr id
that depends only on the client and that id (:func:`dropr_id`), so a re-send
after a lost answer is a duplicate, and kept in the stored message as its
``legacy_id``. Runs in receiver worker processes.
"""

import contextlib
import hashlib
import logging
import tempfile

import falcon

from dropr import names
from dropr.errors import TooLarge, ValidationError
from dropr.legacy import phpser
from dropr.receiver.multipart import FormReader, boundary_of

log = logging.getLogger("dropr.receiver")

ENTRY_KEYS = frozenset(("message", "messageId", "channel", "priority", "messageType"))
TYPE_QUEUE, TYPE_DIRECT = 1, 2
#: The longest PHP message id taken (the original's are about 100 characters).
LEGACY_ID_MAX = 1024
#: Bytes of the ``client`` field, and of ``metaData`` per message.
CLIENT_MAX = 255
META_BYTES_PER_MESSAGE = 2048
_CHUNK = 1 << 16


def dropr_id(client, php_client, legacy_id):
    """The dropr id of a PHP message: the same for the same (authenticated
    client, PHP host name, PHP id), so a re-send is a duplicate."""
    digest = hashlib.sha256("\0".join((client or "", php_client, legacy_id)).encode())
    return "php-" + digest.hexdigest()[:40]


class LegacyUploadResource:
    """Stores a PHP client's upload; see the module's doc."""

    def __init__(self, store, limits, *, floor):
        self.store = store
        self.limits = limits
        self.message_limit = limits.max_message_bytes or None
        self.floor = floor

    def on_post(self, req, resp):
        if not (req.content_type or "").lower().startswith("multipart/form-data"):
            raise falcon.HTTPUnsupportedMediaType(
                description="the PHP dropr client's upload is multipart/form-data")
        length = req.content_length
        if length is None:
            raise falcon.HTTPLengthRequired(description="send the upload with a Content-Length")
        if length > self.limits.max_batch_bytes:
            raise TooLarge(f"upload of {length} bytes is over the limit of "
                           f"{self.limits.max_batch_bytes}")
        self.floor.check(length)
        reader = FormReader(req.bounded_stream.read, boundary_of(req.content_type))
        with contextlib.ExitStack() as files:
            fields, bodies = self._read_parts(reader, files)
            entries = self._entries(fields)
            results = self._store_all(req, fields["client"], entries, bodies)
        resp.status = 200
        resp.content_type = "text/plain; charset=utf-8"
        resp.data = phpser.dumps(results)

    # -- reading ---------------------------------------------------------------

    def _read_parts(self, reader, files):
        """({"client": str, "metaData": bytes}, {part name: (scratch file, size)})."""
        fields, bodies = {}, {}
        limit = self.limits.max_batch_messages
        for part in reader.parts():
            name = part.name
            if name is None:
                raise ValidationError("every part needs a name")
            if name in fields or name in bodies:
                raise ValidationError(f"the part {name!r} appears twice")
            if name == "client":
                fields[name] = _text(part, CLIENT_MAX, "client")
            elif name == "metaData":
                fields[name] = _bounded(part, META_BYTES_PER_MESSAGE * limit + 64, "metaData")
            elif name.startswith("f_"):
                if len(bodies) >= limit:
                    raise TooLarge(f"upload of more than {limit} messages")
                bodies[name] = self._spool(part, files)
            else:
                raise ValidationError(f"unknown part {name!r}: the PHP client sends client, "
                                      "metaData and f_K")
        for name in ("client", "metaData"):
            if name not in fields:
                raise ValidationError(f"the {name!r} field is missing")
        return fields, bodies

    def _spool(self, part, files):
        """The part's body in a scratch file: (file, size), or (None, size) past
        ``max_message_bytes`` (that message is refused; its bytes are dropped)."""
        scratch = files.enter_context(tempfile.TemporaryFile())
        size = 0
        while chunk := part.stream.read(_CHUNK):
            size += len(chunk)
            if self.message_limit is None or size <= self.message_limit:
                scratch.write(chunk)
        if self.message_limit is not None and size > self.message_limit:
            return None, size
        scratch.seek(0)
        return scratch, size

    def _entries(self, fields):
        """The messages ``metaData`` announces, checked for shape: a list of dicts."""
        meta = phpser.loads(fields["metaData"], max_depth=2,
                            max_items=1 + 11 * self.limits.max_batch_messages)
        if not isinstance(meta, dict):
            raise ValidationError("metaData must be a serialized array of messages")
        if len(meta) > self.limits.max_batch_messages:
            raise TooLarge(f"upload of {len(meta)} messages is over the limit of "
                           f"{self.limits.max_batch_messages}")
        entries, seen = [], set()
        for key, entry in meta.items():
            if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
                raise ValidationError(f"metaData entry {key!r} must have exactly the keys "
                                      + ", ".join(sorted(ENTRY_KEYS)))
            legacy_id = entry["messageId"]
            if not isinstance(legacy_id, str) or not 0 < len(legacy_id) <= LEGACY_ID_MAX:
                raise ValidationError(f"metaData entry {key!r}: messageId must be a string of "
                                      f"1 to {LEGACY_ID_MAX} characters")
            if legacy_id in seen:
                raise ValidationError(f"messageId {legacy_id!r} appears twice in metaData")
            seen.add(legacy_id)
            if not isinstance(entry["message"], str):
                raise ValidationError(f"metaData entry {key!r}: message must name a part")
            entries.append(entry)
        return entries

    # -- storing ---------------------------------------------------------------

    def _store_all(self, req, php_client, entries, bodies):
        results, channels = {}, set()
        for entry in entries:
            legacy_id = entry["messageId"]
            refusal = self._refusal(req, entry, bodies)
            if refusal is not None:
                log.warning("PHP client %s (%s): message %r not taken: %s", req.context.client,
                            php_client, legacy_id, refusal)
                results[legacy_id] = {"inqueue": False}
                continue
            scratch, _ = bodies[entry["message"]]
            staged = self.store.stage(entry["channel"],
                                      dropr_id(req.context.client, php_client, legacy_id),
                                      scratch, priority=_priority(entry["priority"]),
                                      client=req.context.client, limit=self.message_limit,
                                      legacy_id=legacy_id)
            self.store.publish(staged, sync_dir=False)
            channels.add(entry["channel"])
            results[legacy_id] = {"inqueue": True}
        self.store.sync(channels)  # before the answer lets the PHP client forget them
        return results

    def _refusal(self, req, entry, bodies):
        """Why this message is not taken (inqueue false), or None."""
        if entry["messageType"] != TYPE_QUEUE:
            return ("a direct message (messageType 2): use POST /v1/channels/{channel}/calls"
                    if entry["messageType"] == TYPE_DIRECT else "unknown messageType")
        channel = entry["channel"]
        try:
            names.check_name(channel, "channel")
        except ValidationError as e:
            return str(e)
        allowed = req.context.channels
        if allowed is not None and channel not in allowed:
            return f"client {req.context.client!r} may not write to channel {channel!r}"
        if _priority(entry["priority"]) is None:
            return f"priority {entry['priority']!r} is not 0-9"
        body = bodies.get(entry["message"])
        if body is None:
            return f"no file part {entry['message']!r}"
        if body[0] is None:
            return f"{body[1]} bytes, over the limit of {self.message_limit}"
        return None


def _priority(value):
    """0-9 from an int or a one-digit string (the original sends either), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and len(value) == 1 and "0" <= value <= "9":
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= 9 else None


def _bounded(part, limit, what):
    data = part.stream.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"the {what} field is over {limit} bytes")
    return data


def _text(part, limit, what):
    try:
        return _bounded(part, limit, what).decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(f"the {what} field is not UTF-8") from None
