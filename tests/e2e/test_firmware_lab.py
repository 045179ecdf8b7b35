"""`bootd lab up --firmware uefi-http|secureboot|arm64`: each boots a machine a person can watch to its
report (the same paths the other test_firmware_* cases prove step by step), and `lab down` removes it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.e2e.test_lab import bootd

pytestmark = [pytest.mark.e2e, pytest.mark.netns]


@pytest.mark.parametrize("firmware, emulator, steps", [
    pytest.param("uefi-http", "qemu-system-x86_64", ("dhcp", "firmware", "boot-script", "kernel"), id="uefi-http"),
    pytest.param("secureboot", "qemu-system-x86_64", ("dhcp", "tftp", "boot-config", "kernel"), id="secureboot"),
    pytest.param("arm64", "qemu-system-aarch64", ("dhcp", "tftp", "boot-config", "kernel"), id="arm64"),
])
def test_lab_up_boots_each_firmware_to_its_report(firmware, emulator, steps, tmp_path):
    if shutil.which(emulator) is None:
        pytest.skip(f"{emulator} is not installed")
    try:
        result = bootd("lab", "up", "--machines", "1", "--firmware", firmware, "--dir", str(tmp_path),
                       "--timeout", "280", timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "every machine reported" in result.stdout
        last = [line for line in result.stdout.splitlines() if "node1 52:54:00:1a:b0:01" in line][-1]
        trail = [step.split()[0] for step in last.split(": ", 1)[1].split(" > ")]
        assert all(step in trail for step in steps) and trail[-1] == "report", last
        print(f"{firmware}: {last.strip()}")
    finally:
        down = bootd("lab", "down", "--dir", str(tmp_path), timeout=60)
    assert down.returncode == 0, down.stderr
    assert "bootd-lab" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
