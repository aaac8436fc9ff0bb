"""The checks of single config values: :func:`key` declares a field's default,
bounds and kind; each kind has a checker that turns the raw TOML value into
the typed one or raises :class:`~dropr.errors.ConfigError` naming the key."""

import dataclasses
import os
from pathlib import Path

from dropr import certs, names
from dropr.errors import ConfigError, ValidationError

MiB = 1024 * 1024
TOKEN_MAX = 4096
#: A token shorter than this is refused: a guessable token protects nothing
#: (12 random characters carry 72 bits or more; `openssl rand -hex 32` makes 64).
TOKEN_MIN = 12


def key(default, lo=None, hi=None, *, kind=None, secret=False):
    """A config key with its default and inclusive bounds (``None``: unbounded).
    A ``secret`` key (a token) is left out of the section's repr, so that a
    config written to a log never shows it."""
    return dataclasses.field(default=default, repr=not secret,
                             metadata={"lo": lo, "hi": hi, "kind": kind})


def _convert(field, raw, label, base):
    meta = field.metadata
    kind = meta["kind"] or type(field.default).__name__
    check = _CHECKS.get(kind)
    if check is None:
        raise AssertionError(f"no check for config kind {kind}")
    return check(raw, label, meta, base)


def _want(ok, raw, label, expected):
    if not ok:
        raise ConfigError(f"{label}: expected {expected}, got {raw!r}")


def _check_bounds(value, label, meta):
    lo, hi = meta["lo"], meta["hi"]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"from {lo}" + (f" to {hi}" if hi is not None else " up")
        raise ConfigError(f"{label}: {value} out of range: expected a value {span}")
    return value


def _check_int(raw, label, meta, base):
    _want(isinstance(raw, int) and not isinstance(raw, bool), raw, label, "an integer")
    return _check_bounds(raw, label, meta)


def _check_float(raw, label, meta, base):
    ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
    _want(ok, raw, label, "a number")
    return _check_bounds(float(raw), label, meta)


def _check_bool(raw, label, meta, base):
    _want(isinstance(raw, bool), raw, label, "true or false")
    return raw


def _check_str(raw, label, meta, base):
    _want(isinstance(raw, str), raw, label, "a string")
    return raw


def _check_path(raw, label, meta, base):
    _want(isinstance(raw, str), raw, label, "a path string")
    if not raw:
        return None
    p = Path(raw).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _check_group(raw, label, meta, base):
    # A POSIX portable user/group name; whether the group exists is checked
    # where the spool is made (a producer's host need not know it).
    ok = isinstance(raw, str) and len(raw) <= 32 and all(
        c.isascii() and (c.isalnum() or c in "._-") for c in raw) and not raw.startswith("-")
    _want(ok, raw, label, "a group name (letters, digits, '.', '_', '-')")
    return raw


def _check_name(raw, label, meta, base):
    _want(isinstance(raw, str), raw, label, "a string")
    if raw:
        try:
            names.check_name(raw, "name")
        except ValidationError as e:
            raise ConfigError(f"{label}: {e}") from None
    return raw


def _check_names(raw, label, meta, base):
    if raw is None:
        return None
    _want(isinstance(raw, list), raw, label, "a list of channel names")
    try:
        return tuple(dict.fromkeys(names.check_name(n, "channel") for n in raw))
    except ValidationError as e:
        raise ConfigError(f"{label}: {e}") from None


def _check_token(raw, label, meta, base):
    # What an Authorization header can carry: visible ASCII, no spaces.
    ok = isinstance(raw, str) and len(raw) <= TOKEN_MAX and all("!" <= c <= "~" for c in raw)
    if not ok:  # a secret: the value is not shown
        raise ConfigError(f"{label}: expected a token of at most {TOKEN_MAX} visible ASCII "
                          "characters, without spaces")
    if raw and len(raw) < TOKEN_MIN:  # "" is no token at all
        raise ConfigError(f"{label}: a token of {len(raw)} characters is too easy to guess: "
                          f"expected at least {TOKEN_MIN} (e.g. from `openssl rand -hex 32`)")
    return raw


def _check_subject(raw, label, meta, base):
    _want(isinstance(raw, str), raw, label, "a certificate subject such as 'CN=web-1,O=Shop'")
    if raw:
        try:
            certs.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{label}: {e}") from None
    return raw


def _check_url(raw, label, meta, base):
    ok = isinstance(raw, str) and raw.startswith(("http://", "https://")) and len(raw) > 8
    _want(ok or raw == "", raw, label, "an http:// or https:// URL")
    return raw.rstrip("/")


