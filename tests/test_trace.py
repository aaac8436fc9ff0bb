"""``dropr trace ID`` in words: one line per side, what the side knows or
that it knows nothing. No receiver is asked: the peer named by the spool file
is not configured, and no peer is configured at all."""

import io

from dropr import config as config_mod
from dropr.admin.trace import EXIT_KNOWN, EXIT_UNKNOWN, trace
from dropr.spool import Spool, SpoolName


def test_trace_in_words_says_what_the_spool_knows_and_that_the_receiver_is_unknown(tmp_path):
    config = config_mod.from_dict({"client": {"spool": str(tmp_path / "spool")}})
    Spool(config.client.spool, fsync=False).create().put(
        b"hello", SpoolName(5, "M0001", "away", "common"))
    out = io.StringIO()
    assert trace(config, "M0001", out=out) == EXIT_KNOWN
    assert out.getvalue().splitlines() == [
        "message M0001",
        "  here: state queue, peer away, channel common, priority 5, size 5, attempts 0",
        "  receiver: unknown",
    ]


def test_trace_in_words_of_a_message_no_side_knows(tmp_path):
    config = config_mod.from_dict({"client": {"spool": str(tmp_path / "spool")}})
    Spool(config.client.spool, fsync=False).create()
    out = io.StringIO()
    assert trace(config, "M0002", out=out) == EXIT_UNKNOWN
    assert out.getvalue().splitlines() == [
        "message M0002",
        "  here: not in this host's spool (sent and forgotten, or never put here)",
        "  receiver: unknown",
    ]
