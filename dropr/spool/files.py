"""What counts as a message file in the client spool, and how one is opened.

A producer that can write the spool can put anything there: a symlink to a
file only droprd's user may read, a FIFO, a folder, a second name (hard link)
of another file. None of them is a message. Claims take only a regular file
with one link; the sender opens it without following a symlink and reads the
descriptor it checked, never the path again; moves refuse anything but a
regular file.
"""

import errno
import os
import stat

from dropr.errors import NotAMessage

#: Beside a message in ``dead/``: ``<name>.reason`` says why it was given up.
REASON_SUFFIX = ".reason"

#: How a message file is opened: never through a symlink, never blocking on a FIFO.
_OPEN_MESSAGE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def is_message_file(st):
    """True if ``st`` (an ``lstat``/``fstat`` result) is a regular file with one
    link: a symlink, a folder, a FIFO or a second name of another file (a hard
    link a producer made to a file it may not read) is never taken for a message."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def open_message(path):
    """(fd, size) of the message file ``path``, opened without following a
    symlink and checked on the open descriptor; the caller reads from that fd
    and closes it. NotAMessage for anything but a regular file with one link."""
    try:
        fd = os.open(path, _OPEN_MESSAGE)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotAMessage(f"{path} is a symlink, not a message") from None
        raise
    try:
        st = os.fstat(fd)
        if not is_message_file(st):
            raise NotAMessage(f"{path} is not a regular file with one link")
        os.set_blocking(fd, True)
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


def check_message(path):
    """NotAMessage unless ``path`` (not followed) is a regular file. (A second
    link does no harm to a move; only reading one is refused.)"""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise NotAMessage(f"{path} is not a regular file: not moved")
