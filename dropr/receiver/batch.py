"""POST /v1/batch: the sender's multipart upload, stored in two phases.

The request is a JSON ``meta`` part, then one part per message in meta's
order (README, "The wire"). A refused request must leave
the store exactly as it was, so nothing is published before the whole body
has parsed cleanly:

1. meta is read and checked in full;
2. each message part streams into the store's ``tmp/`` (written, fsync-ed)
   while the structure is checked: the i-th part carries the i-th id, every
   id gets a part, no part is left over;
3. only then is every staged file published (linked into
   ``queue/<channel>/``, duplicates detected there), and each channel
   directory is fsync-ed once before the answer.

Any error on the way unlinks everything staged. A problem of one message
(over the size limit, body size not the one meta gives, bad channel or
priority) rejects that message alone; the rest proceed. A channel the
client may not write refuses the whole batch (403) before any part is staged:
a sender keeps such a batch in ``deferred/`` until the operator fixes the
client's channels, rather than giving its messages up one by one.
"""

import collections
import dataclasses

import falcon

from dropr import names
from dropr.errors import TooLarge, ValidationError
from dropr.faults import crash_point
from dropr.receiver.auth import check_channel
from dropr.receiver.limits import RECHECK_BYTES, check_json_depth
from dropr.receiver.multipart import FormReader, boundary_of
from dropr.receiver.strict import exact_int, load_json
from dropr.results import REJECTED

_ID_MATCH = names.ID_PATTERN.match
_PRIORITY_MIN, _PRIORITY_MAX = names.PRIORITY_MIN, names.PRIORITY_MAX

#: Generous bytes of meta JSON per message (id and channel at most 64 each),
#: used to bound how much of the meta part is read into memory.
META_BYTES_PER_MESSAGE = 512
#: meta is an object holding a list of objects; anything deeper is refused
#: before it is parsed (a parser recurses once per level).
META_MAX_DEPTH = 8
META_KEYS = frozenset(("client", "messages"))
MESSAGE_KEYS = frozenset(("id", "channel", "priority", "size"))
#: Strings in meta, keys included: its keys and client; a message's keys, id and channel.
META_STRINGS, MESSAGE_STRINGS = len(META_KEYS) + 1, len(MESSAGE_KEYS) + 2
_ORDER = "the parts must follow meta, one per message, in meta's order"


@dataclasses.dataclass(slots=True)
class Entry:
    """One message as meta announces it; ``error`` says why it is rejected
    before its body is read (``None``: it is acceptable so far)."""

    id: str
    channel: str = None
    priority: int = None
    size: int = None
    error: str = None


def read_meta(part, max_messages):
    """``(client, entries)`` from the meta part; ``ValidationError`` if it is not
    a valid meta, ``TooLarge`` if it announces more than ``max_messages``."""
    if part is None or part_name(part) != "meta":
        raise ValidationError("the first part must be the JSON part named 'meta'")
    media_type = (part.content_type or "application/json").partition(";")[0]
    if media_type.strip(" \t").lower() != "application/json":
        # As the OpenAPI document says: a validator in front would not read it as JSON.
        raise ValidationError(f"the meta part is application/json, not "
                              f"{names.shown(part.content_type)}")
    meta = _parse(_read_meta_bytes(part, meta_bytes_max(max_messages)), max_messages)
    if not isinstance(meta, dict) or not isinstance(meta.get("messages"), list):
        raise ValidationError('meta must be an object with "client" and a "messages" list')
    _no_unknown_keys(meta, META_KEYS, "meta")
    client = names.check_name(meta.get("client"), "client name")
    messages = meta["messages"]
    if len(messages) > max_messages:
        raise TooLarge(f"batch of {len(messages)} messages is over the limit of {max_messages}")
    channels = set()  # the channel names that passed, checked once per batch
    entries = [_entry(i, m, channels) for i, m in enumerate(messages)]
    if len({e.id for e in entries}) != len(entries):
        seen = set()
        dup = next(e.id for e in entries if e.id in seen or seen.add(e.id))
        raise ValidationError(f"message id {dup!r} appears more than once in meta")
    return client, entries


def meta_bytes_max(max_messages):
    """The most bytes of meta JSON read into memory for a batch of at most
    ``max_messages`` messages."""
    return 64 * 1024 + META_BYTES_PER_MESSAGE * max_messages


