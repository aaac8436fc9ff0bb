"""PHP's ``serialize()`` format, the small part the PHP dropr speaks: arrays,
strings, integers, booleans and null.

Never a general unserializer: objects (``O:``, ``C:``), references (``r:``,
``R:``), enums (``E:``) and floats (``d:``) are refused, as are a string
length or an element count that disagrees with the bytes, a key given twice,
nesting past ``max_depth``, more than ``max_items`` values in all, and
anything after the value. One pass over the bytes, no regular expressions:
linear time whatever the input. Used by receiver workers on request bodies.
"""

from dropr.errors import ValidationError

#: Digits of an integer or a length: PHP's own fit in 19.
_MAX_DIGITS = 19


class PhpSerializeError(ValidationError):
    """The bytes are not the PHP serialize() subset dropr reads."""


def loads(data, *, max_depth=4, max_items=100_000):
    """The value ``data`` (bytes) holds: dict (an array, keys int or str), str,
    int, bool or None. Strings are UTF-8 (``PhpSerializeError`` otherwise)."""
    reader = _Reader(bytes(data), max_depth, max_items)
    value = reader.value(0)
    if reader.pos != len(reader.data):
        raise reader.error("bytes after the value")
    return value


def dumps(value):
    """``value`` (dict, str, int, bool or None) in PHP's serialize() format, as
    bytes. Keys that PHP would take as integers are written as integers."""
    out = []
    _dump(value, out)
    return b"".join(out)


def _dump(value, out):
    if value is None:
        out.append(b"N;")
    elif isinstance(value, bool):
        out.append(b"b:1;" if value else b"b:0;")
    elif isinstance(value, int):
        out.append(b"i:%d;" % value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b's:%d:"%s";' % (len(raw), raw))
    elif isinstance(value, dict):
        out.append(b"a:%d:{" % len(value))
        for key, item in value.items():
            _dump(_php_key(key), out)
            _dump(item, out)
        out.append(b"}")
    else:
        raise TypeError(f"cannot serialize {type(value).__name__} for PHP")


def _php_key(key):
    """The array key PHP makes of ``key``: a canonical decimal string is an int."""
    if isinstance(key, str):
        digits = key[1:] if key[:1] == "-" else key
        if 0 < len(digits) <= _MAX_DIGITS and digits.isascii() and digits.isdigit():
            number = int(key)
            if key == str(number) and -(1 << 63) <= number < (1 << 63):
                return number
    return key


class _Reader:
    def __init__(self, data, max_depth, max_items):
        self.data, self.pos = data, 0
        self.max_depth, self.items_left = max_depth, max_items

    def error(self, what):
        return PhpSerializeError(f"not PHP serialize() data dropr reads: {what} at byte {self.pos}")

    def value(self, depth):
        self.items_left -= 1
        if self.items_left < 0:
            raise self.error("too many values")
        tag = self.data[self.pos:self.pos + 2]
        if tag == b"N;":
            self.pos += 2
            return None
        self.pos += 2
        if tag == b"b:":
            flag = self.data[self.pos:self.pos + 2]
            if flag not in (b"0;", b"1;"):
                raise self.error("a boolean that is not 0 or 1")
            self.pos += 2
            return flag == b"1;"
        if tag == b"i:":
            return self.integer(b";")
        if tag == b"s:":
            return self.string()
        if tag == b"a:":
            return self.array(depth)
        self.pos -= 2
        kind = {b"O:": "an object", b"C:": "an object", b"r:": "a reference",
                b"R:": "a reference", b"E:": "an enum", b"d:": "a float"}.get(tag)
        raise self.error(f"{kind} (refused)" if kind else "an unknown type")

    def integer(self, end, *, signed=True):
        start = self.pos
        if signed and self.data[self.pos:self.pos + 1] == b"-":
            self.pos += 1
        digits_at = self.pos
        while self.pos < len(self.data) and 0x30 <= self.data[self.pos] <= 0x39:
            self.pos += 1
            if self.pos - digits_at > _MAX_DIGITS:
                raise self.error("a number too long")
        digits = self.data[digits_at:self.pos]
        if not digits or (len(digits) > 1 and digits[:1] == b"0"):
            raise self.error("a number that is not canonical")
        if self.data[self.pos:self.pos + len(end)] != end:
            raise self.error(f"no {end.decode()!r} after a number")
        self.pos += len(end)
        value = int(self.data[start:self.pos - len(end)])
        if not -(1 << 63) <= value < (1 << 63) or self.data[start:start + 2] == b"-0":
            raise self.error("a number out of PHP's range")
        return value

    def string(self):
        length = self.integer(b':"', signed=False)
        end = self.pos + length
        if end + 2 > len(self.data) or self.data[end:end + 2] != b'";':
            raise self.error("a string whose length disagrees with its bytes")
        raw = self.data[self.pos:end]
        self.pos = end + 2
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("a string that is not UTF-8") from None

    def array(self, depth):
        if depth >= self.max_depth:
            raise self.error("arrays nested too deep")
        count = self.integer(b":{", signed=False)
        if count > self.items_left:
            raise self.error("more elements than allowed")
        out = {}
        for _ in range(count):
            key = self.key()
            if key in out:
                raise self.error(f"the key {key!r} twice")
            out[key] = self.value(depth + 1)
        if self.data[self.pos:self.pos + 1] != b"}":
            raise self.error("an array whose count disagrees with its elements")
        self.pos += 1
        return out

    def key(self):
        tag = self.data[self.pos:self.pos + 2]
        self.pos += 2
        if tag == b"i:":
            return self.integer(b";")
        if tag == b"s:":
            return _php_key(self.string())
        self.pos -= 2
        raise self.error("an array key that is not an integer or a string")
