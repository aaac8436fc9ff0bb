"""The files in init/ are run, not just shipped: the LSB script drives a real
droprd, and systemd-analyze verifies the units (where it is installed)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.supervisor.conftest import alive
from tests.support import harness

INIT = Path(__file__).resolve().parents[2] / "init"
#: Where the units and the script expect dropr to be installed.
INSTALLED = "/opt/dropr/.venv/bin"


def init_script(defaults, *args):
    """``sh init/droprd ARGS`` with its settings from the file ``defaults``."""
    return subprocess.run(["sh", str(INIT / "droprd"), *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin",
                                           "DROPRD_DEFAULTS": str(defaults)})


@pytest.mark.process
def test_lsb_init_script_starts_reports_restarts_and_stops_droprd(make_tree, tmp_path):
    droprd = Path(sys.executable).parent / "droprd"
    if not droprd.exists():
        pytest.skip(f"no droprd entry point beside {sys.executable}")
    tree = make_tree({"workers": {"sender": 1}})
    defaults = tmp_path / "default-droprd"
    defaults.write_text(f"DROPRD={droprd}\nDROPR_CONFIG={tree.config_path}\nDROPR_USER=\n")

    result = init_script(defaults, "start")
    assert result.returncode == 0 and "droprd started" in result.stdout, result
    first = tree.pid
    tree.wait_running(3)
    assert init_script(defaults, "status").returncode == 0
    again = init_script(defaults, "start")
    assert again.returncode == 0 and "already running" in again.stdout
    assert tree.pid == first

    result = init_script(defaults, "restart")
    assert result.returncode == 0, result
    assert not alive(first) and tree.pid not in (None, first)
    tree.wait_running(3)

    result = init_script(defaults, "stop")
    assert result.returncode == 0 and "droprd stopped" in result.stdout, result
    assert init_script(defaults, "status").returncode == 3  # LSB: not running
    assert init_script(defaults, "try-restart").returncode == 0
    assert tree.pid is None
    assert init_script(defaults, "bogus").returncode == 2
    defaults.write_text(f"DROPRD={tmp_path / 'missing'}\n")
    assert init_script(defaults, "start").returncode == 5  # LSB: not installed


def units():
    return sorted(p.name for p in INIT.glob("*.service"))


@pytest.mark.parametrize("unit", units())
@pytest.mark.process
def test_systemd_unit_verifies(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs systemd)")
    text = (INIT / unit).read_text().replace(INSTALLED, str(Path(sys.executable).parent))
    # Every program a unit starts must exist for verify; dropr's are in this venv.
    for program in sorted(set(re.findall(r"^Exec\w+=[-@+!:]*(/\S+)", text, re.M))):
        if not Path(program).exists():
            found = shutil.which(Path(program).name)
            if found is None:
                pytest.skip(f"{unit} runs {program}, which is not installed here")
            text = text.replace(program, found)
    (tmp_path / unit).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / unit)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    # A bad key or value is only a warning (exit 0): any line about the unit fails.
    said = [line for line in (result.stdout + result.stderr).splitlines()
            if unit.split("@")[0] in line]
    assert result.returncode == 0 and not said, result.stdout + result.stderr