def _check_urls(raw, label, meta, base):
    ok = isinstance(raw, (list, tuple)) and all(
        isinstance(u, str) and u.startswith(("http://", "https://")) and len(u) > 8 for u in raw)
    _want(ok, raw, label, "a list of http:// or https:// URLs")
    urls = tuple(dict.fromkeys(u.rstrip("/") for u in raw))
    _want(len(urls) == len(raw), raw, label, "a list of different URLs")
    return urls


def _check_bind(raw, label, meta, base):
    ok = isinstance(raw, str) and (raw.startswith("unix:") or raw.rpartition(":")[2].isdigit())
    _want(ok, raw, label, "HOST:PORT or unix:PATH")
    return raw


def _check_host_port(raw, label, meta, base):
    host, _, port = raw.rpartition(":") if isinstance(raw, str) else ("", "", "")
    ok = raw == "" or (bool(host) and port.isdigit() and 1 <= int(port) <= 65535)
    _want(ok, raw, label, "HOST:PORT (e.g. \"127.0.0.1:9464\") or \"\" (off)")
    return raw


def _check_backend(raw, label, meta, base):
    _want(raw in ("files", "jetstream"), raw, label, "'files' or 'jetstream'")
    return raw


def _check_nats_urls(raw, label, meta, base):
    ok = isinstance(raw, (list, tuple)) and raw and all(
        isinstance(u, str) and u.startswith(("nats://", "tls://")) and len(u) > 7 for u in raw)
    _want(ok, raw, label, "a non-empty list of nats:// or tls:// URLs")
    return tuple(raw)


def _check_stream(raw, label, meta, base):
    # Stream names and subject tokens: no dots, wildcards or spaces.
    ok = isinstance(raw, str) and 0 < len(raw) <= 32 and all(
        c.isascii() and (c.isalnum() or c in "_-") for c in raw)
    _want(ok, raw, label, "1 to 32 letters, digits, '_' or '-'")
    return raw


def _check_command(raw, label, meta, base):
    ok = isinstance(raw, (list, tuple)) and all(isinstance(a, str) and a and "\0" not in a
                                               for a in raw)
    _want(ok, raw, label, "a list of strings: the program and its arguments")
    return tuple(raw)


def _check_media_type(raw, label, meta, base):
    ok = (isinstance(raw, str) and 0 < len(raw) <= 255 and raw.count("/") >= 1
          and all(" " <= c <= "~" for c in raw))
    _want(ok, raw, label, "a media type such as \"application/json\"")
    return raw


def _check_legacy_path(raw, label, meta, base):
    # A path of its own: not one of the API's, plain characters only.
    ok = isinstance(raw, str) and (raw == "" or (
        raw.startswith("/") and len(raw) <= 255 and "//" not in raw and "/../" not in raw + "/"
        and all(c.isascii() and (c.isalnum() or c in "/._-~") for c in raw)
        and not raw.startswith(("/v1/", "/metrics")) and raw not in ("/", "/v1")))
    _want(ok, raw, label, 'a path such as "/server/server.php" (not under /v1/), or "" for none')
    return raw


def _check_url_map(raw, label, meta, base):
    if raw == ():
        return ()
    _want(isinstance(raw, dict), raw, label, 'a table of "PHP peer URL" = "peer name"')
    for url, name in raw.items():
        _want(url.startswith(("http://", "https://")) and isinstance(name, str), raw, label,
              'a table of "PHP peer URL" = "peer name"')
        try:
            names.check_name(name, "peer name")
        except ValidationError as e:
            raise ConfigError(f"{label}: {e}") from None
    return tuple(raw.items())


def _check_level(raw, label, meta, base):
    levels = ("debug", "info", "warning", "error")
    _want(isinstance(raw, str) and raw.lower() in levels, raw, label, "one of " + ", ".join(levels))
    return raw.lower()


_CHECKS = {
    "int": _check_int,
    "float": _check_float,
    "bool": _check_bool,
    "str": _check_str,
    "path": _check_path,
    "name": _check_name,
    "group": _check_group,
    "names": _check_names,
    "token": _check_token,
    "url": _check_url,
    "urls": _check_urls,
    "bind": _check_bind,
    "subject": _check_subject,
    "host_port": _check_host_port,
    "level": _check_level,
    "backend": _check_backend,
    "nats_urls": _check_nats_urls,
    "stream": _check_stream,
    "command": _check_command,
    "media_type": _check_media_type,
    "url_map": _check_url_map,
    "legacy_path": _check_legacy_path,
}
