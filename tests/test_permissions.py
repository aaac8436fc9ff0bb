"""Producers as other users ([client] group), with real users: droprd runs as
one, two producers in the group as two others, and a third user outside it.

Creating users needs root; elsewhere these tests are skipped with the reason.
The users and the group are made once for the module and removed afterwards
(unless they were there before)."""

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
import sysv_ipc

from dropr.ipc import queue_key
from dropr.spool import Spool, perms
from tests.support import harness

pytestmark = [pytest.mark.process,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                                 reason="needs root and useradd to create users and a group")]

GROUP = "droprtprod"
DAEMON, MEMBER_A, MEMBER_B, OUTSIDER = "droprtd", "droprtpa", "droprtpb", "droprtpo"


@pytest.fixture(scope="module")
def users():
    """The group and the four users; removed after the module if made here."""
    made_group = _ensure_group(GROUP)
    made = [u for u in (DAEMON, MEMBER_A, MEMBER_B, OUTSIDER) if _ensure_user(u)]
    for user in (DAEMON, MEMBER_A, MEMBER_B):
        subprocess.run(["usermod", "-a", "-G", GROUP, user], check=True)
    _ENV.update(_interpreter_for_others())
    yield
    for user in made:
        subprocess.run(["userdel", user], check=False)
    if made_group:
        subprocess.run(["groupdel", GROUP], check=False)


def _ensure_group(name):
    try:
        grp.getgrnam(name)
        return False
    except KeyError:
        subprocess.run(["groupadd", name], check=True)
        return True


def _ensure_user(name):
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True)
        return True


#: The interpreter other users run, and its environment (set by ``users``).
_ENV = {}
_NEEDED = "import dropr.cli, dropr.supervisor.cli, falcon, gunicorn, pycurl, sysv_ipc, psutil"


def _interpreter_for_others():
    """This interpreter if other users can run it; else the system's of the
    same version, given this project and its installed packages on PYTHONPATH
    (a venv made from a Python under /root, say). Skips if neither works."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/",
           "PYTHON": sys.executable}
    try:
        if _as(OUTSIDER, [sys.executable, "-c", _NEEDED], env=env).returncode == 0:
            return env
    except PermissionError:
        pass  # it cannot even be started
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}",
                          path="/usr/bin:/usr/local/bin")
    paths = [str(Path(__file__).resolve().parents[1]),
             sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    env.update(PYTHON=system or "", PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))
    probe = _as(OUTSIDER, [env["PYTHON"], "-c", _NEEDED], env=env) if system else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no Python that other users can run with this project: "
                    + (probe.stderr[-200:] if probe else "none of this version in /usr/bin"))
    return env


def _as(user, argv, env=None, **kwargs):
    """Run ``argv`` as ``user``, with that user's groups (never root's)."""
    entry = pwd.getpwnam(user)
    env = env or _ENV
    return subprocess.run(argv, user=entry.pw_uid, group=entry.pw_gid,
                          extra_groups=os.getgrouplist(user, entry.pw_gid), env=env,
                          capture_output=True, text=True, timeout=60, **kwargs)


def _python(user, *args, input=None):
    return _as(user, [_ENV["PYTHON"], *args], input=input)


def _dropr(user, config, *args, input=None):
    return _python(user, "-m", "dropr.cli", "--config", str(config), *args, input=input)


def _droprd(user, config, *args):
    return _python(user, "-m", "dropr.supervisor.cli", "--config", str(config), *args)


@pytest.fixture
def shared(users):
    """A folder every user can reach, owned by droprd's user, with a config for
    a spool shared with GROUP; removed afterwards (with the spool's SysV queues)."""
    root = Path(tempfile.mkdtemp(prefix="dropr-perms-", dir="/var/tmp"))
    root.chmod(0o755)
    os.chown(root, pwd.getpwnam(DAEMON).pw_uid, -1)
    config = harness.write_config(root, sections={"client": {"group": GROUP},
                                                  "workers": {"receiver": 1}})
    config.chmod(0o644)
    yield config
    harness.remove_queues(root / "client")
    shutil.rmtree(root, ignore_errors=True)


def _spool_made_by_its_owner(config):
    """The spool made as `dropr spool count` by droprd's user makes it."""
    result = _dropr(DAEMON, config, "spool", "count")
    assert result.returncode == 0, result.stderr
    return config.parent / "client"


def _message_file(spool, message_id):
    found = [p for p in spool.rglob(f"*{message_id}*") if p.is_file()]
    assert len(found) == 1, found
    return found[0]


def test_owner_makes_the_spool_with_the_modes_of_the_maildrop_model(shared):
    spool = _spool_made_by_its_owner(shared)
    gid, uid = grp.getgrnam(GROUP).gr_gid, pwd.getpwnam(DAEMON).pw_uid
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [spool, *spool.iterdir()]}
    assert modes == {"client": 0o710, "tmp": 0o3730, "queue": 0o3730, "active": 0o700,
                     "deferred": 0o700, "hold": 0o700, "sent": 0o700, "dead": 0o700,
                     "peers": 0o700}
    assert {(p.stat().st_uid, p.stat().st_gid) for p in [spool, *spool.iterdir()]} == {(uid, gid)}
    assert perms.acl_state(spool / "tmp", uid) == "ok"


