"""The retry-scanner role: brings deferred messages back when they are due.

:mod:`~dropr.retry_scanner.scanner` (the :class:`RetryScanner`),
:mod:`~dropr.retry_scanner.shell` (the ``dropr: retry-scanner`` process).
"""
