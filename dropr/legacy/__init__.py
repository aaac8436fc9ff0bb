"""The PHP dropr (2008) as a neighbour: the strict reader and writer of PHP's
``serialize()`` format its clients speak (:mod:`dropr.legacy.phpser`), used by
the receiver's legacy path (:mod:`dropr.receiver.legacy`)."""
