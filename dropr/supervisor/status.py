"""The status file and the ``droprd status`` table.

The supervisor writes ``[supervisor] status_file`` each tick, atomically (a
temporary file renamed over the old one), as JSON: its own pid, config and
spool, the reload generation and outcome, and one entry per worker (name,
kind, pid, state, start time, restarts, messages handled, last heartbeat,
last exit, error, and until when it is throttled).
``droprd status`` reads it and adds what only a live look can tell: each
worker's RSS and CPU share (psutil) and the messages in each spool directory.
"""

import contextlib
import json
import os
import time

import psutil

from dropr.workers import kinds

VERSION = 1


def document(*, pid, state, config, started, now, generation, reload, slots):
    """The whole status file: the supervisor and its slots in display order."""
    ordered = sorted(slots, key=lambda s: (kinds.kind(s.kind).order, s.number))
    return {
        "version": VERSION, "pid": pid, "state": state, "config": str(config.path),
        "spool": str(config.client.spool), "started": started, "updated": now,
        "generation": generation, "reload": reload,
        "workers": [slot_entry(s) for s in ordered],
    }


def slot_entry(slot):
    """The status-file entry of one :class:`~dropr.supervisor.slots.Slot`."""
    return {
        "name": slot.name, "kind": slot.kind, "number": slot.number, "pid": slot.pid,
        "state": str(slot.state), "started": slot.started_wall if slot.alive else None,
        "restarts": slot.restarts, "handled": slot.handled_before + slot.handled,
        "handled_this_life": slot.handled, "max_messages": slot.max_messages,
        "heartbeat": slot.last_report_wall or None, "last_exit": slot.last_exit,
        "error": slot.error, "throttled_until": slot.throttled_until_wall or None,
        "note": slot.note,
    }


def write(path, document):
    """Replace the status file at ``path`` with ``document`` in one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    os.rename(tmp, path)


def remove(path):
    """Remove the status file (clean stop)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read(path):
    """The last status the supervisor wrote, or None if there is none."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def add_live(document, *, sample=0.1, now=None):
    """Add psutil figures (``rss``, ``cpu``) and ages (``uptime``,
    ``heartbeat_age``) to each worker entry; CPU is measured over ``sample`` s."""
    procs = {}
    for entry in document.get("workers", []):
        entry.update(rss=None, cpu=None)
        if not entry.get("pid"):
            continue  # psutil.Process(None) would be this very process
        with contextlib.suppress(psutil.Error, TypeError, ValueError):
            proc = psutil.Process(entry["pid"])
            proc.cpu_percent(None)
            procs[entry["name"]] = proc
    if procs and sample:
        time.sleep(sample)
    now = time.time() if now is None else now
    for entry in document.get("workers", []):
        proc = procs.get(entry["name"])
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                entry["rss"] = proc.memory_info().rss
                entry["cpu"] = round(proc.cpu_percent(None), 1)
        entry["uptime"] = now - entry["started"] if entry.get("started") else None
        entry["heartbeat_age"] = now - entry["heartbeat"] if entry.get("heartbeat") else None
    return document


_COLUMNS = ("NAME", "PID", "STATE", "UPTIME", "RESTARTS", "RSS", "CPU%", "HANDLED", "HEARTBEAT",
            "LAST EXIT")


def render(document, counts):
    """The human table for ``droprd status``."""
    up = _age(time.time() - document["started"]) if document.get("started") else "-"
    lines = [f"droprd {document.get('state', 'running')}, pid {document['pid']}, up {up}, "
             f"config {document.get('config', '?')}"]
    rows = [_COLUMNS] + [_row(e) for e in document.get("workers", [])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for entry in document.get("workers", []):
        if entry.get("throttled_until"):
            until = time.strftime("%H:%M:%S", time.localtime(entry["throttled_until"]))
            lines.append(f"{entry['name']}: throttled until {until}: {entry.get('error', '')}")
        elif entry.get("error"):
            lines.append(f"{entry['name']}: {entry['error']}")
        if entry.get("note"):
            lines.append(f"{entry['name']}: {entry['note']}")
    reload = document.get("reload") or {}
    if reload.get("error"):
        lines.append(f"last reload refused: {reload['error']}")
    lines.append("spool: " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def _row(e):
    return (e["name"], str(e["pid"] or "-"), e["state"], _age(e.get("uptime")),
            str(e["restarts"]), _size(e.get("rss")), _num(e.get("cpu")), str(e["handled"]),
            _age(e.get("heartbeat_age")), e.get("last_exit") or "-")


def _age(seconds):
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def _size(n):
    if n is None:
        return "-"
    return f"{n / (1 << 20):.1f}M"


def _num(x):
    return "-" if x is None else f"{x:.1f}"
