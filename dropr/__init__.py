"""dropr: a store-and-forward message queue. The filesystem is the database.

Producers use :class:`Client`; consumers use :func:`open_store`, which gives
the server store the config's ``[store] backend`` names (a filesystem
:class:`Store`, or a JetStream stream).
"""

from dropr.client import Client
from dropr.errors import (
    CallFailed,
    ConfigError,
    DroprError,
    PeerError,
    QueueFull,
    Rejected,
    SpoolFull,
    StoreFull,
    TooLarge,
    TransientError,
    UnknownPeer,
    ValidationError,
)
from dropr.store import Message, Store, open_store

__version__ = "0.1.0"

__all__ = [
    "CallFailed",
    "Client",
    "ConfigError",
    "DroprError",
    "Message",
    "PeerError",
    "QueueFull",
    "Rejected",
    "SpoolFull",
    "Store",
    "StoreFull",
    "TooLarge",
    "TransientError",
    "UnknownPeer",
    "ValidationError",
    "open_store",
]
