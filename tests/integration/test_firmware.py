"""`bootd firmware fetch`: Debian's ipxe package, downloaded by name with apt, verified, installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.firmware import known_files, sha256_of

ROOT = Path(__file__).parents[2]


def bootd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    directory = tmp_path_factory.mktemp("firmware")
    result = bootd("firmware", "fetch", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    return directory, result.stdout


def test_fetch_installs_every_known_file_verified(fetched):
    directory, output = fetched
    for known in known_files():
        assert sha256_of(directory / known.name) == known.sha256
        assert f"installed {directory / known.name}" in output and "verified" in output
        assert (directory / known.name).stat().st_mode & 0o777 == 0o644


def test_a_package_whose_files_differ_is_refused(fetched, tmp_path):
    directory, _ = fetched
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text("Package: ipxe\nVersion: 1\nArchitecture: all\nMaintainer: x <x@x>\n"
                                         "Description: tampered\n")
    for known in known_files():
        path = tree / known.package_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((directory / known.name).read_bytes())
    (tree / "usr/lib/ipxe/undionly.kpxe").write_bytes(b"not the real undionly")
    subprocess.run(["dpkg-deb", "--build", str(tree), str(tmp_path / "ipxe_1_all.deb")], check=True,
                   capture_output=True)
    target = tmp_path / "out"
    result = bootd("firmware", "fetch", "--dir", str(target), "--deb", str(tmp_path / "ipxe_1_all.deb"))
    assert result.returncode == 1
    assert "undionly.kpxe: sha256" in result.stderr and "is not the known" in result.stderr
    assert not (target / "undionly.kpxe").exists()


def test_check_says_which_arches_are_servable_and_verified(fetched, tmp_path):
    directory, _ = fetched
    (tmp_path / "data").mkdir()
    (tmp_path / "bootd.yaml").write_text(f"http:\n  data_dir: {tmp_path / 'data'}\ndhcp:\n  firmware_dir: {directory}\n")
    result = bootd("check", "-c", str(tmp_path / "bootd.yaml"))
    assert result.returncode == 0, result.stderr
    assert "arch  0 BIOS       undionly.kpxe  servable (verified)" in result.stdout
    assert "arch  7 EFI_X64    ipxe.efi       servable (verified)" in result.stdout
    assert "arch 11 EFI_ARM64  snp.efi        not servable" in result.stdout