def test_member_cannot_list_read_rename_or_remove_another_members_message(shared):
    spool = _spool_made_by_its_owner(shared)
    put = _dropr(MEMBER_A, shared, "put", "--peer", "local", input="secret of a")
    assert put.returncode == 0, put.stderr
    path = _message_file(spool, put.stdout.strip())
    script = f"""
import json, os
path, spool = {str(path)!r}, {str(spool)!r}
tries = {{
    "list queue": lambda: os.listdir(spool + "/queue"),
    "list tmp": lambda: os.listdir(spool + "/tmp"),
    "read": lambda: open(path, "rb").read(),
    "rename": lambda: os.rename(path, spool + "/tmp/stolen"),
    "remove": lambda: os.unlink(path),
}}
done = []
for what, attempt in tries.items():
    try:
        attempt()
        done.append(what)
    except PermissionError:
        pass
print(json.dumps(done))
"""
    b = _python(MEMBER_B, "-c", script)
    assert b.returncode == 0, b.stderr
    assert json.loads(b.stdout) == []
    assert path.read_bytes() == b"secret of a"
    # ... while its own user and droprd's still can
    assert _as(MEMBER_A, ["cat", str(path)]).stdout == "secret of a"
    assert _as(DAEMON, ["cat", str(path)]).stdout == "secret of a"


def test_outsider_gets_a_clear_error_naming_the_folder_and_no_traceback(shared):
    spool = _spool_made_by_its_owner(shared)
    result = _dropr(OUTSIDER, shared, "put", "--peer", "local", input="x")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{spool}: permission denied" in result.stderr
    assert OUTSIDER in result.stderr and "search (x)" in result.stderr
    assert f"members of group {GROUP}" in result.stderr


def test_producer_does_not_make_a_missing_shared_spool(shared):
    result = _dropr(MEMBER_A, shared, "put", "--peer", "local", input="x")
    assert result.returncode == 1
    assert "does not exist: droprd makes it" in result.stderr
    assert not (shared.parent / "client").exists()


def test_member_puts_and_droprd_run_as_its_own_user_delivers(shared):
    start = _droprd(DAEMON, shared, "start")
    assert start.returncode == 0, start.stderr
    try:
        spool = shared.parent / "client"
        wake = sysv_ipc.MessageQueue(queue_key(spool, "wake"))
        reports = sysv_ipc.MessageQueue(queue_key(spool, "report"))
        assert (wake.gid, wake.mode) == (grp.getgrnam(GROUP).gr_gid, 0o660)
        assert reports.mode == 0o600
        put = _dropr(MEMBER_A, shared, "put", "--peer", "local", input="from a")
        assert put.returncode == 0, put.stderr

        def stored():
            return _dropr(DAEMON, shared, "store", "count", "common").stdout.strip() == "1"
        harness.wait_for(stored, 20, interval=0.2, what="the member's message stored")
        cat = _dropr(DAEMON, shared, "store", "cat", "common", put.stdout.strip())
        assert cat.stdout == "from a"
    finally:
        stop = _droprd(DAEMON, shared, "stop")
        assert stop.returncode == 0, stop.stderr


def test_droprd_start_fixes_the_modes_of_a_spool_its_user_owns(shared):
    old = shared.with_name("old.toml")  # an older dropr: no group, folders 0755
    old.write_text(shared.read_text().replace(f'group = "{GROUP}"', 'group = ""'))
    old.chmod(0o644)
    assert _dropr(DAEMON, old, "spool", "count").returncode == 0
    spool = shared.parent / "client"
    assert stat.S_IMODE((spool / "queue").stat().st_mode) == 0o755
    assert _dropr(MEMBER_A, shared, "put", "--peer", "local", input="x").returncode == 1
    start = _droprd(DAEMON, shared, "start")
    try:
        assert start.returncode == 0, start.stderr
        assert stat.S_IMODE((spool / "queue").stat().st_mode) == 0o3730
        was = grp.getgrgid(pwd.getpwnam(DAEMON).pw_gid).gr_name
        assert f"fixed {spool / 'queue'}: mode 0755 group {was} -> mode 3730 group {GROUP}" \
            in start.stderr
        assert _dropr(MEMBER_A, shared, "put", "--peer", "local", input="x").returncode == 0
    finally:
        _droprd(DAEMON, shared, "stop")


