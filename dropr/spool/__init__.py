"""The client spool: its directory layout (``spool``) and file-name format (``naming``)."""

from dropr.spool.filenames import SpoolName, parse, quote, spool_name, unquote
from dropr.spool.spool import STATES, ActiveDir, Spool, fsync_dir

__all__ = ["STATES", "ActiveDir", "Spool", "SpoolName", "fsync_dir", "parse", "quote",
           "spool_name", "unquote"]
