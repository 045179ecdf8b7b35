"""The matchbox data directory, read live and leniently.

Layout: profiles/<id>.json, groups/*.json, ignition/<name>, generic/<name>, assets/.
- Edits on disk are seen by the next request: every lookup stats the file (groups: one directory scan plus a
  stat per file), and a file is read and parsed again only when its mtime, size or inode changed. The
  groups and profiles (what /ipxe reads per request) skip even the stats while nothing changed: an inotify
  watch on the data dir, groups/, profiles/ and each of their files read (a watch on a file follows a
  symlink to its target and sees writes through any hard link) is read without blocking before each
  lookup, and any event (or an overflow of its queue) drops what was remembered. The kernel queues the
  event within the write, rename or unlink itself, so a request that comes after an edit always sees it.
  Where inotify is not available the stats are done every time.
- `generation()` numbers those quiet spells, so the HTTP side can keep what it derived from groups and
  profiles (the group and profile chosen for a query) and know, with the same one check per request, when
  it must forget it (appliance/http/common.py).
- A file matchbox would fail to load is skipped with a warning (logged once per version of the file), as
  matchbox skips it; the other files keep serving.
- Names are confined to their subdirectory (`ignition_id: ../profiles/x.json` is refused); matchbox confines
  them only to the data root.
- Groups made from bootd.yaml's machines are listed before the data dir's groups, so they win a tie with a
  data-dir group that has the same selectors.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import select
import stat
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Generic, TypeVar

from appliance.config import Config
from appliance.ignition import RAW_IGNITION_SUFFIXES
from appliance.paths import OutsideRoot, confine
from appliance.store.model import Group, InvalidDocument, Profile, parse_group, parse_profile
from appliance.store.selection import order_groups
from appliance.templates.compiled import check_template

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Documents larger than this are refused: a profile, group or config is a few KiB; 16 MiB is generous and
# keeps a stray disk image in ignition/ from being read into memory per request.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


def _plain_name(name: str) -> bool:
    """A single file name with nothing that could leave the directory lexically."""
    return bool(name) and "/" not in name and "\\" not in name and "\0" not in name and name not in (".", "..")


@dataclass(frozen=True, slots=True)
class _Version:
    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Version:
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


class _ParsedFiles(Generic[T]):
    """path -> (file version, parsed value or the reason it did not parse)."""

    def __init__(self, parse: Callable[[bytes, Path], T]) -> None:
        self._parse = parse
        self._entries: dict[Path, tuple[_Version, T | None, str | None]] = {}

    def get(self, path: Path, st: os.stat_result | None = None) -> tuple[T | None, str | None]:
        """(value, None), (None, reason) or (None, None) for a missing file."""
        if st is None:
            try:
                st = os.stat(path)
            except OSError:
                self._entries.pop(path, None)
                return None, None
        version = _Version.of(st)
        cached = self._entries.get(path)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        value: T | None = None
        reason: str | None = None
        if st.st_size > MAX_DOCUMENT_BYTES:
            reason = f"larger than {MAX_DOCUMENT_BYTES} bytes"
        else:
            try:
                with open(path, "rb") as f:
                    value = self._parse(f.read(MAX_DOCUMENT_BYTES + 1), path)
            except (OSError, InvalidDocument) as exc:
                reason = str(exc)
        if reason is not None:
            logger.warning("skipping %s: %s", path, reason)
        self._entries[path] = (version, value, reason)
        return value, reason

    def forget_except(self, keep: set[Path]) -> None:
        for path in [p for p in self._entries if p not in keep]:
            del self._entries[path]


class _Watch:
    """Whether anything under the watched paths may have changed since the last `changed()` (inotify)."""

    # IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF,
    # IN_MOVE_SELF (an overflow of the queue is always reported, and read as a change too)
    MASK = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self.watched: set[Path] = set()
        # poll(0) says "nothing queued" without an exception: ~0.5 us against ~1.4 us for a read raising
        # BlockingIOError, and this runs once per /ipxe request.
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        weakref.finalize(self, os.close, fd)  # a reload builds a new DataDir: the old one's watch goes with it

    def add(self, path: Path) -> bool:
        """Watch `path` (a directory's entries, or a file's content); False when it cannot be watched."""
        if path in self.watched:
            return True
        if self._add(self.fd, os.fsencode(path), self.MASK) < 0:
            return False
        self.watched.add(path)
        return True

    def changed(self) -> bool:
        if not self._poll.poll(0):
            return False
        try:
            os.read(self.fd, 65536)
        except BlockingIOError:
            pass
        self.watched.clear()  # a watch may be gone (a file replaced): every path is added again when read
        return True


def _new_watch() -> _Watch | None:
    try:
        return _Watch()
    except (OSError, AttributeError) as exc:  # no inotify (another OS, a seccomp filter): stat every time
        logger.info("data dir: no inotify (%s); every lookup stats its files", exc)
        return None


def machine_groups(config: Config) -> tuple[Group, ...]:
    """One group per configured machine that names a profile: selector mac, metadata from the config."""
    groups = []
    for m in config.machines:
        if m.profile is None:
            continue
        metadata = {"name": m.name, "fqdn": config.fqdn(m.name)}
        if config.domain:
            metadata["domain"] = config.domain
        if m.ip is not None:
            metadata["ip"] = str(m.ip)
        if m.role is not None:
            metadata["role"] = m.role.value
        metadata.update(m.metadata)
        groups.append(Group(
            id=m.name,
            name=m.name,
            profile=m.profile,
            selector=MappingProxyType({"mac": m.mac}),
            metadata=MappingProxyType(metadata),
            source=f"{config.source.name}:{m.line}",
        ))
    return tuple(groups)


def _serialised(method: Callable[..., R]) -> Callable[..., R]:
    """One reader at a time: the HTTP side reads on the event loop, the read-write API's handlers in worker
    threads, and both fill the same caches (a dict changed while another thread iterates it raises)."""
    @functools.wraps(method)
    def locked(self: DataDir, *args: object, **kwargs: object) -> R:
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class DataDir:
    def __init__(self, root: Path, extra_groups: Iterable[Group] = ()) -> None:
        self._lock = threading.RLock()
        self.root = root
        self.profiles_dir = root / "profiles"
        self.groups_dir = root / "groups"
        self.ignition_dir = root / "ignition"
        self.generic_dir = root / "generic"
        self.cloud_dir = root / "cloud"
        self.extra_groups = tuple(extra_groups)
        self._profiles: _ParsedFiles[Profile] = _ParsedFiles(lambda data, _p: parse_profile(data))
        self._groups: _ParsedFiles[Group] = _ParsedFiles(lambda data, p: parse_group(data, source=f"groups/{p.name}"))
        self._raw: _ParsedFiles[bytes] = _ParsedFiles(lambda data, _p: data)
        # Confinement verdicts: path -> (device, inode) of the file that was checked to be inside its root.
        # The same file found again needs no realpath walk; a changed symlink finds another inode.
        self._inside: dict[Path, tuple[int, int]] = {}
        self._ordered: tuple[tuple[object, ...], list[Group]] | None = None
        self._listing: tuple[_Version, list[Path]] | None = None
        # What groups() and profile() returned, kept while the watch reports no change (None: not kept)
        self._watch = _new_watch()
        self._quiet_groups: list[Group] | None = None
        self._quiet_profiles: dict[str, Profile | None] = {}
        # Bumped at each change the watch reports; `_unwatched`: a group or profile was read without a watch
        # since then (it could change unseen), so this generation must not be kept by anyone.
        self._generation = 0
        self._unwatched = False

    def _still_quiet(self) -> bool:
        """False (and what was kept forgotten) when something under the watch changed, or there is no watch."""
        if self._watch is None:
            return False
        if self._watch.changed():
            self._generation += 1
            self._unwatched = False
            self._quiet_groups = None
            self._quiet_profiles.clear()
            # parsed again too: an edit of the same size within the same clock tick keeps mtime and size
            self._groups.forget_except(set())
            self._profiles.forget_except(set())
            self._ordered = None
            return False
        return True

    def _watched(self, *paths: Path) -> bool:
        """Watch these paths (and the data dir with them); True when all are watched."""
        watch = self._watch
        return watch is not None and all(watch.add(p) for p in (self.root, *paths))

    # --- reads on the request path ----------------------------------------------------------------

    @_serialised
    def generation(self) -> int | None:
        """A number that stays the same exactly while what `groups()` and `profile()` return stays the same;
        None when that cannot be known (no inotify, a change seen just now, or a file read that could not be
        watched): then nothing derived from them may be kept. A caller keeps a value it derived only when the
        generation was the same before and after deriving it."""
        if not self._still_quiet() or self._unwatched:
            return None
        return self._generation

    @_serialised
    def groups(self) -> list[Group]:
        """Every group in selection order: configured machines first, then groups/*.json by file name."""
        if self._still_quiet() and self._quiet_groups is not None:
            return self._quiet_groups
        watched = self._watched(self.groups_dir)  # before the reads: an edit during them is an event
        loaded: list[Group] = []
        signature: list[object] = []
        for path in self._group_files():
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            watched = watched and self._watch is not None and self._watch.add(path)
            group, _reason = self._groups.get(path, st)
            signature.append((path.name, _Version.of(st)))
            if group is not None:
                loaded.append(group)
        key = tuple(signature)
        if self._ordered is None or self._ordered[0] != key:
            self._ordered = (key, order_groups([*self.extra_groups, *loaded]))
        self._quiet_groups = self._ordered[1] if watched else None
        self._unwatched = self._unwatched or not watched
        return self._ordered[1]

    def _group_files(self) -> list[Path]:
        """groups/*.json by name; listed again only when the directory changed (a file added, removed,
        renamed). Edits inside a file are caught by the per-file stat in `groups`."""
        try:
            version = _Version.of(os.stat(self.groups_dir))
        except OSError:
            self._listing = None
            return []
        if self._listing is None or self._listing[0] != version:
            names = sorted(e.name for e in os.scandir(self.groups_dir) if e.name.endswith(".json"))
            paths = [self.groups_dir / name for name in names]
            self._groups.forget_except(set(paths))
            self._listing = (version, paths)
        return self._listing[1]

    @_serialised
    def profile(self, profile_id: str) -> Profile | None:
        if self._still_quiet() and profile_id in self._quiet_profiles:
            return self._quiet_profiles[profile_id]
        name = profile_id + ".json"
        watched = _plain_name(name) and self._watched(self.profiles_dir, self.profiles_dir / name)
        found = self._locate(self.profiles_dir, name)
        profile = self._profiles.get(*found)[0] if found else None
        if watched and len(self._quiet_profiles) < 10_000:
            self._quiet_profiles[profile_id] = profile
        else:
            self._unwatched = True
        return profile

    @_serialised
    def ignition(self, name: str) -> bytes | None:
        return self._read(self.ignition_dir, name)

    @_serialised
    def generic(self, name: str) -> bytes | None:
        return self._read(self.generic_dir, name)

    @_serialised
    def cloud(self, name: str) -> bytes | None:
        return self._read(self.cloud_dir, name)

    def _read(self, root: Path, name: str) -> bytes | None:
        found = self._locate(root, name)
        return self._raw.get(*found)[0] if found else None

    def _locate(self, root: Path, name: str) -> tuple[Path, os.stat_result] | None:
        """The file `name` names inside `root` and its stat, or None (missing, or refused and logged)."""
        try:
            path = root.joinpath(name) if _plain_name(name) else confine(root, name)
            st = os.stat(path)
        except OutsideRoot as exc:
            logger.warning("%s/%s refused: %s", root.name, name, exc)
            return None
        except OSError:
            return None
        identity = (st.st_dev, st.st_ino)
        if self._inside.get(path) != identity:
            try:
                confine(root, name)
            except OutsideRoot as exc:
                logger.warning("%s/%s refused: %s", root.name, name, exc)
                return None
            if len(self._inside) > 10_000:
                self._inside.clear()
            self._inside[path] = identity
        return path, st

    # --- the whole-directory check for `bootd check` ----------------------------------------------

    @_serialised
    def check(self) -> list[str]:
        """Every problem matchbox would skip over silently, one line each."""
        problems: list[str] = []
        if not self.root.is_dir():
            return [f"data dir {self.root} does not exist"]
        if not self.groups_dir.is_dir():
            problems.append(f"{self.groups_dir}: missing (only groups from the config can match)")
        else:
            for entry in sorted(os.scandir(self.groups_dir), key=lambda e: e.name):
                if entry.is_dir():
                    problems.append(f"groups/{entry.name}: a directory; matchbox's groups/ is flat, skipped")
                elif not entry.name.endswith(".json"):
                    problems.append(f"groups/{entry.name}: not a .json file, skipped")
                elif (reason := self._groups.get(Path(entry.path))[1]) is not None:
                    problems.append(f"groups/{entry.name}: {reason}")
        if self.profiles_dir.is_dir():
            for entry in sorted(os.scandir(self.profiles_dir), key=lambda e: e.name):
                if entry.name.endswith(".json") and (reason := self._profiles.get(Path(entry.path))[1]):
                    problems.append(f"profiles/{entry.name}: {reason}")
        groups = self.groups()
        by_selector: dict[str, Group] = {}
        for group in groups:
            where = group.source or group.id
            if not group.profile:
                problems.append(f"{where}: group {group.id!r} names no profile")
                continue
            profile = self.profile(group.profile)
            if profile is None:
                problems.append(f"{where}: group {group.id!r}: profile {group.profile!r} is missing or invalid")
            else:
                problems.extend(self._check_profile(profile, where))
            if (other := by_selector.get(group.selector_string)) is not None:
                problems.append(
                    f"{where}: group {group.id!r} has the same selectors as {other.source or other.id} "
                    f"({group.selector_string or 'default group'}); {other.source or other.id} wins")
            else:
                by_selector[group.selector_string] = group
        return problems

    def _check_profile(self, profile: Profile, where: str) -> list[str]:
        problems = []
        for kind, name, reader in (("ignition", profile.ignition_id, self.ignition),
                                   ("generic", profile.generic_id, self.generic), ("cloud", profile.cloud_id, self.cloud)):
            if name and reader(name) is None:
                problems.append(f"{where}: profile {profile.id!r}: {kind}/{name} is missing or refused")
        return problems

    @_serialised
    def template_errors(self) -> list[str]:
        """Every template in ignition/ (not raw .ign), generic/ and cloud/ that does not parse: file, line,
        construct. These are errors for `bootd check`: a machine would get a 404."""

        errors = []
        for directory in (self.ignition_dir, self.generic_dir, self.cloud_dir):
            if not directory.is_dir():
                continue
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                if not entry.is_file() or entry.name.endswith(RAW_IGNITION_SUFFIXES):
                    continue
                source = self._read(directory, entry.name)
                if source is not None and (error := check_template(source, f"{directory.name}/{entry.name}")):
                    errors.append(error)
        return errors
