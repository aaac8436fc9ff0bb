"""The receiver: a Falcon app that stores uploaded messages in the server store,
served by gunicorn (``dropr receiver``, or a worker of droprd).

:func:`create_app` builds the WSGI app; :mod:`dropr.receiver.serve` runs it.
"""

from dropr.receiver.app import create_app

__all__ = ["create_app"]
