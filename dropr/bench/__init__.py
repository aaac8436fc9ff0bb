"""``dropr bench``: the benchmark instrument.

It makes a fresh filesystem (or uses the current one), starts its own
receiver, senders and producers on loopback with a generated config, runs each
scenario at least three times, and prints one table: each figure is the
median of the runs, beside the machine's own limit measured in the same run
(a plain create + write + rename loop of files of the same size), the
fraction of that limit, and the target. Everything runs in the bench's own
process tree and is stopped by pid or process group.

Modules: :mod:`fs` (where it measures), :mod:`limit` (the raw loop),
:mod:`configfile` (the one writer of a run's dropr.toml, which the tests
and the chaos scripts use too), :mod:`procs` (receiver, tree, probes),
:mod:`probe` (the child processes that put, send and post), :mod:`scenarios`,
:mod:`report` (targets and the table), :mod:`cli` (``dropr bench``).
"""
