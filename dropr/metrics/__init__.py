"""The metrics role: the producer host's Prometheus metrics.

:mod:`~dropr.metrics.host` (what a scrape gathers),
:mod:`~dropr.metrics.shell` (the ``dropr: metrics`` process).
"""
