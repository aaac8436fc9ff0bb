"""The PHP serialize() reader: what PHP writes round-trips, everything else is
refused with PhpSerializeError and nothing but it, in linear time."""

import shutil
import subprocess
import time

import hypothesis
import hypothesis.strategies as st
import pytest

from dropr.legacy import phpser

keys = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.text(max_size=20))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
                    st.text(max_size=50))
values = st.recursive(scalars, lambda inner: st.dictionaries(keys, inner, max_size=5),
                      max_leaves=20)


def normal(value):
    """``value`` as PHP holds it: numeric string keys are integers."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out[phpser._php_key(k)] = normal(v)
        return out
    return value


@hypothesis.given(values)
def test_what_dumps_writes_loads_reads_back(value):
    hypothesis.assume(len({phpser._php_key(k) for k in value}) == len(value)
                      if isinstance(value, dict) else True)
    try:
        data = phpser.dumps(value)
    except TypeError:
        return
    try:
        assert phpser.loads(data, max_depth=64) == normal(value)
    except phpser.PhpSerializeError as e:
        assert "twice" in str(e)  # two keys that PHP takes for one


@hypothesis.given(st.binary(max_size=200))
@hypothesis.settings(max_examples=500)
def test_any_bytes_are_read_or_refused_with_its_error_alone(data):
    try:
        phpser.loads(data)
    except phpser.PhpSerializeError:
        pass


@hypothesis.given(values, st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_mutated_data_is_read_or_refused_with_its_error_alone(value, at, junk):
    data = phpser.dumps(value)
    at = min(at, len(data))
    try:
        phpser.loads(data[:at] + junk + data[at:], max_depth=64)
    except phpser.PhpSerializeError:
        pass


@pytest.mark.parametrize("data", [
    b'a:1:{i:0;' * 5000 + b"N;" + b"}" * 5000,                   # deep: refused at depth 4
    b'a:100000:{' + b"i:0;N;" * 100_000 + b"}",                   # one key 100,000 times
    b's:5000000:"' + b"x" * 5_000_000 + b'";',                    # one long string
    b'a:1000000:{' + b"".join(b"i:%d;s:0:\"\";" % i for i in range(400_000)),  # cut off
])
def test_large_hostile_input_is_dealt_with_in_linear_time(data):
    started = time.process_time()
    try:
        phpser.loads(data, max_items=1_000_000)
    except phpser.PhpSerializeError:
        pass
    assert time.process_time() - started < 1.0


@pytest.mark.skipif(shutil.which("php") is None, reason="needs php (Debian package php-cli)")
@pytest.mark.process
def test_php_reads_what_dumps_writes_and_writes_what_loads_reads():
    value = {"9_1796024531-36079900_abc+/=_Y29tbW9u": {"inqueue": True}, "7": {"inqueue": False},
             "ünïcode": None, "n": -12}
    code = ("$v = unserialize(stream_get_contents(STDIN), ['allowed_classes' => false]);"
            "echo serialize($v);")
    result = subprocess.run(["php", "-r", code], input=phpser.dumps(value), capture_output=True,
                            timeout=30)
    assert result.returncode == 0 and result.stdout == phpser.dumps(value)
    assert phpser.loads(result.stdout) == normal(value)
