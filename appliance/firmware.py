"""The iPXE binaries: fetched from Debian's `ipxe` package and checked against the sums bootd ships
(appliance/data/ipxe-SHA256SUMS, package data).

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


SUMS = "ipxe-SHA256SUMS"  # in appliance.data: package data, so a wheel installed anywhere has it


def _sums_text() -> str:
    try:
        return resources.files("appliance.data").joinpath(SUMS).read_text(encoding="utf-8")
    except OSError as exc:
        raise FirmwareError(f"cannot read the known sums appliance/data/{SUMS} (a broken install?): "
                            f"{exc.strerror}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(destination: Path, *, deb: Path | None = None) -> list[str]:
    """Install the known files from the Debian package into `destination`; the lines to print."""
    if destination.exists() and not destination.is_dir():  # said before the download, not after it
        raise FirmwareError(f"{destination} is not a directory")
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FirmwareError(f"{destination}: cannot make the firmware directory: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="bootd-firmware-") as work:
        workdir = Path(work)
        if deb is None:
            os.chmod(workdir, 0o755)  # apt's download user must be able to write here
            result = subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, capture_output=True, text=True)
            debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
            if result.returncode != 0 or not debs:
                raise FirmwareError(f"apt-get download {PACKAGE} failed: {result.stderr.strip() or result.stdout.strip()}"
                                    " (run `apt-get update` first?)")
            deb = debs[0]
        tree = workdir / "tree"
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True, text=True)
        if result.returncode != 0:
            raise FirmwareError(f"dpkg-deb -x {deb.name} failed: {result.stderr.strip()}")
        lines = [f"package: {deb.name}"]
        problems = []
        for known in known_files():
            source = _inside(tree, tree / known.package_path)
            if source is None or not source.is_file():
                problems.append(f"{known.name}: not in the package at {known.package_path}")
                continue
            digest = sha256_of(source)
            if digest != known.sha256:
                problems.append(f"{known.name}: sha256 {digest} is not the known {known.sha256}")
                continue
            try:
                write_atomically(destination / known.name, source.read_bytes(), mode=0o644)
            except OSError as exc:
                raise FirmwareError(f"{destination / known.name}: cannot write: {exc.strerror}") from None
            lines.append(f"installed {destination / known.name} (sha256 {digest[:16]}..., verified)")
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
    for known in known_files():
        path = directory / known.name
        if path.is_file():
            out[known.name] = "verified" if sha256_of(path) == known.sha256 else "present, sha256 not Debian's"
    return out