def test_droprd_start_names_a_folder_it_cannot_fix_and_how(shared):
    spool = shared.parent / "client"
    Spool(spool).create()  # made by hand, as root, 0755
    os.chown(spool, pwd.getpwnam(DAEMON).pw_uid, -1)  # the root is droprd's, tmp/ is not
    start = _droprd(DAEMON, shared, "start")
    assert start.returncode == 1
    assert "Traceback" not in start.stderr
    assert f"{spool / 'tmp'} belongs to root, not to {DAEMON}" in start.stderr
    assert f"chown {DAEMON}:{GROUP} {spool / 'tmp'} && chmod 3730 {spool / 'tmp'}" in start.stderr
    assert _droprd(DAEMON, shared, "status").returncode == 3  # not running
    assert stat.S_IMODE((spool / "tmp").stat().st_mode) == 0o755  # nothing half-done


@pytest.fixture
def store_config(shared):
    """``shared`` with [receiver] group set: consumer accounts in GROUP."""
    text = shared.read_text().replace("[receiver]\n", f'[receiver]\ngroup = "{GROUP}"\n', 1)
    shared.write_text(text)
    return shared


def _store_as_receiver(config, *bodies):
    """Store ``bodies`` in channel common as the receiver's user; their ids."""
    script = f"""
from dropr import config as c
from dropr.store import open_store
store = open_store(c.load({str(config)!r}))
for i, body in enumerate({list(bodies)!r}):
    store.put("common", f"m{{i}}", body.encode(), priority=5, client="test")
"""
    result = _python(DAEMON, "-c", script)
    assert result.returncode == 0, result.stderr
    return [f"m{i}" for i in range(len(bodies))]


def test_consumer_account_reads_and_acks_but_cannot_touch_bodies_being_received(store_config):
    first, second = _store_as_receiver(store_config, "one", "two")
    assert _dropr(MEMBER_B, store_config, "store", "cat", "common", first).stdout == "one"
    ack = _dropr(MEMBER_B, store_config, "store", "ack", "common", first)
    assert ack.returncode == 0, ack.stderr
    consume = _dropr(MEMBER_B, store_config, "consume", "--channel", "common", "--once",
                     "--", "cat")
    assert consume.returncode == 0, consume.stderr
    assert _dropr(DAEMON, store_config, "store", "count", "common").stdout.strip() == "0"
    store = store_config.parent / "server"
    assert stat.S_IMODE((store / "tmp").stat().st_mode) == 0o3730
    listing = _python(MEMBER_B, "-c", f"import os; os.listdir({str(store / 'tmp')!r})")
    assert listing.returncode == 1 and "PermissionError" in listing.stderr


def test_store_command_of_a_user_outside_the_group_names_what_it_lacks(store_config):
    _store_as_receiver(store_config, "one")
    result = _dropr(OUTSIDER, store_config, "store", "ls", "common")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    store = store_config.parent / "server"
    assert f"{store}: permission denied: user {OUTSIDER}" in result.stderr
    assert f"members of group {GROUP} have it ([receiver] group" in result.stderr


def test_member_under_spool_limits_gets_a_clear_error_not_a_bare_permission_error(shared):
    _spool_made_by_its_owner(shared)
    limited = shared.with_name("limited.toml")
    limited.write_text(shared.read_text().replace("[client]\n", "[client]\nmax_messages = 10\n", 1))
    limited.chmod(0o644)
    result = _dropr(MEMBER_A, limited, "put", "--peer", "local", input="x")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "queue: permission denied" in result.stderr
    assert "read (r), to count the backlog for [client] max_messages" in result.stderr


def test_droprd_start_as_a_user_outside_the_group_says_so(shared):
    other = shared.with_name("outsider.toml")
    other.write_text(shared.read_text().replace(str(shared.parent / "client"),
                                                str(shared.parent / "client2")))
    other.chmod(0o644)
    os.chmod(shared.parent, 0o777)
    try:
        result = _droprd(OUTSIDER, other, "start")
    finally:
        os.chmod(shared.parent, 0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{OUTSIDER} is not a member (as root: usermod -a -G {GROUP} {OUTSIDER})" in result.stderr


def test_member_wakes_the_senders_but_cannot_read_their_reports(shared):
    from dropr.ipc import Notices

    spool = _spool_made_by_its_owner(shared)
    notices = Notices.replace(spool, gid=grp.getgrnam(GROUP).gr_gid)  # as droprd start makes them
    put = _dropr(MEMBER_A, shared, "put", "--peer", "local", input="x")
    assert put.returncode == 0, put.stderr
    assert sysv_ipc.MessageQueue(queue_key(spool, "wake")).current_messages == 1
    notices.report({"worker": "sender 1"})
    script = (f"import sysv_ipc; q = sysv_ipc.MessageQueue({queue_key(spool, 'report')}); "
              "q.receive(block=False)")
    assert "PermissionsError" in _python(MEMBER_A, "-c", script).stderr
