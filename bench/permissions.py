"""How droprd may read producers' files in a shared spool ([client] group):
a default POSIX ACL on tmp/, or CAP_DAC_READ_SEARCH; what each costs.

    python bench/permissions.py [--messages N] [--dir DIR] [--runs R]

Needs root (it plays a second user, uid 65534, and gives it the capability).
Prints, best of R runs, for N messages of 512 bytes:

- put/s of Spool.put into a spool without and with the default ACL on tmp/
  (the ACL is copied onto every new file: the producer's cost);
- read/s of the sender's open_message + pread + close by uid 65534, reading
  the files through the ACL's named entry, and reading files of mode 0600
  through CAP_DAC_READ_SEARCH (droprd's cost).
"""

import argparse
import ctypes
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dropr.spool import Spool, SpoolName, perms  # noqa: E402
from dropr.spool.files import open_message  # noqa: E402

READER = 65534
CAP_DAC_READ_SEARCH = 2
_PR_SET_KEEPCAPS = 8
_CAP_V3 = 0x20080522
_libc = ctypes.CDLL(None, use_errno=True)


def _names(n):
    return [SpoolName(5, f"01J{i:023d}", "local", "common") for i in range(n)]


def put_rate(root, names, *, acl):
    spool = Spool(root, fsync=False).create()
    if acl:
        os.setxattr(spool.dirs["tmp"], perms.ACL_XATTR, perms.default_acl(READER))
    body = b"x" * 512
    started = time.perf_counter()
    for name in names:
        spool.put(body, name)
    return len(names) / (time.perf_counter() - started), spool


def _with_cap_only(cap):
    """In a child: become READER, keeping ``cap`` (or none) effective."""
    _libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setresgid(READER, READER, READER)
    os.setresuid(READER, READER, READER)
    header = (ctypes.c_uint32 * 2)(_CAP_V3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2
    if cap is not None:
        data[0] = data[1] = 1 << cap
    if _libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def read_rate(folder, cap):
    """read/s of every file in ``folder`` by READER, measured in a child."""
    paths = [os.path.join(folder, n) for n in os.listdir(folder)]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _with_cap_only(cap)
            started = time.perf_counter()
            for path in paths:
                fd, size = open_message(path)
                os.pread(fd, size, 0)
                os.close(fd)
            os.write(w, f"{len(paths) / (time.perf_counter() - started)}".encode())
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    if not answer:
        raise SystemExit(f"the reader could not read {folder}")
    return float(answer)


def one_run(base, n):
    names = _names(n)
    plain_rate, plain = put_rate(base / "plain", names, acl=False)
    acl_rate, shared = put_rate(base / "acl", names, acl=True)
    for spool in (plain, shared):
        spool.root.chmod(0o711)
        spool.dirs["queue"].chmod(0o711)
    for path in plain.dirs["queue"].iterdir():
        path.chmod(0o600)  # only the capability lets READER in
    plain.root.chmod(0o700)
    plain.dirs["queue"].chmod(0o700)
    through_acl = read_rate(shared.dirs["queue"], None)
    through_cap = read_rate(plain.dirs["queue"], CAP_DAC_READ_SEARCH)
    return plain_rate, acl_rate, through_acl, through_cap


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to make the spools (default: /var/tmp)")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: it reads as uid 65534 with and without a capability")
    best = [0.0] * 4
    for _ in range(args.runs):
        base = Path(tempfile.mkdtemp(prefix="dropr-perms-", dir=args.dir or "/var/tmp"))
        base.chmod(0o711)
        try:
            best = [max(a, b) for a, b in zip(best, one_run(base, args.messages))]
        finally:
            shutil.rmtree(base)
    labels = ("put/s, tmp/ without ACL", "put/s, tmp/ with the default ACL",
              "read/s by droprd's user through the ACL",
              "read/s by droprd's user through CAP_DAC_READ_SEARCH")
    print(f"{args.messages} messages of 512 bytes, best of {args.runs}, fsync off, "
          f"filesystem of {args.dir or '/var/tmp'}")
    for label, value in zip(labels, best):
        print(f"  {label:<52} {value:>10,.0f}")
    print(f"  ACL cost per put: {(1 / best[1] - 1 / best[0]) * 1e6:+.1f} us")


if __name__ == "__main__":
    main()
