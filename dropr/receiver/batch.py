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
import json

import falcon

from dropr import names
from dropr.errors import TooLarge, ValidationError
from dropr.faults import crash_point
from dropr.receiver.auth import check_channel
from dropr.receiver.limits import RECHECK_BYTES, check_json_depth
from dropr.receiver.multipart import FormReader, boundary_of

REJECTED = "rejected"  # "stored" and "duplicate" come from the store
#: Generous bytes of meta JSON per message (id and channel at most 64 each),
#: used to bound how much of the meta part is read into memory.
META_BYTES_PER_MESSAGE = 512
#: meta is an object holding a list of objects; anything deeper is refused
#: before it is parsed (a parser recurses once per level).
META_MAX_DEPTH = 8
META_KEYS = frozenset(("client", "messages"))
MESSAGE_KEYS = frozenset(("id", "channel", "priority", "size"))
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
    meta = _parse(_read_meta_bytes(part, meta_bytes_max(max_messages)))
    if not isinstance(meta, dict) or not isinstance(meta.get("messages"), list):
        raise ValidationError('meta must be an object with "client" and a "messages" list')
    _no_unknown_keys(meta, META_KEYS, "meta")
    client = names.check_name(meta.get("client"), "client name")
    messages = meta["messages"]
    if len(messages) > max_messages:
        raise TooLarge(f"batch of {len(messages)} messages is over the limit of {max_messages}")
    entries = [_entry(i, m) for i, m in enumerate(messages)]
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


def _parse(data):
    """meta's JSON: UTF-8 and nothing else (``json.loads`` would also guess
    UTF-16 and UTF-32), and no deeper than META_MAX_DEPTH."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValidationError(f"meta is not UTF-8: {e.reason} at byte {e.start}") from None
    check_json_depth(data, META_MAX_DEPTH, "meta")
    try:
        return json.loads(text)
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


def _entry(i, message):
    if not isinstance(message, dict):
        raise ValidationError(f"meta messages[{i}] must be an object")
    _no_unknown_keys(message, MESSAGE_KEYS, f"meta messages[{i}]")
    entry = Entry(names.check_id(message.get("id"), f"meta messages[{i}] id"))
    try:
        entry.channel = names.check_name(message.get("channel"), "channel")
        entry.priority = names.check_priority(message.get("priority"))
        entry.size = _check_size(message.get("size"))
    except ValidationError as e:
        entry.error = str(e)
    return entry


def _check_size(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
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
        for entry in entries:
            if entry.channel is not None:
                check_channel(req, entry.channel)  # 403 for the whole batch: nothing stored
        results = dict.fromkeys(e.id for e in entries)  # answers in meta's order
        staged = collections.deque()
        try:
            self._stage_all(parts, client, entries, results, staged)
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

    def _stage_all(self, parts, client, entries, results, staged):
        for entry in entries:
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
            outcome = self._stage(part, client, entry)
            if isinstance(outcome, str):
                results[entry.id] = _rejected(outcome)
            else:
                staged.append(outcome)
        if next(parts, None) is not None:
            raise ValidationError(f"more parts than the {len(entries)} messages in meta")

    def _stage(self, part, client, entry):
        """The staged message, or why it is rejected. The rest of a refused
        part is skipped by the form when it moves to the next part."""
        try:
            staged = self.store.stage(entry.channel, entry.id, part.stream,
                                      priority=entry.priority, client=client,
                                      limit=self.message_limit)
        except TooLarge as e:
            return str(e)
        if staged.size != entry.size:
            self.store.discard(staged)
            return f"body has {staged.size} bytes, meta says {entry.size}"
        return staged

    def _publish_all(self, staged, results):
        ids = [s.id for s in staged]
        # The store publishes them all (on JetStream with every ack in flight at
        # once) and makes them durable before it returns.
        for message_id, status in zip(ids, self.store.publish_many(staged)):
            results[message_id] = {"status": status}
