"""Wires the receiver's Falcon app together: routes, error handlers, media
options. Validation lives in the resources, files in the store."""

import threading
import time

import falcon
from falcon.media.multipart import MultipartFormHandler, MultipartParseOptions

from dropr.ids import IdGenerator
from dropr.receiver import errors
from dropr.receiver.batch import META_BYTES_PER_MESSAGE, BatchResource
from dropr.receiver.health import HealthResource
from dropr.receiver.messages import MessagesResource
from dropr.store import Store


def create_app(config, *, store=None, new_id=None, clock=time.time):
    """The receiver's WSGI app for ``config``.

    ``store`` defaults to the filesystem store at ``[receiver] store``;
    ``new_id`` makes ids for plain POSTs without an Idempotency-Key (default: a
    ULID generator on ``clock``). Built in each gunicorn worker process."""
    limits = config.receiver
    if store is None:
        store = Store(limits.store, fsync=limits.fsync, clock=clock)
    app = falcon.App(media_type=falcon.MEDIA_JSON)
    handlers = app.req_options.media_handlers
    handlers[falcon.MEDIA_MULTIPART] = MultipartFormHandler(_multipart_options(limits))
    app.add_route("/v1/batch", BatchResource(store, limits))
    new_id = _locked(new_id or IdGenerator(clock=clock))
    app.add_route("/v1/channels/{channel}/messages", MessagesResource(store, limits, new_id=new_id))
    app.add_route("/v1/health", HealthResource())
    errors.install(app)
    return app


def _multipart_options(limits):
    options = MultipartParseOptions()
    options.max_body_part_count = limits.max_batch_messages + 1  # the meta part, then one each
    # Only the meta part is ever buffered; message parts stream into the store.
    options.max_body_part_buffer_size = (64 * 1024
                                         + META_BYTES_PER_MESSAGE * limits.max_batch_messages)
    return options


def _locked(new_id):
    """``new_id`` made safe for the worker's request threads: an id generator
    keeps state, and two threads reading it at once could make the same id."""
    lock = threading.Lock()

    def locked():
        with lock:
            return new_id()
    return locked
