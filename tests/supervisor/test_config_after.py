"""droprd run for real with ``--config`` after the subcommand, as systemd
units and init scripts often write it."""

import json
import subprocess

import pytest

from tests.supervisor.conftest import DROPRD

pytestmark = pytest.mark.process


def test_start_status_reload_stop_with_the_config_after_the_subcommand(make_tree):
    tree = make_tree()
    cfg = ["--config", str(tree.config_path)]

    def droprd(*args):
        return subprocess.run([*DROPRD, *args, *cfg], capture_output=True, text=True, timeout=60)

    assert droprd("status").returncode == 3
    started = droprd("start")
    assert started.returncode == 0, started.stderr + tree.log_tail()
    tree.wait_running()
    status = droprd("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["running"] is True
    assert droprd("reload").returncode == 0
    assert droprd("restart", "reaper").returncode == 0
    stopped = droprd("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert droprd("status").returncode == 3
