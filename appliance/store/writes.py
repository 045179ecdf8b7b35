"""Writes to the data dir, for the read-write API: validated, confined, atomic.

- Names: a profile or group id is one plain file name; an Ignition or generic name may have
  subdirectories. No `..`, NUL, backslash, empty or hidden (`.`) component, nothing absolute: bootd confines
  each kind to its own subdirectory (matchbox confines only to the data root, so its `../profiles/x` works).
- Documents: a profile needs an id, a group an id and a profile (matchbox's AssertValid); a group's metadata
  must be a JSON object. A group naming a profile that does not exist is accepted, as matchbox accepts it
  (`bootd check` warns).
- Files are written as matchbox writes them (tab-indented JSON, fields in its order, empty ones left out) but
  atomically: a temp file in the same directory, fsync, rename, fsync of the directory. A crash leaves the
  old file or the new one. The HTTP side re-reads a file when its stat changes, so the next request sees it.
- Errors are `WriteRefused` with a message for the client: ids and reasons, never server paths.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from appliance.atomic import write_atomically
from appliance.paths import OutsideRoot, confine
from appliance.store.model import Group, InvalidDocument, Profile, parse_group, parse_profile

MAX_NAME = 255
_TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}")  # tempfile.mkstemp(prefix=".<name>.") in write_atomically
FILE_MODE = 0o644  # as matchbox writes them: the data dir holds no secrets (anyone can GET any config)


class Kind(StrEnum):
    PROFILE = "profiles"
    GROUP = "groups"
    IGNITION = "ignition"
    GENERIC = "generic"

    @property
    def flat(self) -> bool:
        return self in (Kind.PROFILE, Kind.GROUP)


class WriteRefused(ValueError):
    """A write (or read) the API refuses; the message is safe to send to the client."""


class NotStored(WriteRefused):
    """The object does not exist."""


class StoreUnavailable(Exception):
    """The store cannot be reached (etcd lost): the API answers UNAVAILABLE with this message (it names
    the endpoints and why each failed), and nothing was written."""


def check_name(kind: Kind, name: str) -> str:
    what = "id" if kind.flat else "name"
    if not name:
        raise WriteRefused(f"{kind.value[:-1] if kind.flat else kind.value}: {what} is required")
    if len(name.encode()) > (MAX_NAME if kind.flat else 4096):
        raise WriteRefused(f"{what} is too long")
    if "\0" in name or "\\" in name:
        raise WriteRefused(f"{what} {name[:80]!r}: NUL and backslash are not allowed")
    parts = name.split("/")
    if kind.flat and len(parts) > 1:
        raise WriteRefused(f"{what} {name[:80]!r}: a slash is not allowed in a {kind.value[:-1]} id")
    for part in parts:
        if part in ("", ".", "..") or part.startswith("."):
            raise WriteRefused(f"{what} {name[:80]!r}: empty, '.', '..' and hidden path parts are not allowed")
    return name


@dataclass(frozen=True, slots=True)
class DataWriter:
    root: Path

    def _path(self, kind: Kind, name: str) -> Path:
        check_name(kind, name)
        directory = self.root / kind.value
        try:  # the checked name cannot leave `directory` lexically; a symlink on the way could
            return confine(directory, f"{name}.json" if kind.flat else name)
        except OutsideRoot:
            raise WriteRefused(f"{name[:80]!r} leads outside the {kind.value} directory") from None

    # --- profiles and groups ----------------------------------------------------------------------

    def put_profile(self, profile: Profile) -> Path:
        if not profile.id:
            raise WriteRefused("profile: id is required")
        path = self._path(Kind.PROFILE, profile.id)
        write_atomically(path, profile_json(profile), FILE_MODE)
        return path

    def put_group(self, group: Group) -> Path:
        if not group.id:
            raise WriteRefused("group: id is required")
        if not group.profile:
            raise WriteRefused(f"group {group.id!r}: profile is required")
        data = group_json(group)
        try:
            parse_group(data)  # what the HTTP side will read: a bad MAC selector must not be written
        except InvalidDocument as exc:
            raise WriteRefused(f"group {group.id!r}: {exc}") from None
        path = self._path(Kind.GROUP, group.id)
        write_atomically(path, data, FILE_MODE)
        return path

    def get_profile(self, profile_id: str) -> Profile:
        try:
            return parse_profile(self.read(Kind.PROFILE, profile_id))
        except InvalidDocument as exc:
            raise WriteRefused(f"profile {profile_id!r} is stored but invalid: {exc}") from None

    def get_group(self, group_id: str) -> Group:
        try:
            return parse_group(self.read(Kind.GROUP, group_id))
        except InvalidDocument as exc:
            raise WriteRefused(f"group {group_id!r} is stored but invalid: {exc}") from None

    def list(self, kind: Kind) -> list[str]:
        directory = self.root / kind.value
        if not directory.is_dir():
            return []
        return sorted(e.name[:-5] for e in os.scandir(directory)
                      if e.is_file() and e.name.endswith(".json") and not e.name.startswith("."))

    def sweep_temp_files(self) -> list[str]:
        """Remove what a crash between mkstemp and rename left behind (`.<name>.<8 random chars>`); the
        names removed, relative to the data dir."""
        removed = []
        for kind in Kind:
            directory = self.root / kind.value
            if not directory.is_dir():
                continue
            for path in directory.rglob(".*"):
                if path.is_file() and _TEMP_FILE.fullmatch(path.name):
                    path.unlink(missing_ok=True)
                    removed.append(str(path.relative_to(self.root)))
        return removed

    # --- any kind ---------------------------------------------------------------------------------

    def put(self, kind: Kind, name: str, data: bytes) -> Path:
        path = self._path(kind, name)
        write_atomically(path, data, FILE_MODE)
        return path

    def read(self, kind: Kind, name: str) -> bytes:
        path = self._path(kind, name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotStored(f"{kind.value[:-1] if kind.flat else kind.value} {name!r} does not exist") from None

    def delete(self, kind: Kind, name: str) -> Path:
        path = self._path(kind, name)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotStored(f"{kind.value[:-1] if kind.flat else kind.value} {name!r} does not exist") from None
        return path


# --- matchbox's file formats --------------------------------------------------------------------------

def profile_json(profile: Profile) -> bytes:
    """json.MarshalIndent(profile, "", "\\t") of matchbox's struct: its field order, empty fields left out."""
    obj: dict[str, Any] = {}
    for key in ("id", "name", "ignition_id", "cloud_id"):
        if value := getattr(profile, key):
            obj[key] = value
    if profile.boot is not None:
        boot: dict[str, Any] = {}
        if profile.boot.kernel:
            boot["kernel"] = profile.boot.kernel
        if profile.boot.initrd:
            boot["initrd"] = list(profile.boot.initrd)
        if profile.boot.args:
            boot["args"] = list(profile.boot.args)
        obj["boot"] = boot
    if profile.generic_id:
        obj["generic_id"] = profile.generic_id
    return json.dumps(obj, indent="\t", ensure_ascii=False).encode()


def group_json(group: Group) -> bytes:
    obj: dict[str, Any] = {}
    for key in ("id", "name", "profile"):
        if value := getattr(group, key):
            obj[key] = value
    if group.selector:
        obj["selector"] = dict(group.selector)
    if group.metadata:
        obj["metadata"] = dict(group.metadata)
    return json.dumps(obj, indent="\t", ensure_ascii=False).encode()


def metadata_object(data: bytes, group_id: str) -> dict[str, Any]:
    """A group's metadata as the API carries it (JSON bytes) -> the object the file holds."""
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WriteRefused(f"group {group_id!r}: metadata is not valid JSON: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WriteRefused(f"group {group_id!r}: metadata must be a JSON object")
    return value


__all__ = ["DataWriter", "Kind", "NotStored", "StoreUnavailable", "WriteRefused", "check_name", "group_json",
           "metadata_object", "profile_json"]
