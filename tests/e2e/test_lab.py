"""`bootd lab up` boots machines a person can watch; `bootd lab down` leaves nothing behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
ROOT = Path(__file__).parents[2]


def bootd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_lab_up_shows_progress_until_every_machine_reports_and_down_removes_it(tmp_path):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 is not installed")
    try:
        result = bootd("lab", "up", "--machines", "2", "--firmware", "bios", "--dir", str(tmp_path), "--timeout", "300")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "every machine reported" in result.stdout
        for node in ("node1 52:54:00:1a:b0:01", "node2 52:54:00:1a:b0:02"):
            last = [line for line in result.stdout.splitlines() if node in line][-1]
            assert "dhcp" in last and "kernel" in last and "ignition" in last and last.rstrip().split(" > ")[-1].startswith("report")
        # the live page, from this host's own loopback (forwarded into the lab's namespace), and bootd status
        page = next(line for line in result.stdout.splitlines() if "live progress page at" in line)
        url = page.split("live progress page at ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"<title>bootd: machines</title>" in response.read()
        status = bootd("status", "--endpoint", url.removesuffix("/ui/"), timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = [line for line in status.stdout.splitlines() if line.startswith("node")]
        assert len(rows) == 2 and all(" report " in row and "BIOS" in row for row in rows), status.stdout
        assert bootd("lab", "up", "--dir", str(tmp_path)).returncode == 2  # one lab at a time
    finally:
        down = bootd("lab", "down", "--dir", str(tmp_path), timeout=60)
    assert down.returncode == 0, down.stderr
    assert "bootd-lab" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not (tmp_path / "lab.json").exists()
    leftover = subprocess.run(["pgrep", "-f", f"serial file:{tmp_path}"], capture_output=True, text=True).stdout
    assert leftover == ""
