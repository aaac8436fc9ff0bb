"""The ``process`` marker is enforced (tests/support/guard.py): a test that
starts a process without it fails, naming what it started, whichever way it
started it; a marked test runs as before; so ``-m "not process"`` (``make
test-fast``) starts none."""

import multiprocessing.util
import os
import subprocess
import sys
import textwrap

import pytest

from tests.support import guard


class Item:
    """As much of a pytest item as the guard reads."""

    nodeid = "tests/test_x.py::test_x"

    def __init__(self, marked):
        self.marked = marked

    def get_closest_marker(self, name):
        return pytest.mark.process.mark if self.marked and name == "process" else None


def _reap(pid):
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _reap(pid)


STARTS = {
    "subprocess 'true'": lambda: subprocess.run(["true"], check=True),
    "os.fork()": _fork,
    "os.posix_spawn 'true'": lambda: _reap(os.posix_spawn("/bin/true", ["true"], os.environ)),
    "fork_exec 'true'": lambda: _reap(multiprocessing.util.spawnv_passfds(b"/bin/true",
                                                                           ["true"], ())),
}


@pytest.mark.process
@pytest.mark.parametrize("what", STARTS)
def test_an_unmarked_test_that_starts_a_process_fails_naming_it(what):
    with pytest.raises(pytest.fail.Exception) as failed:
        with guard.check(Item(marked=False), "call"):
            STARTS[what]()
    assert str(failed.value) == (
        f"tests/test_x.py::test_x starts a process in its call ({what}) but is not marked "
        "`process`: add @pytest.mark.process (or to the module's pytestmark)")


@pytest.mark.process
@pytest.mark.parametrize("what", STARTS)
def test_a_marked_test_starts_processes_freely(what):
    with guard.check(Item(marked=True), "call"):
        STARTS[what]()


def test_an_unmarked_test_that_starts_nothing_passes():
    with guard.check(Item(marked=False), "setup"):
        os.getpid()


@pytest.mark.process
def test_a_run_with_the_suites_hooks_fails_only_the_unmarked_test_that_starts_a_process(tmp_path):
    (tmp_path / "test_x.py").write_text(textwrap.dedent("""
        import subprocess

        import pytest


        @pytest.fixture
        def child():
            subprocess.run(["true"], check=True)


        def test_unmarked_call():
            subprocess.run(["true"], check=True)


        def test_unmarked_fixture(child):
            pass


        @pytest.mark.process
        def test_marked(child):
            subprocess.run(["true"], check=True)


        def test_starts_nothing():
            pass
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "tests.conftest", "-c", os.devnull, "--rootdir", str(tmp_path),
                             "-W", "ignore::pytest.PytestUnknownMarkWarning", "test_x.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "1 failed, 2 passed, 1 error" in result.stdout, result.stdout + result.stderr
    assert ("test_x.py::test_unmarked_call starts a process in its call (subprocess 'true') "
            "but is not marked `process`") in result.stdout
    assert ("test_x.py::test_unmarked_fixture starts a process in its setup (subprocess 'true') "
            "but is not marked `process`") in result.stdout
