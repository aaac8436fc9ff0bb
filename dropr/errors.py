"""The one exception hierarchy of dropr.

Every error that dropr raises on purpose is a :class:`DroprError`. Callers that
can carry on after a passing fault (a peer that is down, a full disk that may
drain) catch :class:`TransientError`; anything else ends the operation.
The receiver maps these classes to HTTP status codes in one place
(``dropr.receiver.errors``).
"""


class DroprError(Exception):
    """Base of every error dropr raises on purpose."""


class ConfigError(DroprError):
    """The configuration file is missing, malformed, or has a bad key or value."""


class ValidationError(DroprError, ValueError):
    """A name, id, priority or other input does not follow dropr's grammar."""


class UnknownPeer(ValidationError):
    """A message was addressed to a peer that the config does not name."""


class TooLarge(ValidationError):
    """A message or batch is over a configured size limit."""


class Unauthorized(DroprError):
    """A request to the receiver carries no valid bearer token (HTTP 401).

    ``error`` is the RFC 6750 error code for the ``WWW-Authenticate`` answer
    (``None`` when no credentials came at all)."""

    def __init__(self, message, *, error=None):
        super().__init__(message)
        self.error = error


class Forbidden(DroprError):
    """The receiver knows the client but does not let it do this (HTTP 403)."""


class TransientError(DroprError):
    """A fault that may pass: retry later."""


class SpoolFull(TransientError):
    """The disk under the client spool is full, or the spool is over its limit."""


class QueueFull(SpoolFull):
    """The spool holds as many messages or bytes as its configured limit allows."""


class StoreFull(TransientError):
    """The disk under the server store is (nearly) full. ``path`` is the
    store's, for the log (an answer to a client does not show it)."""

    def __init__(self, message, *, path=None):
        super().__init__(message)
        self.path = path


class StoreUnavailable(TransientError):
    """The server store cannot take or give messages now: a JetStream cluster
    that does not answer, times out, or is electing a leader (HTTP 503)."""


class PeerError(TransientError):
    """A peer could not be reached or answered with a transient failure."""


class Rejected(DroprError):
    """The receiver refused a message for good; it will never be accepted."""


class BatchRefused(DroprError):
    """The receiver refused a whole batch as sent (HTTP 4xx other than 408/429).

    Permanent for that exact batch, not for its messages: the sender splits it
    and tries the halves, so one bad message cannot sink the rest."""

    def __init__(self, status, code, message):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code


class CallFailed(DroprError):
    """A direct message (``Client.call``) got no answer from the responder:
    ``status`` is the HTTP status (None when no HTTP answer came) and ``code``
    the receiver's error code (``unreachable``, ``timeout`` or ``transport``
    when no HTTP answer came)."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code


class Unreadable(DroprError):
    """A spooled message file cannot be read by the sender (gone, or no permission)."""

    def __init__(self, message_id, reason):
        super().__init__(f"message {message_id}: cannot read its spool file: {reason}")
        self.message_id = message_id


class AccessDenied(DroprError):
    """This user lacks a permission on a spool or store folder: ``folder`` and
    the ``permission`` missing are named, with what to do about it."""

    def __init__(self, folder, permission, hint=""):
        user = _user_name()
        text = f"{folder}: permission denied: {user} needs {permission} permission here"
        super().__init__(f"{text}; {hint}" if hint else text)
        self.folder = folder
        self.permission = permission


class NotAMessage(DroprError):
    """A spool entry that is not a regular file with one link (a symlink, a
    folder, a FIFO, a hard link): never read, uploaded or moved as a message."""


class NotFound(DroprError):
    """No message, channel or process of that name."""


class AlreadyRunning(DroprError):
    """A daemon is already running with the same pidfile, or a consumer with the same name."""


class NotRunning(DroprError):
    """No daemon is running for this config."""


class BenchError(DroprError):
    """``dropr bench`` cannot set up what it measures on, or a scenario failed."""


def _user_name():
    import os
    import pwd

    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
