"""The assets directory as bootd keeps it: one directory per verified version, one pointer per channel.

    <assets>/<os>/<arch>/<version>/            the files of a verified release, and .bootd-release.json
    <assets>/<os>/<arch>/<channel> -> <version>  a relative symlink, replaced by rename (atomic)
    <assets>/<os>/<arch>/.<version>.partial/   a download in progress or kept for resume

Invariants:
- A version directory exists only once every file in it was verified: it is the partial directory renamed
  (one rename on one file system), after its files and the manifest were fsync'ed.
- A channel pointer only ever names a version directory, and moves by rename of a new symlink over it, so a
  reader sees the old or the new version, never a missing one. /assets/ serves through the pointer: its
  target is a sibling inside the assets root, which paths.confine accepts (a link leaving the root is not).
- Pruning removes only versions that no channel pointer and no profile names (`prunable` decides; pure).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance.assets.sources import OsName, version_key
from appliance.atomic import fsync_directory, write_atomically

MANIFEST = ".bootd-release.json"
LOCK = ".bootd-lock"


class StoreError(Exception):
    """The assets directory refused a change; the message names the path and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    os: str
    arch: str
    version: str
    channel: str
    files: tuple[tuple[str, str], ...]  # (name, sha256)
    signer: str  # the primary key fingerprint that signed every file
    source: str  # where it came from (the mirror's URL of the first file's directory)
    verified_at: float

    def to_json(self) -> bytes:
        return json.dumps({"os": self.os, "arch": self.arch, "version": self.version, "channel": self.channel,
                           "files": dict(self.files), "signer": self.signer, "source": self.source,
                           "verified_at": self.verified_at}, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        return cls(os=str(raw["os"]), arch=str(raw["arch"]), version=str(raw["version"]),
                   channel=str(raw.get("channel", "")), files=tuple(sorted(raw["files"].items())),
                   signer=str(raw["signer"]), source=str(raw.get("source", "")),
                   verified_at=float(raw["verified_at"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredVersion:
    version: str
    manifest: Manifest | None  # None: a directory bootd did not make (copied by hand), or a broken manifest
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchInventory:
    os: str
    arch: str
    versions: tuple[StoredVersion, ...]  # oldest first
    pointers: tuple[tuple[str, str], ...]  # (channel, version)
    partials: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneDecision:
    version: str
    remove: bool
    why: str


class AssetStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def arch_dir(self, os_name: str, arch: str) -> Path:
        return self.root / os_name / arch

    def version_dir(self, os_name: str, arch: str, version: str) -> Path:
        return self.arch_dir(os_name, arch) / version

    def partial_dir(self, os_name: str, arch: str, version: str) -> Path:
        return self.arch_dir(os_name, arch) / f".{version}.partial"

    @contextmanager
    def locked(self, os_name: str, arch: str) -> Iterator[None]:
        """One writer per <os>/<arch> (a `bootd assets fetch` beside the daemon's tracker)."""
        directory = self.arch_dir(os_name, arch)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # bootd's user cannot write the assets dir (chown it), a read-only mount, ...
            raise StoreError(f"{exc.filename or directory}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{directory}: another bootd is fetching into it right now") from None
            yield
        finally:
            os.close(fd)

    def manifest(self, os_name: str, arch: str, version: str) -> Manifest | None:
        try:
            return Manifest.from_json((self.version_dir(os_name, arch, version) / MANIFEST).read_bytes())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def pointer(self, os_name: str, arch: str, channel: str) -> str | None:
        """The version a channel points at, or None (no pointer, or not one bootd made)."""
        path = self.arch_dir(os_name, arch) / channel
        try:
            target = os.readlink(path)
        except OSError:
            return None
        return target if "/" not in target and (path.parent / target).is_dir() else None

    def commit(self, partial: Path, os_name: str, arch: str, version: str, manifest: Manifest) -> Path:
        """The verified partial directory becomes the version directory."""
        write_atomically(partial / MANIFEST, manifest.to_json(), mode=0o644)
        target = self.version_dir(os_name, arch, version)
        os.chmod(partial, 0o755)
        os.rename(partial, target)
        fsync_directory(target.parent)
        return target

    def switch(self, os_name: str, arch: str, channel: str, version: str) -> str | None:
        """Point `channel` at `version`; the version it pointed at before."""
        directory = self.arch_dir(os_name, arch)
        path = directory / channel
        if path.exists() and not path.is_symlink():
            raise StoreError(f"{path} is a {'directory' if path.is_dir() else 'file'}, not a channel pointer: "
                             "move it away, then fetch again")
        if not (directory / version).is_dir():
            raise StoreError(f"{directory / version}: no such version")
        before = self.pointer(os_name, arch, channel)
        temp = directory / f".{channel}.{os.getpid()}.new"
        temp.unlink(missing_ok=True)
        try:
            os.symlink(version, temp)
        except OSError as exc:
            raise StoreError(f"{directory}: cannot make the channel pointer (a symlink): {exc.strerror} "
                             "(the assets directory must be on a file system with symlinks, not FAT)") from None
        os.replace(temp, path)
        fsync_directory(directory)
        return before

    def inventory(self) -> list[ArchInventory]:
        out = []
        for os_dir in _subdirs(self.root):
            for arch_dir in _subdirs(os_dir):
                versions, pointers, partials = [], [], []
                for entry in sorted(os.scandir(arch_dir), key=lambda e: e.name):
                    if entry.is_symlink():
                        if (target := self.pointer(os_dir.name, arch_dir.name, entry.name)) is not None:
                            pointers.append((entry.name, target))
                    elif entry.is_dir() and entry.name.startswith(".") and entry.name.endswith(".partial"):
                        partials.append(entry.name[1:-len(".partial")])
                    elif entry.is_dir() and not entry.name.startswith("."):
                        versions.append(StoredVersion(version=entry.name, size=_tree_size(Path(entry.path)),
                                                      manifest=self.manifest(os_dir.name, arch_dir.name, entry.name)))
                if versions or pointers or partials:
                    versions.sort(key=lambda v: (version_key(v.version), v.version))
                    out.append(ArchInventory(os=os_dir.name, arch=arch_dir.name, versions=tuple(versions),
                                             pointers=tuple(pointers), partials=tuple(partials)))
        return out

    def remove_version(self, os_name: str, arch: str, version: str) -> None:
        shutil.rmtree(self.version_dir(os_name, arch, version))


def prunable(versions: Iterable[str], pointed: set[str], referenced: set[str], keep: int) -> list[PruneDecision]:
    """Which versions of one <os>/<arch> to remove: every one but the `keep` newest, except those a channel
    pointer or a profile names."""
    ordered = sorted(versions, key=lambda v: (version_key(v), v), reverse=True)
    decisions = []
    for rank, version in enumerate(ordered):
        if version in pointed:
            decisions.append(PruneDecision(version=version, remove=False, why="a channel points at it"))
        elif version in referenced:
            decisions.append(PruneDecision(version=version, remove=False, why="a profile names it"))
        elif rank < keep:
            decisions.append(PruneDecision(version=version, remove=False, why=f"one of the {keep} newest"))
        else:
            decisions.append(PruneDecision(version=version, remove=True, why=f"older than the {keep} newest"))
    return decisions


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileUse:
    """An asset path a profile's boot section names, split as bootd's layout reads it."""

    profile: str
    path: str  # below /assets/
    os: str = ""
    arch: str = ""
    version_or_channel: str = ""


def profile_uses(profiles: Iterable[tuple[str, Iterable[str]]]) -> list[ProfileUse]:
    """(profile id, kernel and initrd URLs) -> the asset paths they name (see events.asset_path)."""
    from appliance.events import asset_path

    uses = []
    for profile_id, urls in profiles:
        for url in urls:
            if (path := asset_path(url)) is None:
                continue
            parts = path.split("/")
            if len(parts) >= 4 and parts[0] in set(OsName):
                uses.append(ProfileUse(profile=profile_id, path=path, os=parts[0], arch=parts[1],
                                       version_or_channel=parts[2]))
            else:
                uses.append(ProfileUse(profile=profile_id, path=path))
    return uses


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path)
                      if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    except OSError:
        return []


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
