"""``dropr trace ID``: where a message is now and what happened to it, on
this host's spool and on its peer's receiver (``GET
/v1/channels/{channel}/messages/{id}``: status only, never the body)."""

import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

from dropr import ids
from dropr.errors import DroprError
from dropr.peers import Peers
from dropr.spool import Spool, parse

EXIT_KNOWN, EXIT_UNKNOWN = 0, 1


def spool_side(spool, message_id):
    """What this host's spool knows of ``message_id`` (a dict), or None."""
    found = spool.locate(message_id)
    if found is None:
        return None
    state, path = found
    name = parse(path.name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    put_ms = ids.timestamp_ms(name.id)
    info = {"state": state, "peer": name.peer, "channel": name.channel,
            "priority": name.priority, "size": st.st_size if st else None,
            "attempts": name.attempts,
            "next_attempt": name.due_ms / 1000 if name.due_ms else None,
            "expires": name.expires_ms / 1000 if name.expires_ms else None,
            "put_at": put_ms / 1000 if put_ms is not None else None,
            "sent_at": st.st_ctime if st and state == "sent" else None,
            "reason": None}
    if state == "dead":
        info["reason"] = spool.reason(name).strip() or None
    elif state in ("deferred", "queue") and name.attempts:
        info["reason"] = Peers(spool).state(name.peer).get("error")  # the peer's last failure
    return info


def store_side(config, peer, channel, message_id):
    """(what the peer's receiver knows of the message or None, an error or None)."""
    peer_config = config.peer(peer)
    path = (f"/v1/channels/{urllib.parse.quote(channel)}/messages/{message_id}" if channel
            else f"/v1/messages/{message_id}")
    headers = {"Accept": "application/json"}
    token = config.token_of(peer_config)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    errors = []
    for url in peer_config.urls or (peer_config.url,):
        context = None
        if url.startswith("https://"):
            context = ssl.create_default_context(
                cafile=str(peer_config.ca_file) if peer_config.ca_file else None)
        request = urllib.request.Request(url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=peer_config.timeout,
                                        context=context) as r:
                return json.load(r), None
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None, None
            errors.append(f"{url}: HTTP {e.code}")
        except (OSError, ValueError) as e:
            errors.append(f"{url}: {e}")
    return None, "; ".join(errors)


def trace(config, message_id, *, channel=None, peer=None, json_out=False, out=sys.stdout):
    """Print where ``message_id`` is; EXIT_KNOWN if either side knows it."""
    spool = Spool(config.client.spool, fsync=False)
    mine = spool_side(spool, message_id)
    channel = channel or (mine or {}).get("channel")
    peers = [peer or (mine or {}).get("peer")] if (peer or mine) else sorted(config.peers)
    theirs, errors = None, []
    for name in peers:
        try:
            theirs, error = store_side(config, name, channel, message_id)
        except DroprError as e:
            theirs, error = None, str(e)
        if error:
            errors.append(f"peer {name}: {error}")
        if theirs is not None:
            theirs["peer"] = name
            break
    if json_out:
        print(json.dumps({"id": message_id, "spool": mine, "store": theirs}), file=out)
    else:
        _human(message_id, mine, theirs, out)
    for error in errors:
        print(f"dropr: could not ask the receiver: {error}", file=sys.stderr)
    return EXIT_KNOWN if (mine or theirs) else EXIT_UNKNOWN


def _human(message_id, mine, theirs, out):
    print(f"message {message_id}", file=out)
    _side("here", mine, "not in this host's spool (sent and forgotten, or never put here)", out)
    _side("receiver", theirs, "unknown", out)


def _side(where, known, unknown, out):
    """One line: what ``where`` knows (its fields that have a value), or ``unknown``."""
    if known:
        print(f"  {where}: " + ", ".join(f"{k} {v}" for k, v in known.items() if v is not None),
              file=out)
    else:
        print(f"  {where}: {unknown}", file=out)
