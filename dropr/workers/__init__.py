"""What every worker shares: :mod:`~dropr.workers.base` (the
:class:`~dropr.workers.base.Worker` process) and :mod:`~dropr.workers.kinds`
(one record per worker kind: its name, title, order, silence limit, message
budget and the class that runs it). Each kind's class lives in its role's
package (``dropr/sender/shell.py``, ``dropr/reaper/shell.py``, ...).
"""
