"""Global options (``--config``) before or after the subcommand, for every
command of ``dropr`` and ``droprd``: the parsers, and the commands run for real."""

import subprocess
import sys

import pytest

from dropr import cli
from dropr.options import subcommands
from dropr.supervisor import cli as droprd_cli
from tests.support import harness

# The least each command needs besides --config. --config may go before the
# command, after each of its words ("store", "count") and at the end.
DROPR = {
    "put": ["put", "--peer", "local", "-"],
    "call": ["call", "--peer", "local", "--channel", "c", "-"],
    "send": ["send", "--once"],
    "consume": ["consume", "--channel", "c"],
    "receiver": ["receiver"],
    "bench": ["bench", "--quick"],
    "spool ls": ["spool", "ls", "queue"],
    "spool count": ["spool", "count"],
    "spool dead": ["spool", "dead"],
    "spool requeue": ["spool", "requeue", "--all"],
    "store channels": ["store", "channels"],
    "store ls": ["store", "ls", "C"],
    "store count": ["store", "count", "C"],
    "store cat": ["store", "cat", "C", "ID"],
    "store ack": ["store", "ack", "C", "ID"],
    "store dead": ["store", "dead", "C"],
    "store pause": ["store", "pause", "C"],
    "store resume": ["store", "resume", "C"],
    "store requeue": ["store", "requeue", "C", "--all"],
    "store purge": ["store", "purge", "C", "--dead", "--dry-run"],
    "spool hold": ["spool", "hold", "--all"],
    "spool release": ["spool", "release", "--all"],
    "spool purge": ["spool", "purge", "sent", "--dry-run"],
    "trace": ["trace", "ID"],
}
DROPRD = {
    "start": ["start", "--foreground"],
    "stop": ["stop"],
    "status": ["status", "--json"],
    "reload": ["reload"],
    "restart": ["restart", "sender", "1"],
}


def leaves(parser):
    """The full names of the commands that run something ("store count")."""
    names = []
    for sub in subcommands(parser):
        name = sub.prog.split(" ", 1)[1]
        if not subcommands(sub):
            names.append(name)
    return sorted(names)


def positions(name, words):
    """Every place --config F can go: before the command, after each word of
    its name, at the end."""
    places = sorted({*range(len(name.split()) + 1), len(words)})
    return [words[:i] + ["--config", "F"] + words[i:] for i in places]


def test_every_command_is_listed_here():
    assert leaves(cli._parser()) == sorted(DROPR)
    assert leaves(droprd_cli._parser()) == sorted(DROPRD)


@pytest.mark.parametrize("parser, name, words", [
    *[(cli._parser, n, w) for n, w in DROPR.items()],
    *[(droprd_cli._parser, n, w) for n, w in DROPRD.items()],
], ids=[*DROPR, *[f"droprd {n}" for n in DROPRD]])
def test_config_before_between_or_after_the_subcommand(parser, name, words):
    for argv in positions(name, words):
        assert parser().parse_args(argv).config == "F", argv
    assert parser().parse_args(words).config is None  # default: $DROPR_CONFIG, then conf/
    after = parser().parse_args(["--config", "G", *words, "--config", "F"])
    assert after.config == "F"  # the last one given wins, as for any option


@pytest.mark.process
def test_dropr_commands_read_the_config_given_after_them(config_path, receiver):
    harness.run_dropr(config_path, "put", "--peer", "local", "--channel", "c", "-",
                      input=b"hello")
    dropr = [sys.executable, "-m", "dropr.cli"]
    cfg = ["--config", str(config_path)]
    sent = subprocess.run([*dropr, "send", "--once", *cfg], capture_output=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    for argv in ([*dropr, "store", "count", "c", *cfg], [*dropr, "store", *cfg, "count", "c"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    harness.run_dropr(config_path, "put", "--peer", "local", "-", input=b"waits")
    done = subprocess.run([*dropr, "spool", "count", *cfg], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "queue     1" in done.stdout, done.stderr
    wrong = subprocess.run([*dropr, "store", "count", "c", "--config", "/no/such.toml"],
                           capture_output=True, text=True, timeout=30)
    assert wrong.returncode != 0 and "/no/such.toml" in wrong.stderr


@pytest.mark.process
def test_receiver_serves_with_the_config_after_the_subcommand(tmp_path):
    path = harness.write_config(tmp_path)
    receiver = harness.Receiver(path)
    log = open(tmp_path / "receiver.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "dropr.cli", "receiver", "--config", str(path)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        harness.wait_for(lambda: harness.http_get(receiver.url + "/v1/health")[0] == 200, 15,
                         what="receiver health")
    finally:
        harness.with_group(proc.pid, 15)
        proc.wait(15)
