"""Fixtures shared by all tests: a config in a temporary folder, and a real
receiver under gunicorn on a free loopback port, stopped by pid afterwards.
A test that starts a process must be marked ``process`` (tests/support/guard.py
fails it otherwise), so that ``-m "not process"`` selects the fast layer."""

import collections

import pytest

from tests.support import guard, harness

guard.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with guard.check(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with guard.check(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    with guard.check(item, "teardown"):
        return (yield)


@pytest.fixture
def config_path(tmp_path):
    """A dropr.toml for a spool and store under tmp_path; SysV queues removed after."""
    path = harness.write_config(tmp_path)
    yield path
    harness.remove_queues(tmp_path / "client")


@pytest.fixture
def receiver(config_path):
    """The real receiver (gunicorn) for ``config_path``, running."""
    r = harness.Receiver(config_path).start()
    yield r
    r.stop()


def pytest_terminal_summary(terminalreporter):
    """The run ends with what it did not test: one line per reason a test was
    skipped, with how many were."""
    reasons = collections.Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr  # (path, line, "Skipped: REASON") for a skip
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.section("skipped, by reason", sep="-")
        for reason, count in sorted(reasons.items()):
            terminalreporter.line(f"{count:4d} skipped: {reason}")
