"""The bench's results: the figures, their targets, the median of the runs,
and the one table it prints (or the JSON it writes). Runs in the bench
process; pure functions over plain data."""

import json
import statistics

#: key -> (label, unit, kind). kind "rate": fraction = value / limit; "time":
#: fraction = limit / value (how close to the raw loop's time per file);
#: None: no limit to compare with.
FIGURES = {
    "put1": ("put, 1 producer", "msg/s", "rate"),
    "put1d": ("put, 1 producer, droprd running", "msg/s", "rate"),
    "put4": ("put, 4 producers", "msg/s", "rate"),
    "put_many100": ("put_many x100 (limit: put one by one)", "msg/s", "rate"),
    "drain": ("e2e drain (spool full, 1 sender)", "msg/s", "rate"),
    "drain2": ("e2e drain (spool full, 2 senders)", "msg/s", "rate"),
    "steady": ("e2e steady (2 producers, droprd)", "msg/s", "rate"),
    "lat_p50": ("idle latency p50", "ms", "time"),
    "lat_p99": ("idle latency p99", "ms", "time"),
    "lat_max": ("idle latency max", "ms", "time"),
    "post8": ("plain POST, 8 clients (limit: bare falcon app)", "req/s", "rate"),
    "call1": ("call to a cat responder, 1 caller (limit: POST)", "calls/s", "rate"),
    "call8": ("call to a cat responder, 8 callers (limit: POST)", "calls/s", "rate"),
    "call_p50": ("call p50, 1 caller (limit: spawning cat)", "ms", "time"),
    "call_p99": ("call p99, 1 caller (limit: spawning cat)", "ms", "time"),
    "large_mibs": ("large message, put to stored", "MiB/s", "rate"),
    "large_growth": ("large: most any process grew", "MiB", None),
    "large_rss_producer": ("large: producer peak RSS", "MiB", None),
    "large_rss_sender": ("large: sender peak RSS", "MiB", None),
    "large_rss_receiver": ("large: receiver peak RSS", "MiB", None),
    "wait_select_small_first": ("first batch: selection, 1,000 waiting", "ms", None),
    "wait_select_deep_first": ("first batch: selection, deep spool", "ms", None),
    "wait_ratio_first": ("first batch: selection deep / 1,000", "x", None),
    "wait_batch_small_first": ("first batch: whole, 1,000 waiting", "ms", None),
    "wait_batch_deep_first": ("first batch: whole, deep spool", "ms", None),
    "wait_select_small_next": ("next batch: selection, 1,000 waiting", "ms", None),
    "wait_select_deep_next": ("next batch: selection, deep spool", "ms", None),
    "wait_ratio_next": ("next batch: selection deep / 1,000", "x", None),
    "wait_batch_small_next": ("next batch: whole, 1,000 waiting", "ms", None),
    "wait_batch_deep_next": ("next batch: whole, deep spool", "ms", None),
    "wait_rss_sender": ("deep spool: sender peak RSS", "MiB", None),
    "wait_rss_receiver": ("deep spool: receiver peak RSS", "MiB", None),
    "js_drain": ("JetStream R3 e2e drain (1 sender)", "msg/s", "rate"),
    "js_drain2": ("JetStream R3 e2e drain (2 senders)", "msg/s", "rate"),
}


#: Figures measured only with fsync on (put_many's one flush matters only there).
FSYNC_ONLY = frozenset({"put_many100"})


def _at_least(n):
    return (f">= {n:,}", lambda v, lim: v >= n)


def _of_limit(fraction):
    return (f">= {fraction:g} of limit", lambda v, lim: lim is not None and v >= fraction * lim)


def _at_most(n, unit=""):
    return (f"<= {n:g}{unit}", lambda v, lim: v <= n)


#: (key, fsync or None for both) -> (text, predicate(value, limit)).
TARGETS = {
    ("put1", False): _of_limit(0.8),
    ("put1d", False): _of_limit(0.8),
    ("put_many100", True): _of_limit(10),
    ("drain", False): _of_limit(0.5),
    ("drain", True): _at_least(10_000),
    ("drain2", False): _of_limit(0.66),
    ("drain2", True): _at_least(10_000),
    ("js_drain", None): _at_least(8_000),
    ("lat_p50", None): _at_most(2, " ms"),
    ("lat_p99", None): _at_most(10, " ms"),
    ("post8", False): _of_limit(0.8),
    ("large_growth", None): _at_most(64, " MiB"),
    ("wait_ratio_first", None): _at_most(2, "x"),
    ("wait_ratio_next", None): _at_most(2, "x"),
    ("wait_rss_sender", None): _at_most(100, " MiB"),
}


def target(key, fsync):
    """The (text, predicate) target of a figure at an fsync setting, or None."""
    return TARGETS.get((key, fsync)) or TARGETS.get((key, None))


def summarize(samples):
    """Rows from samples {(key, fsync): [(value, limit), ...]}: the median value
    and median limit of the runs, the fraction, the target and whether it is met."""
    rows = []
    for (key, fsync), runs in sorted(samples.items(), key=_order):
        label, unit, kind = FIGURES[key]
        value = statistics.median(v for v, _ in runs)
        limits = [lim for _, lim in runs if lim is not None]
        lim = statistics.median(limits) if limits else None
        fraction = _fraction(kind, value, lim)
        goal = target(key, fsync)
        rows.append({"figure": key, "label": label, "unit": unit, "fsync": fsync,
                     "value": value, "limit": lim, "fraction": fraction, "runs": len(runs),
                     "samples": [v for v, _ in runs],
                     "target": goal[0] if goal else None,
                     "met": goal[1](value, lim) if goal else None})
    return rows


def _order(item):
    (key, fsync), _ = item
    return list(FIGURES).index(key), fsync


def _fraction(kind, value, lim):
    if kind is None or not lim or not value:
        return None
    return value / lim if kind == "rate" else lim / value


def _num(x):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def table(rows):
    """The results as one plain-text table (Markdown-compatible)."""
    head = ["figure", "fsync", "value", "limit", "of limit", "target", "met?"]
    body = [[f"{r['label']} ({r['unit']})", "on" if r["fsync"] else "off", _num(r["value"]),
             _num(r["limit"]), "-" if r["fraction"] is None else f"{r['fraction']:.0%}",
             r["target"] or "-", {True: "yes", False: "NO", None: "-"}[r["met"]]]
            for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    right = {2, 3, 4}

    def line(cells):
        out = [c.rjust(w) if i in right else c.ljust(w)
               for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(out) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def write_json(path, header, rows):
    """The header (machine, fs, command) and the rows, as JSON."""
    with open(path, "w") as f:
        json.dump({"header": header, "results": rows}, f, indent=2)
        f.write("\n")
