"""Certificate subjects, as the receiver compares them to name a client.

``[receiver.clients.NAME] cert_subject`` is written as ``openssl x509 -noout
-subject -nameopt RFC2253`` prints it (RFC 4514: the most specific part
first, ``CN=web-1,O=Example Shop``); a client certificate's subject comes
from Python's ssl module. Both become the same key: a tuple of relative
distinguished names, each a sorted tuple of (TYPE, value), attribute types
by their short upper-case names."""

import re

#: The long names of Python's ssl module, by the short names RFC 4514 uses.
_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
          "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID"}
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+")
_HEX = "0123456789abcdefABCDEF"


def _type(name):
    return _SHORT.get(name, name).upper()


def parse(text):
    """The key of subject ``text`` (RFC 4514); ValueError saying what is wrong."""
    rdns = []
    for part in _split(text, ","):
        rdn = []
        for pair in _split(part, "+"):
            name, eq, value = pair.partition("=")
            name = name.strip()
            if not eq or not _TYPE.fullmatch(name):
                raise ValueError(f"expected TYPE=value parts such as CN=web-1, got {pair!r}")
            if value.lstrip().startswith("#"):
                raise ValueError(f"{name}: hexadecimal values are not supported")
            rdn.append((_type(name), _unescape(value.strip())))
        rdns.append(tuple(sorted(rdn)))
    return tuple(rdns)


def of_peer(subject):
    """The key of a certificate's subject as ``SSLSocket.getpeercert()``
    gives it (least specific first, the reverse of RFC 4514's order)."""
    return tuple(tuple(sorted((_type(k), v) for k, v in rdn)) for rdn in reversed(subject))


def render(key):
    """A key as RFC 4514 text, for logs and error messages."""
    return ",".join("+".join(f"{k}={v}" for k, v in rdn) for rdn in key)


def _split(text, sep):
    """``text`` split at every ``sep`` that no backslash escapes."""
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(value):
    out, i = bytearray(), 0
    while i < len(value):
        pair = value[i + 1:i + 3]
        if value[i] == "\\" and len(pair) == 2 and all(h in _HEX for h in pair):
            out.append(int(pair, 16))  # \XX: one byte of UTF-8
            i += 3
        elif value[i] == "\\" and i + 1 < len(value):
            out += value[i + 1].encode()
            i += 2
        else:
            out += value[i].encode()
            i += 1
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{value!r}: escaped bytes that are not UTF-8") from None
