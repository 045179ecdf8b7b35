"""Where each distribution publishes its PXE images, and what a release is made of: pure functions of the
mirror's answers (no sockets, no files).

- Flatcar: `<channel base>/<arch>-usr/<version>/<file>` with a detached OpenPGP signature `<file>.sig` beside
  each file; `<arch>-usr/current/version.txt` names the channel's current version (FLATCAR_VERSION=...). The
  channel base is `https://<channel>.release.flatcar-linux.net` (matchbox's scripts/get-flatcar and Flatcar's
  docs use the same layout).
- Fedora CoreOS: the stream metadata `<base>/streams/<stream>.json` lists, per architecture, the metal PXE
  artifacts (kernel, initramfs, rootfs) and the install image (raw.xz), each with its URL, its sha256 and the
  URL of its detached signature (coreos-installer and coreos/stream-metadata-go read the same fields).

A version is used as a directory name, so only dotted numbers are accepted from a mirror; anything else is
refused before a path is built from it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urljoin, urlsplit


class OsName(StrEnum):
    FLATCAR = "flatcar"
    FCOS = "fcos"


class FileRole(StrEnum):
    KERNEL = "kernel"
    INITRD = "initrd"
    ROOTFS = "rootfs"  # Fedora CoreOS's live root file system (coreos.live.rootfs_url=)
    INSTALL = "install"  # the disk image an installer writes (flatcar-install -b, coreos-installer --image-url)


CHANNELS: dict[OsName, tuple[str, ...]] = {
    OsName.FLATCAR: ("stable", "beta", "alpha", "lts"),
    OsName.FCOS: ("stable", "testing", "next"),
}
ARCHES = ("amd64", "arm64")  # bootd's names; each distribution's own below
_FLATCAR_ARCH = {"amd64": "amd64-usr", "arm64": "arm64-usr"}
_FCOS_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}

FLATCAR_DEFAULT_BASE = "https://{channel}.release.flatcar-linux.net"
FCOS_DEFAULT_BASE = "https://builds.coreos.fedoraproject.org"

# Dotted numbers: Flatcar 4081.2.0, Fedora CoreOS 41.20241109.3.0. A version names a directory.
_VERSION = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,12}){0,5}$")
_URL_SCHEMES = ("http", "https")


class ReleaseError(ValueError):
    """What a mirror answered does not describe a release bootd can fetch; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseFile:
    name: str  # the file's name in bootd's assets (no version in it, so profiles name it once)
    role: FileRole
    url: str
    signature_url: str
    sha256: str | None = None  # Fedora CoreOS's stream gives it; Flatcar's signature alone vouches


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    os: OsName
    channel: str
    arch: str
    version: str
    files: tuple[ReleaseFile, ...]


def check_version(text: str) -> str:
    if not _VERSION.match(text):
        raise ReleaseError(f"{text[:80]!r} is not a release version (dotted numbers, e.g. 4081.2.0)")
    return text


def version_key(version: str) -> tuple[int, ...]:
    """Sorts versions as numbers (4081.10.0 after 4081.9.0); names that are not versions sort first."""
    return tuple(int(part) for part in version.split(".")) if _VERSION.match(version) else ()


def check_choice(os_name: OsName, channel: str, arch: str) -> None:
    if channel not in CHANNELS[os_name]:
        raise ReleaseError(f"{os_name} has no channel {channel!r} (its channels: {', '.join(CHANNELS[os_name])})")
    if arch not in ARCHES:
        raise ReleaseError(f"no architecture {arch!r} (bootd knows {', '.join(ARCHES)})")


