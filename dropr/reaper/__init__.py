"""The reaper role: returns dead senders' claims and removes what has outlived its use.

:mod:`~dropr.reaper.reaper` (the :class:`Reaper`),
:mod:`~dropr.reaper.shell` (the ``dropr: reaper`` process).
"""
