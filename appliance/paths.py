"""Names that clients and data files give, confined to the directory they belong in. Shared by every room
that serves files by name (the data dir, /assets/ and /firmware/, TFTP, the read-write API's writes), so
none of them imports another's to get it."""

from __future__ import annotations

import os
from pathlib import Path


class OutsideRoot(ValueError):
    """A name that would leave its subdirectory (`..`, an absolute path, NUL, a symlink pointing out)."""


def confine(root: Path, name: str) -> Path:
    """Path of `name` inside `root`; raises OutsideRoot if it would leave `root`."""
    if not name or "\0" in name or "\\" in name:
        raise OutsideRoot(f"invalid name {name!r}")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("..", ".") for p in parts):
        raise OutsideRoot(f"{name!r} leaves its directory")
    path = root.joinpath(*[p for p in parts if p])
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise OutsideRoot(f"{name!r} resolves outside its directory")
    return path