def check_mirror(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in _URL_SCHEMES or not parts.netloc:
        raise ReleaseError(f"mirror {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


# --- Flatcar -------------------------------------------------------------------------------------------

FLATCAR_KERNEL = "flatcar_production_pxe.vmlinuz"
FLATCAR_INITRD = "flatcar_production_pxe_image.cpio.gz"
FLATCAR_INSTALL = "flatcar_production_image.bin.bz2"


def flatcar_base(mirror: str | None, channel: str) -> str:
    """The channel's base URL. A mirror holds every channel below itself (`<mirror>/<channel>/`) unless it
    names where the channel goes with `{channel}` (`https://{channel}.mirror.example`)."""
    if mirror is None:
        return FLATCAR_DEFAULT_BASE.format(channel=channel)
    mirror = check_mirror(mirror)
    return mirror.replace("{channel}", channel) if "{channel}" in mirror else f"{mirror}/{channel}"


def flatcar_version_url(base: str, arch: str) -> str:
    return f"{base}/{_FLATCAR_ARCH[arch]}/current/version.txt"


def parse_flatcar_version(text: str) -> str:
    """FLATCAR_VERSION from a version.txt (shell-style KEY=value lines)."""
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "FLATCAR_VERSION":
            return check_version(value.strip().strip("'\""))
    raise ReleaseError("version.txt has no FLATCAR_VERSION= line")


def flatcar_release(base: str, channel: str, arch: str, version: str, *, install: bool) -> Release:
    directory = f"{base}/{_FLATCAR_ARCH[arch]}/{check_version(version)}"
    names = [(FLATCAR_KERNEL, FileRole.KERNEL), (FLATCAR_INITRD, FileRole.INITRD)]
    if install:
        names.append((FLATCAR_INSTALL, FileRole.INSTALL))
    files = tuple(ReleaseFile(name=name, role=role, url=f"{directory}/{name}", signature_url=f"{directory}/{name}.sig")
                  for name, role in names)
    return Release(os=OsName.FLATCAR, channel=channel, arch=arch, version=version, files=files)


# --- Fedora CoreOS --------------------------------------------------------------------------------------

def fcos_stream_url(mirror: str | None, channel: str) -> str:
    base = FCOS_DEFAULT_BASE if mirror is None else check_mirror(mirror)
    return f"{base}/streams/{channel}.json"


_PXE_ROLES = (("kernel", FileRole.KERNEL), ("initramfs", FileRole.INITRD), ("rootfs", FileRole.ROOTFS))
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse_fcos_stream(data: bytes, stream_url: str, channel: str, arch: str, *, install: bool,
                      version: str | None = None) -> Release:
    """The stream's current metal release for `arch`. `version` other than the current one is refused: a
    stream lists only its current release."""
    try:
        stream = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"the stream metadata is not JSON ({exc})") from None
    fcos_arch = _FCOS_ARCH[arch]
    metal = _dig(stream, "architectures", fcos_arch, "artifacts", "metal")
    current = check_version(_text(metal.get("release"), "architectures.*.artifacts.metal.release"))
    if version is not None and version != current:
        raise ReleaseError(f"the {channel} stream's current release is {current}, not {version} (a stream "
                           "lists only its current release)")
    formats = _dig(metal, "formats")
    wanted = [(_dig(formats, "pxe", key), role) for key, role in _PXE_ROLES]
    if install:
        wanted.append((_dig(formats, "raw.xz", "disk"), FileRole.INSTALL))
    files = []
    for artifact, role in wanted:
        location = urljoin(stream_url, _text(artifact.get("location"), f"{role} location"))
        signature = urljoin(stream_url, _text(artifact.get("signature"), f"{role} signature"))
        sha256 = _text(artifact.get("sha256"), f"{role} sha256").lower()
        if not _SHA256.match(sha256):
            raise ReleaseError(f"the {role}'s sha256 {sha256[:80]!r} is not 64 hex digits")
        for url in (location, signature):
            if urlsplit(url).scheme not in _URL_SCHEMES:
                raise ReleaseError(f"the {role}'s URL {url[:200]!r} is not http(s)")
        # fedora-coreos-41.20241109.3.0-live-kernel-x86_64 -> fedora-coreos-live-kernel-x86_64: profiles name
        # the file once and the channel pointer picks the version
        remote_name = urlsplit(location).path.rsplit("/", 1)[-1]
        name = remote_name.replace(f"-{current}", "")
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise ReleaseError(f"the {role}'s file name {remote_name[:80]!r} cannot be stored")
        files.append(ReleaseFile(name=name, role=role, url=location, signature_url=signature, sha256=sha256))
    if len({f.name for f in files}) != len(files):
        raise ReleaseError("two artifacts of the release have the same file name")
    return Release(os=OsName.FCOS, channel=channel, arch=arch, version=current, files=tuple(files))


def _dig(node: object, *keys: str) -> dict:
    path = []
    for key in keys:
        path.append(key)
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            raise ReleaseError(f"the stream metadata has no {'.'.join(path)}")
        node = node[key]
    return node  # type: ignore[return-value]


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ReleaseError(f"the stream metadata has no {what}")
    return value
