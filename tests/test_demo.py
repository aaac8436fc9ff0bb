"""``make run`` (``python -m dropr.demo``) when the receiver's address is
already taken by another program: it stops at once, saying which keys to change."""

import socket
import subprocess
import sys
import time

import pytest

from tests.support import harness

pytestmark = pytest.mark.process


def test_make_run_on_a_taken_port_stops_at_once_naming_the_address_and_keys(tmp_path):
    port = harness.free_port()
    path = harness.write_config(tmp_path, port=port)
    with socket.socket() as other:  # another program listening there
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "dropr.demo", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
    assert done.returncode == 1 and took < 10
    assert done.stderr.splitlines() == [
        f"dropr demo: 127.0.0.1:{port} is already in use by another program: stop it, "
        f"or change [receiver] bind and [peers.local] url in {path}"]
    assert not (tmp_path / "droprd.pid").exists()  # nothing was started
    assert not (tmp_path / "client").exists()
