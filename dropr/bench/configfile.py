"""The one writer of a ``dropr.toml`` for a run of real processes: ``dropr
bench``, the tests and the chaos scripts each pass their own keys to it.

Every file and folder sits under one root: the spool in ``client/``, the
store in ``server/``, droprd's pidfile, status file and log; the receiver
binds the loopback ``port`` that the peer ``local`` points at. Any of that is
overridden the same way as every other key."""

from pathlib import Path

from dropr import config as config_mod

#: The order the sections are written in (others follow as given; peers last).
ORDER = ("client", "sender", "retry", "reaper", "receiver", "supervisor")


def write_config(root, *, port, sections=None, peers=None):
    """Write ``root/dropr.toml`` and return it loaded (a bad key fails here,
    not in a child process).

    ``sections`` overrides keys: ``{"sender": {"wait": 0.1}}``; a dict value is
    a table of its own (``{"receiver": {"responders": {"cat": {...}}}}``).
    ``peers`` replaces the single peer ``local`` on ``port``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "client": {"spool": str(root / "client")},
        "receiver": {"bind": f"127.0.0.1:{port}", "store": str(root / "server")},
        "supervisor": {"pidfile": str(root / "droprd.pid"),
                       "status_file": str(root / "droprd.status.json"),
                       "log_file": str(root / "droprd.log")},
    }
    for section, values in (sections or {}).items():
        data.setdefault(section, {}).update(values)
    data = {k: data[k] for k in ORDER if k in data} | data
    data["peers"] = peers or {"local": {"url": f"http://127.0.0.1:{port}"}}
    path = root / "dropr.toml"
    path.write_text("\n".join(_table([], data)) + "\n")
    return config_mod.load(path)


def _table(keys, values):
    """The TOML lines of one table and the tables inside it."""
    lines = [f"[{'.'.join(keys)}]"] if keys else []
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    if keys and len(lines) == 1 and any(isinstance(v, dict) for v in values.values()):
        lines = []  # only tables inside: no header of its own
    for k, v in values.items():
        if isinstance(v, dict):
            lines += _table([*keys, k], v)
    return lines


def toml_value(v):
    """``v`` (bool, number, string, path or list of them) in TOML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
