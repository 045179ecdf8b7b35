"""The files TFTP serves: the firmware directory first (the iPXE binaries bootd hands out), then the
config's TFTP root. Contents are kept in memory and re-read only when a file changes (mtime, size, inode),
so a boot storm reads each binary once. Names are confined to their root (store.confine: no `..`, no
absolute path, no NUL or backslash, no symlink pointing out)."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.events import EventKind
from appliance.paths import OutsideRoot, confine

logger = logging.getLogger(__name__)

MAX_FILE = 256 * 1024 * 1024  # past this a file is refused: TFTP is for boot loaders, not disk images
CACHE_BYTES = 512 * 1024 * 1024
# Files up to this size are read whole and kept (the iPXE binaries are ~1 MB: a boot storm reads each once);
# larger ones are read block by block as the transfer goes, so a request never stalls the event loop on a
# read of hundreds of MB.
WHOLE_FILE = 8 * 1024 * 1024


class FileRefused(Exception):
    """The name is not allowed (it would leave the root, or names something that is not a file)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    version: tuple[int, int, int]
    content: bytes


class FileBlocks:
    """A large file read block by block (os.pread) while it is served: sliceable and sized like bytes.

    Not mmap: a file truncated in place while mapped would kill bootd with SIGBUS; pread only reads short.
    """

    def __init__(self, path: Path, size: int) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, part: slice) -> bytes:
        start, stop, _ = part.indices(self._size)
        try:
            return os.pread(self._fd, max(0, stop - start), start)
        except OSError as exc:
            logger.warning("tftp: reading block at %d failed: %s", start, exc)
            return b""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class TftpFiles:
    def __init__(self, roots: list[Path], generated: Callable[[str], bytes | None] | None = None,
                 mounts: Mapping[str, Path] | None = None,
                 step_of: Callable[[str, str], EventKind] | None = None) -> None:
        self.roots = roots
        # What the network GRUB asks for by absolute name (appliance/grubnet.py): files bootd makes itself
        # (`generated`: name -> content, None when not one of them) and directories under a fixed prefix
        # (`mounts`: "/assets/" -> the assets root). Every other absolute name stays refused.
        self.generated = generated
        self.mounts = dict(mounts or {})
        # (name, client address) -> the step of the machine's boot a finished transfer is; None: TFTP
        self.step_of = step_of
        self._cache: OrderedDict[Path, _Entry] = OrderedDict()
        self._cached_bytes = 0

    def read(self, name: str) -> bytes | FileBlocks | None:
        """The file's content (a FileBlocks past WHOLE_FILE: the caller closes it), None when no root has it;
        FileRefused for a name that is not allowed."""
        if self.generated is not None and (content := self.generated(name)) is not None:
            return content
        roots = self.roots
        for prefix, root in self.mounts.items():
            if name.startswith(prefix):
                roots, name = [root], name[len(prefix):]
                break
        for root in roots:
            try:
                path = confine(root, name)
            except OutsideRoot as exc:
                raise FileRefused(str(exc)) from None
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not os.path.isfile(path):
                raise FileRefused(f"{name!r} is not a file")
            if st.st_size > MAX_FILE:
                raise FileRefused(f"{name!r} is larger than {MAX_FILE} bytes")
            if st.st_size > WHOLE_FILE:
                return FileBlocks(path, st.st_size)
            return self._content(path, st)
        return None

    def _content(self, path: Path, st: os.stat_result) -> bytes:
        version = (st.st_mtime_ns, st.st_size, st.st_ino)
        entry = self._cache.get(path)
        if entry is not None and entry.version == version:
            self._cache.move_to_end(path)
            return entry.content
        content = path.read_bytes()
        if entry is not None:
            self._cached_bytes -= len(entry.content)
        self._cache[path] = _Entry(version, content)
        self._cached_bytes += len(content)
        while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old.content)
        return content
