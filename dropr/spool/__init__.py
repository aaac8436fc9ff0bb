"""The client spool: its directory layout (``spool``: the :class:`Spool`,
assembled from a producer's writes in ``intake``, a sender's ``claims`` and the
operator's and reaper's ``upkeep``) and its file-name format (``filenames``)."""

from dropr.fs import fsync_dir
from dropr.spool.claims import ActiveDir
from dropr.spool.filenames import SpoolName, parse, quote, spool_name, unquote
from dropr.spool.spool import STATES, Spool

__all__ = ["STATES", "ActiveDir", "Spool", "SpoolName", "fsync_dir", "parse", "quote",
           "spool_name", "unquote"]
