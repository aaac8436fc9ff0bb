"""Wires the receiver's Falcon app together: routes, error handlers, media
options. Validation lives in the resources, files in the store."""

import logging
import threading
import time

import falcon
from falcon.media.multipart import MultipartFormHandler, MultipartParseOptions

from dropr.ids import IdGenerator
from dropr.receiver.legacy import LegacyUploadResource
from dropr.receiver import errors
from dropr.receiver.auth import Authenticate, Clients
from dropr.receiver.batch import BatchResource, meta_bytes_max
from dropr.receiver.calls import CallError, CallsResource, Slots, handle_call_error, slots_folder
from dropr.receiver.health import HealthResource, ReadyResource
from dropr.receiver.limits import BodyTimeout, DiskFloor
from dropr.receiver.messages import MessagesResource
from dropr.receiver.metrics import CountingStore, Metrics, MetricsResource
from dropr.receiver.openapi import OpenAPIResource
from dropr.receiver.strict import Framing
from dropr.receiver.status import MessageStatusResource
from dropr.config import short_window_note
from dropr.store import open_store


def create_app(config, *, store=None, new_id=None, clock=time.time, clients=None):
    """The receiver's WSGI app for ``config``.

    ``store`` defaults to the one ``[store] backend`` names (the filesystem
    store at ``[receiver] store``, or a JetStream stream);
    ``new_id`` makes ids for plain POSTs without an Idempotency-Key (default: a
    ULID generator on ``clock``); ``clients`` are the clients known by token
    (default: loaded from ``config``, which reads their token files). Built
    in each gunicorn worker process."""
    limits = config.receiver
    if store is None:
        store = open_store(config, clock=clock)
        note = short_window_note(config)
        if note:
            logging.getLogger("dropr.receiver").warning("%s", note)
    app = falcon.App(media_type=falcon.MEDIA_JSON)
    metrics = Metrics(store, min_free_bytes=limits.min_free_bytes,
                      min_free_inodes=limits.min_free_inodes)
    app.add_middleware(metrics)  # first in, last out: it times all the others
    clients = Clients.load(config) if clients is None else clients
    # Before any byte of a body:
    app.add_middleware(Authenticate(clients, bind=limits.bind, basic_path=limits.legacy_path))
    app.add_middleware(Framing())  # the raw path and the body's length, for every route
    ready = ReadyResource(store, min_free_bytes=limits.min_free_bytes,
                          min_free_inodes=limits.min_free_inodes)
    store = CountingStore(store, metrics)
    app.add_middleware(BodyTimeout(limits.body_timeout))
    handlers = app.req_options.media_handlers
    handlers[falcon.MEDIA_MULTIPART] = MultipartFormHandler(_multipart_options(limits))
    floor = DiskFloor(store.root, limits.min_free_bytes, inodes=limits.min_free_inodes)
    app.add_route("/v1/batch", BatchResource(store, limits, floor=floor))
    new_id = _locked(new_id or IdGenerator(clock=clock))
    app.add_route("/v1/channels/{channel}/messages",
                  MessagesResource(store, limits, new_id=new_id, floor=floor))
    calls = CallsResource(limits.responders, limits, new_id=new_id,
                          slots=Slots(slots_folder(config)), workdir=config.path.parent,
                          metrics=metrics)
    app.add_route("/v1/channels/{channel}/calls", calls)
    if limits.legacy_path:
        app.add_route(limits.legacy_path, LegacyUploadResource(store, limits, floor=floor))
    status = MessageStatusResource(store)
    app.add_route("/v1/channels/{channel}/messages/{message_id}", status)
    app.add_route("/v1/messages/{message_id}", status)
    app.add_route("/v1/health", HealthResource())
    app.add_route("/v1/ready", ready)
    app.add_route("/v1/openapi.json", OpenAPIResource())
    app.add_route("/metrics", MetricsResource(metrics))
    errors.install(app)
    app.add_error_handler(CallError, handle_call_error)
    return app


def _multipart_options(limits):
    options = MultipartParseOptions()
    options.max_body_part_count = limits.max_batch_messages + 1  # the meta part, then one each
    # Only the meta part is ever buffered; message parts stream into the store.
    options.max_body_part_buffer_size = meta_bytes_max(limits.max_batch_messages)
    return options


def _locked(new_id):
    """``new_id`` made safe for the worker's request threads: an id generator
    keeps state, and two threads reading it at once could make the same id."""
    lock = threading.Lock()

    def locked():
        with lock:
            return new_id()
    return locked
