"""Raw Ignition 3.x: checked before it is served, never served half-valid.

matchbox parses raw `.ign` files with Ignition's 3.4 parser, and when that fails (a 3.5 config, spec 2.x,
invalid JSON) it logs a warning and serves an *empty* config with status 200: the machine boots and silently
gets nothing. bootd checks the config instead and refuses it with a reason.

What is checked: JSON, `ignition.version` one of the released 3.x specs, and the shape of the sections a
machine acts on (objects where Ignition expects objects, lists of objects where it expects lists, a `path`
on each file, a `name` on each unit, a `name` on each user). Keys Ignition does not know are left alone:
Ignition itself only warns about them.

What is served: compact JSON. Specs 3.0.0-3.3.0 are served as 3.4.0, as matchbox does: each of those specs
is a subset of the next, so the translation is the version number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SUPPORTED_VERSIONS = ("3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0")
_UPGRADED_TO = "3.4.0"
_UPGRADE = frozenset(("3.0.0", "3.1.0", "3.2.0", "3.3.0"))

# (section, list key, required string field of each item)
_LISTS = (
    ("passwd", "users", "name"),
    ("passwd", "groups", "name"),
    ("storage", "files", "path"),
    ("storage", "directories", "path"),
    ("storage", "links", "path"),
    ("storage", "filesystems", "device"),
    ("storage", "disks", "device"),
    ("storage", "raid", "name"),
    ("systemd", "units", "name"),
)


class InvalidIgnition(ValueError):
    """Why a raw Ignition config is refused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RawIgnition:
    version: str  # the version written in the file
    served_version: str
    body: bytes  # what is served: compact JSON


def check_raw_ignition(data: bytes) -> RawIgnition:
    try:
        config = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidIgnition(f"not valid JSON: {exc}") from None
    return check_ignition(config)


def check_ignition(config: Any) -> RawIgnition:
    """The checks and the served form of a config already parsed (a raw file's, or Butane's translation)."""
    if not isinstance(config, dict):
        raise InvalidIgnition("not a JSON object")
    ignition = config.get("ignition")
    if not isinstance(ignition, dict) or not isinstance(ignition.get("version"), str):
        raise InvalidIgnition("no ignition.version")
    version = ignition["version"]
    if version.startswith(("1.", "2.")):
        raise InvalidIgnition(f"Ignition spec {version} is not served: only spec 3.x (Ignition v2 and later)")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidIgnition(f"unknown Ignition spec version {version!r} (known: {', '.join(SUPPORTED_VERSIONS)})")
    if "kernelArguments" in config and version < "3.3.0":
        raise InvalidIgnition(f"kernelArguments needs spec 3.3.0 or later, the config is {version}")
    for section in ("passwd", "storage", "systemd", "kernelArguments"):
        _expect(config, section, dict, section)
    for section, key, required in _LISTS:
        items = _expect(config.get(section) or {}, key, list, f"{section}.{key}") or []
        for i, item in enumerate(items):
            where = f"{section}.{key}[{i}]"
            if not isinstance(item, dict):
                raise InvalidIgnition(f"{where}: expected an object")
            if not isinstance(item.get(required), str) or not item[required]:
                raise InvalidIgnition(f"{where}: {required} is required")
    served = version
    if version in _UPGRADE:
        served = _UPGRADED_TO
        config = {**config, "ignition": {**ignition, "version": served}}
    body = json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()
    return RawIgnition(version=version, served_version=served, body=body)


def _expect(parent: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = parent.get(key)
    if value is not None and not isinstance(value, kind):
        raise InvalidIgnition(f"{where}: expected {'an object' if kind is dict else 'a list'}")
    return value
