"""What the tests (and the chaos and soak scripts in bench/) run real parts
with: :mod:`~tests.support.harness` (configs, the receiver, forked workers,
the programs a test needs), :mod:`~tests.support.wait` (a condition with a
deadline), :mod:`~tests.support.failing_disk`, the crash-state explorer
(:mod:`~tests.support.crashrecord`, :mod:`~tests.support.crashstates`) and
:mod:`~tests.support.guard` (a test that starts a process is marked
``process``). The config file itself is written by
:mod:`dropr.bench.configfile`, the bench's too."""
