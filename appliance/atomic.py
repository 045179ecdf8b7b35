"""Writing a file so that a crash leaves the old or the new content, never a partial one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600, *, replace: bool = True) -> None:
    """temp file in the same directory, fsync, rename over `path`, fsync the directory. The file gets `mode`
    (0600 unless asked: mkstemp's, safe for secrets). `replace=False`: FileExistsError if `path` exists (the
    temp file is linked in, which fails rather than overwrites), still never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
            os.unlink(temp)
    except BaseException:
        if os.path.lexists(temp):
            os.unlink(temp)
        raise
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    """Make a rename, link or unlink in `path` durable: the directory's own entries are written out."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
