"""The wheel, built with ``python -m build`` from a copy of the checkout and
installed into a fresh venv outside it: its commands run, its receiver serves
(the OpenAPI document from the installed package), ``dropr bench`` drains,
and the core install works without nats-py until the extra brings it.

Slow (about 30 s): marked ``slow``; ``-m 'not slow'`` leaves it out. To stay
fast, the venv is made without pip of its own (this venv's pip installs into
it with ``--python``) and the dependencies come from pip's cache; nothing of
this venv is visible to the fresh one, so the wheel must be self-contained."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import harness

pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
LEFT_OUT = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                  "var", ".pytest_cache", ".hypothesis")


def run(argv, cwd, timeout=120):
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, work folder): the wheel built and installed, without extras."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=LEFT_OUT)
    built = run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"),
                 str(tmp / "src")], cwd=tmp, timeout=240)
    log = built.stdout + built.stderr
    assert "project.license" not in log and "Deprecat" not in log, log[-3000:]
    (wheel,) = (tmp / "dist").glob("dropr-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "-q", str(wheel)], cwd=tmp, timeout=240)
    work = tmp / "work"  # outside the checkout: nothing of it on the path
    work.mkdir()
    return venv, work, wheel


def test_the_commands_run_from_the_installed_package(installed):
    venv, work, _ = installed
    where = run([venv / "bin" / "python", "-c", "import dropr; print(dropr.__file__)"], cwd=work)
    assert where.stdout.startswith(str(venv)), where.stdout
    assert "usage: dropr" in run([venv / "bin" / "dropr", "--help"], cwd=work).stdout
    assert "usage: droprd" in run([venv / "bin" / "droprd", "--help"], cwd=work).stdout


def test_the_installed_receiver_serves_its_openapi_document(installed):
    venv, work, _ = installed
    (work / "serve").mkdir()
    path = harness.write_config(work / "serve")
    proc = subprocess.Popen([venv / "bin" / "dropr", "--config", str(path), "receiver"],
                            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    url = harness.Receiver(path).url
    try:
        harness.wait_for(lambda: proc.poll() is None and
                         harness.http_get(url + "/v1/health")[0] == 200, 20,
                         what="the installed receiver's health")
        status, body = harness.http_get(url + "/v1/openapi.json")
        assert status == 200 and json.loads(body)["openapi"].startswith("3.")
    finally:
        harness.with_group(proc.pid, signal.SIGTERM)
        proc.wait(15)


def test_the_installed_bench_drains_and_leaves_out_jetstream(installed):
    venv, work, _ = installed
    done = run([venv / "bin" / "dropr", "bench", "--fs", "here", "--quick", "--only",
                "drain,jetstream", "--runs", "1", "--messages", "200", "--fsync", "off"],
               cwd=work, timeout=120)
    assert "| e2e drain (spool full, 1 sender) (msg/s)" in done.stdout, done.stdout
    # without the extra the JetStream rows are left out, and the bench says why
    assert "JetStream" not in done.stdout.split("note:")[0]
    assert "note: jetstream: skipped, nats-py is not installed (pip install 'dropr[jetstream]')" \
        in done.stdout


def test_jetstream_needs_the_extra_and_says_so(installed):
    venv, work, wheel = installed
    python = venv / "bin" / "python"
    absent = subprocess.run([python, "-c", "import nats"], capture_output=True, cwd=work)
    assert absent.returncode != 0  # the core install does not pull nats-py
    (work / "js").mkdir()
    path = harness.write_config(work / "js", sections={"store": {"backend": "jetstream"}})
    refused = subprocess.run([venv / "bin" / "dropr", "--config", str(path), "store", "channels"],
                             capture_output=True, text=True, cwd=work, timeout=30)
    assert refused.returncode == 1
    assert "pip install 'dropr[jetstream]'" in refused.stderr and "Traceback" not in refused.stderr
    served = subprocess.run([venv / "bin" / "dropr", "--config", str(path), "receiver"],
                            capture_output=True, text=True, cwd=work, timeout=30)
    assert served.returncode == 1 and "pip install 'dropr[jetstream]'" in served.stderr
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         f"{wheel}[jetstream]"], cwd=work, timeout=120)
    run([python, "-c", "import nats"], cwd=work)
