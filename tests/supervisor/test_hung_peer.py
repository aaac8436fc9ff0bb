"""A peer whose receivers all hang, under a real droprd: the sender keeps
reporting while it fails over from one hung URL to the next, so it is not
taken for a hung worker and killed, and the peer ends up marked down."""

import contextlib

import pytest

from dropr.client import Client
from tests.support import harness
from dropr.peers import Peers

pytestmark = pytest.mark.process

URLS = 14
TIMEOUT = 1.0


def test_failover_across_hung_urls_marks_the_peer_down_and_kills_no_sender(make_tree):
    # Trying all 14 URLs takes about 14 s: longer than one URL's timeouts plus
    # the slack (11.3 s), which was all a sender was allowed to stay silent.
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(harness.hung_listener()) for _ in range(URLS)]
        tree = make_tree(
            {"workers": {"sender": 1, "retry_scanner": 0, "reaper": 0},
             "supervisor": {"heartbeat_timeout": 3.0}},
            peers={"hung": {"urls": urls, "connect_timeout": 0.1, "timeout": TIMEOUT}})
        Client(tree.config).put(b"m", "hung")
        tree.start()
        spool = Client(tree.config).spool
        harness.wait_for(lambda: Peers(spool).state("hung"), URLS * TIMEOUT + 15,
                         what=f"peer marked down ({tree.log_tail()})")
        state = Peers(spool).state("hung")
        assert state["failures"] == 1 and state["error"].count("curl error 28") == URLS
        sender = tree.workers()["sender 1"]
        assert sender["state"] == "running" and sender["restarts"] == 0, tree.log_tail()
        assert spool.count("deferred") == 1
