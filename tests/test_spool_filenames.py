"""The spool file-name codec round-trips every peer, channel, priority and id,
and refuses names it never makes."""

import pytest
from hypothesis import given, strategies as st

from dropr import names
from dropr.errors import ValidationError
from dropr.ids import IdGenerator
from dropr.spool.filenames import SpoolName, parse, quote, unquote

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,40}", fullmatch=True)
any_text = st.text(max_size=30)
stamps = st.integers(min_value=0, max_value=2**48)


@given(text=st.text())
def test_quote_round_trips_any_string(text):
    encoded = quote(text)
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-%")
    assert unquote(encoded) == text


@given(priority=st.integers(0, 9), message_id=ids, peer=any_text, channel=any_text,
       attempts=st.integers(0, 10**6), due=stamps, expires=stamps)
def test_spool_name_round_trips(priority, message_id, peer, channel, attempts, due, expires):
    name = SpoolName(priority, message_id, peer, channel, attempts, due, expires)
    extras = [f"{k}{v}" for k, v in (("a", attempts), ("d", due), ("e", expires)) if v]
    if len(".".join([str(priority), message_id, quote(peer), quote(channel), *extras])) > 255:
        with pytest.raises(ValidationError, match="255 bytes"):
            str(name)
        return
    text = str(name)
    assert "/" not in text and "\0" not in text and text not in (".", "..")
    assert parse(text) == name


@given(a=st.tuples(st.integers(0, 9), ids), b=st.tuples(st.integers(0, 9), ids))
def test_name_order_is_priority_then_id(a, b):
    na, nb = (str(SpoolName(p, i, "local", "common")) for p, i in (a, b))
    if a[0] != b[0]:
        assert (na < nb) == (a[0] < b[0])


def test_ids_sort_by_creation_time():
    clock = iter([1.0, 1.0, 1.0, 2.5]).__next__
    gen = IdGenerator(clock=clock)
    made = [gen() for _ in range(4)]
    assert made == sorted(made) and len(set(made)) == 4
    assert all(len(i) == 26 and names.check_id(i) for i in made)


def test_ids_are_the_whole_value_spelled_out_across_every_carry():
    """Ids reuse the characters that did not change since the last one: across
    the 10-bit carries of the random part, and in a new millisecond whose
    random part starts where the last one's upper bits were, every id is
    still the full 130-bit value in Crockford's base32, one more than the last."""
    from dropr.ids import _ALPHABET

    def value(text):
        v = 0
        for c in text:
            v = v * 32 + _ALPHABET.index(c)
        return v

    starts = iter([0x3FD.to_bytes(10, "big"), 0x7FE.to_bytes(10, "big")])
    clock = iter([5.0] * 6 + [5.0015] * 9).__next__
    gen = IdGenerator(clock=clock, urandom=lambda n: next(starts))
    made = [gen() for _ in range(15)]
    assert made == sorted(made) and len(set(made)) == 15
    values = [value(i) for i in made]
    assert values[0] == 5000 << 80 | 0x3FD
    assert all(b == a + 1 for a, b in zip(values[:5], values[1:6]))  # over 0x3FF → 0x400
    assert values[6] == 5001 << 80 | 0x7FE  # the same upper bits as the last, a new ms
    assert all(b == a + 1 for a, b in zip(values[6:-1], values[7:]))  # over 0x7FF → 0x800


@pytest.mark.parametrize("bad", [
    "", "5", "5.ID.peer", "x.ID.peer.chan", "55.ID.peer.chan", "5.bad!id.peer.chan",
    "5.ID.pe%2.chan", "5.ID.peer.chan.q3", "5.ID.peer.chan.a", "5.ID.peer.chan.d1.a2",
    "5.ID.pe%2e.chan", "5.ID.peer.chan.reason", "\u0665.ID.peer.chan",
])
def test_parse_refuses_names_it_never_makes(bad):
    with pytest.raises(ValidationError):
        parse(bad)


def test_too_long_name_is_refused():
    with pytest.raises(ValidationError, match="255 bytes"):
        str(SpoolName(5, "A", "p" * 100, "\u00e9" * 60))


def test_shell_format_parses():
    assert parse("5.20261127-123.local.common") == SpoolName(5, "20261127-123", "local", "common")
