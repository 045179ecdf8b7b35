"""ARM64: qemu-system-aarch64 (TCG) with Debian's AAVMF PXE-boots through bootd (option 93 = 11).

Debian 12 builds no arm64 iPXE, so bootd serves Debian's signed arm64 network GRUB (grubaa64.efi, from
debian-installer-12-netboot-arm64, installed by `bootd firmware fetch --arm64`) over TFTP; GRUB reads the
machine's config from bootd (/grub/grub.cfg, then /grub/machines/<MAC>: the /grub route's config), loads
Debian's arm64 kernel and the payload's arm64 initrd (appliance/lab/payload.py build_arm64) over TFTP, and
the payload reports. Under TCG on this 2-core box the whole boot takes about two minutes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.lab.payload import build_arm64
from tests.bootd_process import BootdProcess
from tests.e2e.test_boot import make_lab_config, start_vm, wait_for_report
from tests.integration.test_http import write
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
BOOT_SECONDS = 290  # the bound for this case: under 5 minutes
ARM = ("arm1", "52:54:00:e8:00:01", "profile-arm64")
ARM_FIRMWARE = Path("/var/tmp/bootd-e2e/firmware-arm64")


def arm64_firmware() -> Path:
    if not (ARM_FIRMWARE / "grubaa64.efi").is_file():
        subprocess.run([sys.executable, "-m", "appliance", "firmware", "fetch", "--arm64", "--dir", str(ARM_FIRMWARE)],
                       check=True, capture_output=True, timeout=900, cwd=Path(__file__).parents[2])
    return ARM_FIRMWARE


@pytest.fixture
def aarch64():
    if shutil.which("qemu-system-aarch64") is None or not Path("/usr/share/AAVMF/AAVMF_CODE.fd").is_file():
        pytest.skip("qemu-system-arm and qemu-efi-aarch64 are not installed")


def test_arm64_machine_boots_debian_grub_and_an_arm64_kernel_to_its_report(aarch64, tmp_path):
    name, mac, profile = ARM
    machines = {name: (mac, "arm64", "virtio-net-pci,romfile=", profile)}
    config = make_lab_config(tmp_path, machines)
    kernel, initrd = build_arm64()
    assets = tmp_path / "data/assets/arm64"
    assets.mkdir(parents=True)
    shutil.copy(kernel, assets / "vmlinuz.gz")
    shutil.copy(initrd, assets / "initrd.gz")
    write(tmp_path / f"data/profiles/{profile}.json", {"id": profile, "ignition_id": "profile-a.ign", "boot": {
        "kernel": "/assets/arm64/vmlinuz.gz", "initrd": ["/assets/arm64/initrd.gz"],
        "args": ["console=ttyAMA0", "quiet", f"bootd.profile={profile}",
                 "bootd.ignition=${bootd}/ignition?mac=${net_default_mac}",
                 "bootd.report=${bootd}/api/v1/machines/${net_default_mac}/report"]}})
    config.write_text(config.read_text().replace("/var/tmp/bootd-e2e/firmware", str(arm64_firmware())))
    with NetLab("a64e2e", bridge=True) as lab:
        bootd = BootdProcess(config, lab=lab, ns=lab.server_ns).start()
        try:
            started = time.time()
            start_vm(lab, tmp_path, 0, name, (mac, "arm64", machines[name][2], None))
            wait_for_report(bootd, tmp_path, name, mac, timeout=BOOT_SECONDS)
            view = json.loads(lab.run(lab.server_ns, ["curl", "-sf",
                                                      f"http://192.0.2.1:8080/api/v1/machines/{mac}"]).stdout)
            stages = [s["stage"] for s in view["stages"]]
            assert stages == ["dhcp", "tftp", "boot-config", "kernel", "initrd", "lease", "ignition", "report"], (
                stages, view["events"])
            events = [(e["stage"], e["detail"]) for e in view["events"]]
            assert any("binl:grubaa64.efi" in d for s, d in events if s == "dhcp"), events
            sent = [d.split()[1].rstrip(":") for s, d in events
                    if s in ("tftp", "kernel", "initrd") and d.startswith("sent ") and ".lst:" not in d]
            # (the installer's arm64 GRUB has its own prefix; it reads the initrd twice, its size first)
            assert list(dict.fromkeys(sent)) == ["grubaa64.efi", "/debian-installer/arm64/grub/grub.cfg",
                                                 f"/grub/machines/{mac}", "/assets/arm64/vmlinuz.gz",
                                                 "/assets/arm64/initrd.gz"], events
            assert view["arch"] == "EFI_ARM64", view
            report = view["report"]
            assert f"bootd.profile={profile}" in report["cmdline"] and "console=ttyAMA0" in report["cmdline"], report
            print(f"{name} (ARM64, AAVMF, GRUB): " + ", ".join(
                f"{s['stage']}{' x%d' % s['count'] if s['count'] > 1 else ''} +{s['time'] - view['stages'][0]['time']:.1f}s"
                for s in view["stages"]) + f"; power-on to report {time.time() - started:.1f} s")
        finally:
            assert bootd.stop() == 0