def _read_meta_bytes(part, limit):
    data = part.stream.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"meta is over {limit} bytes, the most a batch of up to "
                       f"[receiver] max_batch_messages messages needs")
    return data


def _parse(data, max_messages):
    """meta's JSON: UTF-8 and nothing else (``json.loads`` would also guess
    UTF-16 and UTF-32), no deeper than META_MAX_DEPTH, and no more objects
    and strings than a meta of ``max_messages`` messages has (so that no
    meta of the allowed size takes a worker long to parse)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValidationError(f"meta is not UTF-8: {e.reason} at byte {e.start}") from None
    # Twice what meta needs (meta, its list, an object per message), so that a
    # few messages too many are told the batch limit that read_meta names.
    check_json_depth(data, META_MAX_DEPTH, "meta",
                     max_containers=2 * (2 + max_messages),
                     max_strings=2 * (META_STRINGS + MESSAGE_STRINGS * max_messages))
    try:
        return load_json(text, "meta")
    except ValidationError:
        raise
    except (ValueError, RecursionError) as e:
        raise ValidationError(f"meta is not valid JSON: {e}") from None


def _no_unknown_keys(obj, known, where):
    unknown = sorted(set(obj) - known)
    if unknown:
        shown = ", ".join(names.shown(k) for k in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise ValidationError(f"{where} has unknown keys {shown}{more}: expected only "
                              f"{', '.join(sorted(known))}")


def part_name(part):
    """The name a part's Content-Disposition gives it (``None`` if none)."""
    try:
        return part.name
    except UnicodeDecodeError:
        raise ValidationError("a part's Content-Disposition is not UTF-8") from None


def _entry(i, message, channels):
    """The i-th message of meta. A missing key or a value of the wrong JSON
    type refuses the whole request, as the OpenAPI document's schema would;
    a value of the right type that is not acceptable (a channel name outside
    the grammar, a priority out of range) rejects that message alone.
    ``channels``: the names that passed as a channel in this meta so far."""
    if (type(message) is dict and len(message) == 4 and "id" in message
            and "channel" in message and "priority" in message and "size" in message
            and type(message["id"]) is str and type(message["channel"]) is str
            and type(message["priority"]) is int and type(message["size"]) is int):
        # Nearly always: the usual keys and types, and (checked here without a
        # call per check) a good id, a channel that passed, a priority in range.
        message_id, channel = message["id"], message["channel"]
        priority, size = message["priority"], message["size"]
        if (len(message_id) <= names.ID_MAX and _ID_MATCH(message_id) and message_id != "meta"
                and channel in channels and _PRIORITY_MIN <= priority <= _PRIORITY_MAX
                and size >= 0):
            return Entry(message_id, channel, priority, size)
    else:
        _check_entry(message, f"meta messages[{i}]")
    where = f"meta messages[{i}]"
    entry = Entry(names.check_id(message["id"], f"{where} id"))
    if entry.id == "meta":
        raise ValidationError(f"{where} id 'meta' is the name of the meta part")
    try:
        channel = message["channel"]
        if channel not in channels:
            channels.add(names.check_name(channel, "channel"))
        entry.channel = channel
        entry.priority = names.check_priority(message["priority"])
        entry.size = _check_size(message["size"])
    except ValidationError as e:
        entry.error = str(e)
    return entry


def _check_entry(message, where):
    """Refuse a meta message whose keys or JSON types are not MESSAGE_KEYS' own."""
    if not isinstance(message, dict):
        raise ValidationError(f"{where} must be an object")
    if message.keys() != MESSAGE_KEYS:
        _no_unknown_keys(message, MESSAGE_KEYS, where)
    missing = () if len(message) == len(MESSAGE_KEYS) else sorted(MESSAGE_KEYS - set(message))
    if missing:
        raise ValidationError(f"{where} lacks {', '.join(missing)}: every message has exactly "
                              f"{', '.join(sorted(MESSAGE_KEYS))}")
    for key, is_type, name in _TYPES:
        if not is_type(message[key]):
            raise ValidationError(f"{where} {key} must be {name}, not "
                                  f"{names.shown(message[key])}")


#: The JSON type of each key of a meta message: (key, test, what it must be).
_TYPES = (("id", lambda v: isinstance(v, str), "a string"),
          ("channel", lambda v: isinstance(v, str), "a string"),
          ("priority", exact_int, "an integer"),
          ("size", exact_int, "an integer"))


