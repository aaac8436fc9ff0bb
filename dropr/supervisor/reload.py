"""What a reload (``droprd reload``, SIGHUP) may change, and what it takes.

The supervisor re-reads the same config file. A file with errors is refused
and the running tree keeps its config. The keys that name the running
instance (the spool, whose path keys the SysV queues, and droprd's own
files) cannot change without a stop and start. Changed worker counts are
applied without touching the other workers; a change to any section the
workers read replaces every worker, gracefully; a change to a [supervisor]
key that the receiver's gunicorn was started with replaces the receiver.
"""

from dropr import config as config_mod
from dropr.errors import ConfigError
from dropr.workers.kinds import WORKER_SECTIONS

# Keys that name this running instance.
FIXED = (("client", "spool"), ("supervisor", "pidfile"), ("supervisor", "status_file"),
         ("supervisor", "log_file"))
# [supervisor] keys the receiver hands to its gunicorn when it starts.
RECEIVER_KEYS = ("stop_timeout", "log_level", "max_rss", "max_messages_per_life",
                 "recycle_jitter", "backoff_reset")


def load(current):
    """The config to run with after a reload of ``current``'s file; ConfigError
    if the file is bad or changes a key that needs a restart."""
    new = config_mod.load(current.path)
    for section, key in FIXED:
        if getattr(getattr(new, section), key) != getattr(getattr(current, section), key):
            raise ConfigError(f"{new.path}: [{section}] {key} cannot change by reload; "
                              "stop and start droprd")
    return new


def workers_affected(old, new):
    """Does the change from ``old`` to ``new`` touch what the workers read?"""
    return dict(old.peers) != dict(new.peers) or any(
        getattr(old, s) != getattr(new, s) for s in WORKER_SECTIONS)


def receiver_affected(old, new):
    """Does the change touch a [supervisor] key the receiver's gunicorn reads?"""
    return any(getattr(old.supervisor, k) != getattr(new.supervisor, k) for k in RECEIVER_KEYS)
