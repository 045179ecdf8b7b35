"""The iPXE binaries: fetched from Debian's `ipxe` package and checked against the sums bootd ships
(appliance/data/ipxe-SHA256SUMS, package data); with `--signed`, also the Secure Boot chain from Debian's
shim-signed and grub-efi-amd64-signed packages, checked the same way (appliance/data/signed-SHA256SUMS).

`bootd firmware fetch` downloads the package by name with apt (`apt-get download ipxe`), extracts it with
dpkg-deb, checks each file's sha256 against the sums shipped with bootd, and writes the files atomically
into the firmware directory. A file whose sum differs is not installed: Debian rebuilt the package, or
something is wrong; either way a person should look. Other architectures (ARM, IA32) come from a
directory the user fills (see firmware/README.md, which also shows how to build iPXE from source).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from appliance.atomic import write_atomically

PACKAGE = "ipxe"


@dataclass(frozen=True, slots=True)
class KnownFile:
    name: str
    sha256: str
    package_path: str
    package: str = PACKAGE


class FirmwareError(Exception):
    pass


def known_files(text: str | None = None) -> list[KnownFile]:
    if text is None:
        text = _sums_text()
    files = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, digest, path = line.split()
            files.append(KnownFile(name, digest, path))
    return files


def signed_files(text: str | None = None) -> list[KnownFile]:
    """The Secure Boot chain's files: lines of package, name, sha256, path."""
    if text is None:
        text = _sums_text(SIGNED_SUMS)
    files = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            package, name, digest, path = line.split()
            files.append(KnownFile(name, digest, path, package))
    return files


SUMS = "ipxe-SHA256SUMS"  # in appliance.data: package data, so a wheel installed anywhere has it
SIGNED_SUMS = "signed-SHA256SUMS"


def _sums_text(name: str = SUMS) -> str:
    try:
        return resources.files("appliance.data").joinpath(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise FirmwareError(f"cannot read the known sums appliance/data/{name} (a broken install?): "
                            f"{exc.strerror}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


ARM64_PACKAGE = "debian-installer-12-netboot-arm64"


def fetch(destination: Path, *, deb: Path | None = None, signed: bool = False, arm64: bool = False) -> list[str]:
    """Install the known files from the Debian packages into `destination`; the lines to print. `signed`:
    also the Secure Boot chain (shim and the network GRUB); `arm64`: the arm64 network GRUB."""
    if destination.exists() and not destination.is_dir():  # said before the download, not after it
        raise FirmwareError(f"{destination} is not a directory")
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FirmwareError(f"{destination}: cannot make the firmware directory: {exc.strerror}") from None
    lines = _install(destination, PACKAGE, known_files(), deb)
    if signed or arm64:
        chain = [f for f in signed_files() if (f.package == ARM64_PACKAGE and arm64)
                 or (f.package != ARM64_PACKAGE and signed)]
        for package in dict.fromkeys(f.package for f in chain):
            lines += _install(destination, package, [f for f in chain if f.package == package], None)
    return lines


def _install(destination: Path, package: str, known: list[KnownFile], deb: Path | None) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="bootd-firmware-") as work:
        workdir = Path(work)
        if deb is None:
            os.chmod(workdir, 0o755)  # apt's download user must be able to write here
            result = subprocess.run(["apt-get", "download", package], cwd=workdir, capture_output=True, text=True)
            debs = sorted(workdir.glob(f"{package}_*.deb"))
            if result.returncode != 0 or not debs:
                raise FirmwareError(f"apt-get download {package} failed: {result.stderr.strip() or result.stdout.strip()}"
                                    " (run `apt-get update` first?)")
            deb = debs[0]
        tree = workdir / "tree"
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True, text=True)
        if result.returncode != 0:
            raise FirmwareError(f"dpkg-deb -x {deb.name} failed: {result.stderr.strip()}")
        lines = [f"package: {deb.name}"]
        problems = []
        for file in known:
            source = _inside(tree, tree / file.package_path)
            if source is None or not source.is_file():
                problems.append(f"{file.name}: not in the package at {file.package_path}")
                continue
            digest = sha256_of(source)
            if digest != file.sha256:
                problems.append(f"{file.name}: sha256 {digest} is not the known {file.sha256}")
                continue
            try:
                write_atomically(destination / file.name, source.read_bytes(), mode=0o644)
            except OSError as exc:
                raise FirmwareError(f"{destination / file.name}: cannot write: {exc.strerror}") from None
            lines.append(f"installed {destination / file.name} (sha256 {digest[:16]}..., verified)")
        if problems:
            raise FirmwareError("; ".join(problems))
        return lines


def _inside(tree: Path, path: Path) -> Path | None:
    """Follow symlinks as the package means them: absolute targets are inside the extracted tree."""
    for _ in range(10):
        if not path.is_symlink():
            return path
        target = Path(os.readlink(path))
        path = tree / target.relative_to("/") if target.is_absolute() else path.parent / target
    return None


def verify(directory: Path) -> dict[str, str]:
    """name -> "verified" | "unknown sha256" for the known files present in `directory`."""
    out = {}
    try:
        chain = signed_files()
    except FirmwareError:  # an install without the signed chain's sums: its files are simply not known
        chain = []
    for known in [*known_files(), *chain]:
        path = directory / known.name
        if path.is_file():
            out[known.name] = "verified" if sha256_of(path) == known.sha256 else "present, sha256 not Debian's"
    return out