def _check_size(value):
    if value < 0:
        raise ValidationError(f"size must be a whole number of bytes, not {value!r}")
    return value


def _rejected(error):
    return {"status": REJECTED, "error": error}


class BatchResource:
    """Stores the messages of one batch upload and answers a result per id.
    Runs in receiver worker processes, one request per thread."""

    def __init__(self, store, limits, *, floor):
        self.store = store
        self.limits = limits
        self.floor = floor  # a limits.DiskFloor
        self.message_limit = limits.max_message_bytes or None  # 0 = no limit

    def on_post(self, req, resp):
        self._check_request(req)
        # Our own streaming reader, not req.get_media(): see receiver/multipart.py.
        form = FormReader(req.bounded_stream.read, boundary_of(req.content_type))
        parts = form.parts()
        _, entries = read_meta(next(parts, None), self.limits.max_batch_messages)
        self.floor.check(req.content_length, messages=len(entries))  # blocks and inodes too
        # The client is the one its bearer token names; meta's "client" is not trusted.
        client = req.context.client
        for channel in dict.fromkeys(e.channel for e in entries if e.channel is not None):
            check_channel(req, channel)  # 403 for the whole batch: nothing stored
        results = dict.fromkeys(e.id for e in entries)  # answers in meta's order
        staged = collections.deque()
        try:
            self._stage_all(form, parts, client, entries, results, staged)
            if sum(s.size for s in staged) >= RECHECK_BYTES:
                self.floor.recheck()
            self._publish_all(staged, results)
        finally:
            for s in staged:
                self.store.discard(s)
        crash_point("batch.before_answer")
        resp.media = {"results": results}

    def _check_request(self, req):
        """Refuse what can be refused before reading a byte of the body."""
        if not (req.content_type or "").lower().startswith(falcon.MEDIA_MULTIPART):
            raise falcon.HTTPUnsupportedMediaType(
                description="a batch is multipart/form-data: a JSON part 'meta', "
                            "then one part per message")
        length = req.content_length
        if length is None:
            raise falcon.HTTPLengthRequired(description="a batch needs a Content-Length")
        if length > self.limits.max_batch_bytes:
            raise TooLarge(f"batch of {length} bytes is over the limit of "
                           f"{self.limits.max_batch_bytes}")
        self.floor.check(length)

    def _stage_all(self, form, parts, client, entries, results, staged):
        store = self.store
        stage = store.stage  # looked up once: the store may be a wrapper that forwards each lookup
        usual_body = form.usual_body
        for entry in entries:
            if entry.error is None:
                # Nearly always: the part as the sender writes it, whole in the buffer.
                body = usual_body(entry.id, entry.size)
                if body is not None:
                    outcome = self._stage(stage, store, body, client, entry, staged)
                    if isinstance(outcome, str):
                        results[entry.id] = _rejected(outcome)
                    else:
                        staged.append(outcome)
                    continue
            part = next(parts, None)
            if part is None:
                raise ValidationError(f"no part for message {entry.id!r}: {_ORDER}")
            name = part_name(part)
            if name != entry.id:
                raise ValidationError(
                    f"part {name!r} where meta expects message {entry.id!r}: {_ORDER}")
            if entry.error:
                results[entry.id] = _rejected(entry.error)
                continue
            outcome = self._stage(stage, store, part.stream, client, entry, staged)
            if isinstance(outcome, str):
                results[entry.id] = _rejected(outcome)
            else:
                staged.append(outcome)
        if next(parts, None) is not None:
            raise ValidationError(f"more parts than the {len(entries)} messages in meta")

    def _stage(self, stage, store, body, client, entry, batch):
        """The staged message (by ``stage``, ``store``'s), or why it is
        rejected; ``body`` is a part's stream or its bytes. The rest of a
        refused part is skipped by the form when it moves to the next part."""
        try:
            staged = stage(entry.channel, entry.id, body, priority=entry.priority,
                           client=client, limit=self.message_limit, batch=batch)
        except TooLarge as e:
            return str(e)
        if staged.size != entry.size:
            store.discard(staged)
            return f"body has {staged.size} bytes, meta says {entry.size}"
        return staged

    def _publish_all(self, staged, results):
        ids = [s.id for s in staged]
        # The store publishes them all (on JetStream with every ack in flight at
        # once) and makes them durable before it returns.
        for message_id, status in zip(ids, self.store.publish_many(staged)):
            results[message_id] = {"status": status}
