"""Opening files a user or a stranger named: regular files only, never more than a stated size.

A path in a job file, a plan or an image folder may name a FIFO (``open`` then waits forever for
a writer), a device (``/dev/zero`` reads forever), a folder, or a file of gigabytes. Everything
here opens without blocking (``O_NONBLOCK``: a FIFO opens at once), checks on the open file that
it is a regular file, and reads at most the stated number of bytes. Problems are a
:class:`FileReadError` (the pack's error family) whose message says what to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import TapTuneError


class FileReadError(TapTuneError):
    """A file that cannot be read as asked: not a regular file, too large, or unreadable."""


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file (links followed); never blocks."""
    name = Path(path).name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise FileReadError(f"cannot be opened ({reason}); check the path and its permissions", file=name) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a pipe, socket or device"
            raise FileReadError(f"is {kind}, not a regular file; name a file", file=name)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, refused (before reading) when larger than ``max_bytes``."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise FileReadError(
                f"is larger than {max_bytes:,} bytes ({size:,}); this is not the file meant, or split it",
                file=Path(path).name,
            )
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise FileReadError(
                f"cannot be read ({exc.strerror or type(exc).__name__})", file=Path(path).name
            ) from None
    if len(data) > max_bytes:  # grew while read
        raise FileReadError(f"is larger than {max_bytes:,} bytes; this is not the file meant", file=Path(path).name)
    return data


def read_regular_text(path: str | os.PathLike[str], max_bytes: int) -> str:
    """The UTF-8 text of the regular file ``path`` (at most ``max_bytes``); :class:`FileReadError` otherwise."""
    data = read_regular(path, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileReadError(f"is not UTF-8 text (byte {exc.start}); save it as UTF-8", file=Path(path).name) from None
