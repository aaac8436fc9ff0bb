"""``dropr bench``: run the scenarios on a fresh filesystem and print one table.

    dropr bench [--fs ext4|tmpfs|here] [--runs 3] [--quick] [--only NAME,...]
                [--fsync on|off|both] [--messages N] [--waiting N]
                [--large-mib N] [--json FILE]

Runs in the foreground, in the bench's own process; a live line on stderr
shows the scenario, the run, the elapsed time and what it is doing."""

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import threading
import time

from dropr.bench import fs, report
from dropr.errors import BenchError, DroprError

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One scenario: ``measure(ctx, root, fsync[, state])`` per run; a
    ``setup(ctx, root)`` one makes its filesystem once for all its runs."""

    measure: object
    setup: object = None


#: The scenarios, in the order they run.
SCENARIOS = ("put", "drain", "steady", "latency", "post", "calls", "large", "waiting",
             "jetstream")


def load_scenario(name):
    """The Scenario called ``name`` (imported only when the bench runs: the
    ``dropr`` command line loads this module for its options)."""
    from dropr.bench import memory, scenarios

    if name in ("large", "waiting"):
        return Scenario(getattr(memory, name), setup=getattr(memory, f"{name}_setup", None))
    return Scenario(getattr(scenarios, name))


class Progress:
    """A live line on stderr, redrawn twice a second so a long step never looks hung."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.stage, self.detail = "", ""
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._draw(end=True)

    def begin(self, stage):
        """A new stage (scenario, fsync, run); its clock starts now."""
        self.stage, self.detail, self.started = stage, "", time.monotonic()
        self._draw()

    def say(self, detail):
        """What the stage is doing now (counts)."""
        self.detail = detail

    def _run(self):
        while not self._stop.wait(0.5):
            self._draw()

    def _draw(self, end=False):
        with self._lock:
            text = f"{self.stage}  {time.monotonic() - self.started:6.1f}s  {self.detail}"
            self.stream.write("\r\033[K" + (text[:150] if not end else ""))
            self.stream.flush()


@dataclasses.dataclass
class Context:
    """What every scenario gets: the sizes and the progress line."""

    sizes: object  # scenarios.Sizes
    progress: Progress
    notes: list = dataclasses.field(default_factory=list)


def add_arguments(p):
    """The options of ``dropr bench`` on parser ``p``."""
    p.add_argument("--fs", choices=fs.KINDS, default="ext4",
                   help="fresh journaled ext4 in a loop-mounted file (default; root), "
                        "fresh tmpfs (root), or the current directory's filesystem")
    p.add_argument("--runs", type=_positive, default=3, help="runs per figure (median; default 3)")
    p.add_argument("--quick", action="store_true", help="everything scaled down, for development")
    p.add_argument("--only", type=_names, help=f"comma-separated: {','.join(SCENARIOS)}")
    p.add_argument("--fsync", choices=("on", "off", "both"), default="both")
    p.add_argument("--messages", type=_positive, help="messages per run, fsync off (fsync on: a tenth)")
    p.add_argument("--waiting", type=_positive, help="messages waiting in the deep spool")
    p.add_argument("--large-mib", type=_positive, help="size of the large message, MiB")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _names(text):
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown scenario {','.join(unknown) or text!r}: "
                                         f"expected some of {','.join(SCENARIOS)}")
    return chosen


def sizes_of(args):
    """The Sizes for these options."""
    from dropr.bench.scenarios import Sizes

    base = Sizes()
    if args.quick:
        base = Sizes(messages=2_000, latency=200, posts=1_600, large=32 << 20,
                               waiting=100_000)
    changes = {"messages": args.messages, "waiting": args.waiting,
               "large": args.large_mib and args.large_mib << 20}
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v})


def fs_size(sizes, *, deep=False):
    """(bytes, inodes) of a fresh filesystem big enough for a scenario: the put
    scenario makes up to ten files per message (four producers and four raw
    loops), the deep spool one per waiting message."""
    per_file = 4096 + 512  # a data block and an inode's share, with room to spare
    files = (sizes.waiting + 2_000 if deep else 0) + 10 * sizes.messages
    size = max(2 * GiB, files * per_file * 3 // 2 + 4 * sizes.large + GiB)
    return size, int(files * 1.3) + 10_000


def header(args, sizes):
    """The machine and the run, for the table's header and the JSON."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return {"command": "dropr bench " + " ".join(shlex.quote(a) for a in args.argv),
            "machine": f"{os.cpu_count()} CPUs, {mem:.0f} GiB, Linux {platform.release()}, "
                       f"Python {platform.python_version()}",
            "sizes": dataclasses.asdict(sizes), "fs_kind": args.fs}


def run(args, out=sys.stdout):
    """Run the chosen scenarios; print the header and the table. Returns the rows."""
    sizes = sizes_of(args)
    head = header(args, sizes)
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.fsync]
    samples = {}
    with Progress() as progress:
        ctx = Context(sizes, progress)
        for name in args.only or list(SCENARIOS):
            _run_scenario(ctx, args, name, modes, samples, head)
    rows = report.summarize(samples)
    for key in ("command", "machine", "filesystem"):
        print(f"{key}: {head.get(key, '?')}", file=out)
    print(f"sizes: {sizes.messages} x {sizes.size} B messages per run (fsync on: "
          f"{sizes.count(True)}), {sizes.latency} latency puts, {sizes.posts} POSTs, "
          f"{sizes.large >> 20} MiB large, {sizes.waiting:,} waiting; median of {args.runs} runs",
          file=out)
    print(report.table(rows), file=out)
    for note in ctx.notes:
        print(f"note: {note}", file=out)
    if args.json:
        report.write_json(args.json, {**head, "notes": ctx.notes}, rows)
    return rows


def _run_scenario(ctx, args, name, modes, samples, head):
    scenario = load_scenario(name)
    size, inodes = fs_size(ctx.sizes, deep=name == "waiting")
    if scenario.setup:
        with fs.fresh(args.fs, base=os.getcwd(), size=size, inodes=inodes) as root:
            head.setdefault("filesystem", fs.describe(root))
            ctx.progress.begin(f"{name}: set-up")
            state = scenario.setup(ctx, root)
            for fsync in modes:
                for i in range(args.runs):
                    _one(ctx, name, fsync, i, args.runs, samples,
                         lambda: scenario.measure(ctx, root, fsync, state))
        return
    def on_fresh_fs(fsync):
        with fs.fresh(args.fs, base=os.getcwd(), size=size, inodes=inodes) as root:
            head.setdefault("filesystem", fs.describe(root))
            return scenario.measure(ctx, root, fsync)
    for fsync in modes:
        for i in range(args.runs):
            _one(ctx, name, fsync, i, args.runs, samples, lambda: on_fresh_fs(fsync))


def _one(ctx, name, fsync, i, runs, samples, measure):
    """One run; a run that fails is noted and made once more, on a fresh
    filesystem but for the deep spool's (a bench that hides failures would
    lie, one that dies at the end of a long run helps nobody: the note goes
    into the output)."""
    stage = f"{name} fsync {'on' if fsync else 'off'} run {i + 1}/{runs}"
    ctx.progress.begin(stage)
    try:
        results = measure()
    except BenchError as e:
        ctx.notes.append(f"{stage} failed and was run again: {e}")
        ctx.progress.begin(stage + " (again)")
        results = measure()
    for key, value in results.items():
        samples.setdefault((key, fsync), []).append(value)


def main(args):
    """``dropr bench`` with parsed ``args`` (``args.argv``: the raw options)."""
    try:
        run(args)
    except (DroprError, OSError) as e:
        print(f"\ndropr bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
