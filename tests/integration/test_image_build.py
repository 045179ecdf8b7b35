"""image/build refuses at once, in one line, what it cannot do: no root, a missing tool, no network.

And image/bios-boot, the part of the build that replaces grub-bios-setup, writes boot.img and core.img the
way GRUB 2.06's setup does (checked field by field on a file).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BUILD = ROOT / "image/build"


def build(argv: list[str], **kw) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    return result, time.monotonic() - started


@pytest.fixture
def root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root")


def test_without_root_it_says_so_in_one_line(root_only, tmp_path):
    result, seconds = build(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(BUILD),
                             "--out", str(tmp_path)])
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["image/build: needs root (mmdebstrap --mode=root makes files owned by "
                                          "other users): run it as root"], result.stderr
    assert seconds < 10 and list(tmp_path.iterdir()) == []


def test_a_missing_tool_is_named_with_its_package(root_only, tmp_path):
    """A PATH with every command of this host but mmdebstrap and qemu-img."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/sbin", "/usr/bin"):
        for tool in Path(directory).iterdir():
            if tool.name not in ("mmdebstrap", "qemu-img") and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    result, seconds = build([str(BUILD), "--out", str(tmp_path / "cache")], env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["image/build: missing tools: apt-get install mmdebstrap qemu-utils"], \
        result.stderr
    assert seconds < 10 and not (tmp_path / "cache").exists()


@pytest.mark.netns
def test_without_network_it_stops_before_building(root_only, tmp_path):
    """In a fresh network namespace (no route anywhere) the mirror does not answer."""
    name = f"imgnonet{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        result, seconds = build(["ip", "netns", "exec", name, str(BUILD), "--force", "--out", str(tmp_path)])
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("image/build: no network to the Debian mirror"), result.stderr
    assert seconds < 30
    assert [p.name for p in tmp_path.iterdir()] == []  # no half-made cache entry


# --- image/bios-boot -------------------------------------------------------------------------------------

def test_bios_boot_writes_boot_img_and_core_img_as_grub_setup_does(tmp_path):
    disk = tmp_path / "disk.raw"
    mbr = bytearray(512)
    mbr[0x1B8:0x1BC] = b"SIGN"  # disk signature, then the protective MBR's partition entry
    mbr[0x1BE:0x1CE] = bytes([0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
    mbr[510:512] = b"\x55\xaa"
    disk.write_bytes(bytes(mbr) + bytes(4 * 1024 * 1024))
    boot_img = bytearray(512)
    boot_img[0:2] = b"\xeb\x63"  # boot.img's jump
    boot_img[0x66:0x68] = b"\x74\x02"  # the drive check's jump
    boot_img[510:512] = b"\x55\xaa"
    (tmp_path / "boot.img").write_bytes(bytes(boot_img))
    core = bytearray(b"C" * 1000)  # 2 sectors once padded
    core[400:512] = bytes(112)  # diskboot.img: code, zeros, then its block list (the last 12 bytes)
    core[512 - 12:512] = struct.pack("<QHH", 1, 1, 0x820)  # what grub-mkimage leaves in it
    (tmp_path / "core.img").write_bytes(bytes(core))

    result = subprocess.run([sys.executable, str(ROOT / "image/bios-boot"), str(disk), str(tmp_path / "boot.img"),
                             str(tmp_path / "core.img"), "2048", "2048"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = disk.read_bytes()
    sector0 = written[:512]
    assert sector0[:2] == b"\xeb\x63"
    assert struct.unpack_from("<Q", sector0, 0x5C) == (2048,)  # where core.img starts
    assert sector0[0x64] == 0xFF and sector0[0x66:0x68] == b"\x90\x90"
    assert sector0[0x1B8:0x1FE] == bytes(mbr[0x1B8:0x1FE])  # the partition table is kept
    core_on_disk = written[2048 * 512:2050 * 512]
    assert struct.unpack_from("<QHH", core_on_disk, 512 - 12) == (2049, 1, 0x820)  # the rest: 1 sector after it
    assert core_on_disk[:400] == b"C" * 400 and core_on_disk[512:1000] == b"C" * 488
    assert core_on_disk[1000:1024] == bytes(24)  # padded to whole sectors


def test_bios_boot_refuses_a_core_img_bigger_than_the_partition(tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(512 * 8))
    (tmp_path / "boot.img").write_bytes(bytes(510) + b"\x55\xaa")
    (tmp_path / "core.img").write_bytes(b"C" * 512 * 3)
    result = subprocess.run([sys.executable, str(ROOT / "image/bios-boot"), str(disk), str(tmp_path / "boot.img"),
                             str(tmp_path / "core.img"), "2", "2"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "image/bios-boot: core.img needs 3 sectors, the BIOS boot partition has 2"
    assert disk.read_bytes() == bytes(512 * 8)
