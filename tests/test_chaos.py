"""The bounded chaos run: bench/chaos.py with 5,000 messages and 30 faults
(kill -9 of every kind of process, 500s and stalls through a proxy, full
client and store disks), which must end with every message stored exactly
once, byte for byte, and the daemon still running. Needs root (tmpfs mounts)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.process]

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"
SUMMARY = re.compile(r"put (\d+), stored (\d+), lost (\d+), duplicated (\d+), faults (\d+), seed (\d+)")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts tmpfs disks: needs root")
@pytest.mark.timeout(240)
def test_chaos_run_stores_every_message_exactly_once(tmp_path):
    seed = os.environ.get("DROPR_CHAOS_SEED", "1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--messages", "5000", "--faults", "30", "--seed", seed,
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=230)
    report = result.stdout + result.stderr
    match = SUMMARY.search(result.stdout)
    assert match, report
    put, stored, lost, duplicated, faults, _ = map(int, match.groups())
    assert (put, stored, lost, duplicated) == (5000, 5000, 0, 0), report
    assert faults >= 30, report
    assert result.returncode == 0, report
