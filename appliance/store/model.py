"""matchbox's data model (profiles, groups) read from JSON the way matchbox's Go code reads it.

- Field names match case-insensitively and unknown fields are ignored (Go's encoding/json), so a profile
  carrying a stale `cmdline` still loads.
- A group's MAC selector (key `mac` in any case) must be a MAC address and is normalised; a group with a bad
  one does not load (matchbox's `Normalize`).
- Files are not checked for `id`/`profile` here: matchbox enforces those only on gRPC Put.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from appliance.mac import parse_mac


class InvalidDocument(ValueError):
    """A profile or group file that matchbox would fail to load; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NetBoot:
    kernel: str = ""
    initrd: tuple[str, ...] = ()
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    id: str
    name: str = ""
    ignition_id: str = ""
    cloud_id: str = ""
    generic_id: str = ""
    boot: NetBoot | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    id: str
    name: str = ""
    profile: str = ""
    selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source: str = ""  # where the group came from: a file name, or "bootd.yaml:12" for a configured machine

    @property
    def selector_string(self) -> str:
        """matchbox's tie-break key: sorted `k=v` pairs joined by commas."""
        return ",".join(sorted(f"{k}={v}" for k, v in self.selector.items()))

    def matches(self, labels: Mapping[str, str]) -> bool:
        # matchbox: every selector must equal the label; an absent label reads as "" (Go's zero value).
        return all(labels.get(key, "") == value for key, value in self.selector.items())


def parse_profile(data: bytes) -> Profile:
    obj = _json_object(data)
    fields = _fold(obj, ("id", "name", "ignition_id", "cloud_id", "generic_id", "boot"))
    strings = {k: _string(fields, k) for k in ("id", "name", "ignition_id", "cloud_id", "generic_id")}
    boot = fields.get("boot")
    netboot = None
    if boot is not None:
        if not isinstance(boot, dict):
            raise InvalidDocument("boot: expected an object")
        boot_fields = _fold(boot, ("kernel", "initrd", "args"))
        netboot = NetBoot(
            kernel=_string(boot_fields, "kernel", "boot."),
            initrd=_strings(boot_fields, "initrd"),
            args=_strings(boot_fields, "args"),
        )
    return Profile(boot=netboot, **strings)


def parse_group(data: bytes, source: str = "") -> Group:
    obj = _json_object(data)
    fields = _fold(obj, ("id", "name", "profile", "selector", "metadata"))
    selector = fields.get("selector") or {}
    if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
        raise InvalidDocument("selector: expected an object of strings")
    normalised = {}
    for key, value in selector.items():
        if key.lower() == "mac":
            try:
                value = parse_mac(value)
            except ValueError:
                raise InvalidDocument(f"selector.{key}: invalid MAC address {value!r}") from None
        normalised[key] = value
    metadata = fields.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidDocument("metadata: expected an object")
    return Group(
        id=_string(fields, "id"),
        name=_string(fields, "name"),
        profile=_string(fields, "profile"),
        selector=MappingProxyType(normalised),
        metadata=MappingProxyType(metadata),
        source=source,
    )


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidDocument(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidDocument("expected a JSON object")
    return obj


def _fold(obj: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Go's encoding/json: an exact key wins, else a case-insensitive one; others are ignored."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        folded = key.lower()
        if folded in names and (folded not in out or key == folded):
            out[folded] = value
    return out


def _string(fields: dict[str, Any], key: str, prefix: str = "") -> str:
    value = fields.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidDocument(f"{prefix}{key}: expected a string")
    return value


def _strings(fields: dict[str, Any], key: str) -> tuple[str, ...]:
    value = fields.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidDocument(f"boot.{key}: expected a list of strings")
    return tuple(value)
