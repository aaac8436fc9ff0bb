"""The sender role: claims batches from the client spool and uploads them.

:mod:`~dropr.sender.sender` (the :class:`Sender`: claim, lanes, settle),
:mod:`~dropr.sender.transport` (pycurl uploads and probes),
:mod:`~dropr.sender.counts` (the senders' counts for droprd's metrics),
:mod:`~dropr.sender.shell` (the ``dropr: sender N`` process under droprd).
"""
