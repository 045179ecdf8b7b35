"""Secure Boot, end to end: OVMF's Secure Boot build with Microsoft's keys enrolled (Debian's
OVMF_CODE_4M.ms.fd and a copy of OVMF_VARS_4M.ms.fd: enforcing from power-on) PXE-boots a machine bootd.yaml
marks `secure_boot: true`: Debian's Microsoft-signed shim over TFTP, then Debian's signed network GRUB from
beside it, GRUB's config from bootd (/grub/grub.cfg over TFTP, which sends it to /grub, matchbox's route, over
HTTP), then Debian's signed kernel (verified through shim) and the payload's initrd, which reports.

The negative: the same firmware offered unsigned iPXE (a machine not marked) refuses it, and bootd's
progress says so in words: the binary was sent, and the machine's next request came from its firmware
again instead of from iPXE.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.e2e.test_boot import make_lab_config, start_vm, wait_for_report
from tests.integration.test_http import write
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
BOOT_SECONDS = 300
SIGNED = ("sbsigned", "52:54:00:e7:00:01", "profile-sb")
UNSIGNED = ("sbunsigned", "52:54:00:e7:00:02", "profile-a")
SIGNED_BINARIES = Path("/var/tmp/bootd-e2e/firmware-signed")


def signed_firmware() -> Path:
    """Debian's iPXE plus the signed shim and GRUB, as `bootd firmware fetch --signed` installs them."""
    if not (SIGNED_BINARIES / "grubx64.efi").is_file():
        subprocess.run([sys.executable, "-m", "appliance", "firmware", "fetch",
                        "--signed", "--dir", str(SIGNED_BINARIES)], check=True, capture_output=True, timeout=600,
                       cwd=Path(__file__).parents[2])
    return SIGNED_BINARIES


@pytest.fixture
def secureboot_firmware():
    if shutil.which("qemu-system-x86_64") is None or not Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd").is_file():
        pytest.skip("qemu-system-x86 and ovmf (with the Secure Boot build) are not installed")


def view_of(lab: NetLab, mac: str) -> dict:
    return json.loads(lab.run(lab.server_ns, ["curl", "-sf", f"http://192.0.2.1:8080/api/v1/machines/{mac}"]).stdout)


def test_secure_boot_through_signed_shim_grub_and_kernel_and_unsigned_ipxe_refused(secureboot_firmware, tmp_path):
    machines = {name: (mac, "secureboot", "virtio-net-pci,romfile=", profile)
                for name, mac, profile in (SIGNED, UNSIGNED)}
    config = make_lab_config(tmp_path, machines)
    # a profile as matchbox's GRUB profiles are written: kernel and initrd are paths on bootd's HTTP server
    # (GRUB's root), args name bootd through ${bootd} and the machine through GRUB's ${net_default_mac}
    write(tmp_path / "data/profiles/profile-sb.json", {"id": "profile-sb", "ignition_id": "profile-a.ign", "boot": {
        "kernel": "/assets/vmlinuz", "initrd": ["/assets/initrd.gz"],
        "args": ["console=ttyS0", "quiet", "bootd.profile=profile-sb",
                 "bootd.ignition=${bootd}/ignition?mac=${net_default_mac}",
                 "bootd.report=${bootd}/api/v1/machines/${net_default_mac}/report"]}})
    text = config.read_text().replace(str(Path("/var/tmp/bootd-e2e/firmware")), str(signed_firmware()))
    text = text.replace(f'mac: "{SIGNED[1]}", profile: {SIGNED[2]}}}', f'mac: "{SIGNED[1]}", profile: {SIGNED[2]}, '
                                                                       "secure_boot: true}")
    config.write_text(text)
    with NetLab("sbe2e", bridge=True) as lab:
        bootd = BootdProcess(config, lab=lab, ns=lab.server_ns).start()
        try:
            started = time.time()
            for index, (name, machine) in enumerate(machines.items()):
                start_vm(lab, tmp_path, index, name, machine)
            name, mac, profile = SIGNED
            wait_for_report(bootd, tmp_path, name, mac)
            view = view_of(lab, mac)
            stages = [s["stage"] for s in view["stages"]]
            assert stages == ["dhcp", "tftp", "boot-config", "kernel", "initrd", "lease", "ignition", "report"], (
                stages, view["events"])
            events = [(e["stage"], e["detail"]) for e in view["events"]]
            # over TFTP, in this order: shim, GRUB, GRUB's bootstrap and the machine's config (the kernel and
            # initrd transfers are the kernel and initrd steps; GRUB's empty module lists left out)
            sent = [detail.split()[1].rstrip(":") for stage, detail in events
                    if stage in ("tftp", "kernel", "initrd") and detail.startswith("sent ") and ".lst:" not in detail]
            assert sent == ["shimx64.efi", "grubx64.efi", "/grub/grub.cfg", f"/grub/machines/{mac}",
                            "/assets/vmlinuz", "/assets/initrd.gz"], events
            assert any("Secure Boot: signed shim, then GRUB" in d for s, d in events if s == "dhcp"), events
            config_stage = next(s for s in view["stages"] if s["stage"] == "boot-config")
            assert config_stage["detail"] == "/grub over TFTP: group 'sbsigned', profile 'profile-sb'", config_stage
            assert f"bootd.profile={profile}" in view["report"]["cmdline"], view["report"]
            # GRUB expanded the profile's ${bootd} (set by bootd's bootstrap) and ${net_default_mac}
            assert f"bootd.ignition=http://192.0.2.1:8080/ignition?mac={mac}" in view["report"]["cmdline"], view
            print(f"{name} (Secure Boot): " + ", ".join(
                f"{s['stage']}{' x%d' % s['count'] if s['count'] > 1 else ''} +{s['time'] - view['stages'][0]['time']:.1f}s"
                for s in view["stages"]) + f"; power-on to report {time.time() - started:.1f} s")

            name, mac, _profile = UNSIGNED
            line = bootd.wait_for_log(lambda l: l.get("mac") == mac and l.get("ok") is False, timeout=BOOT_SECONDS)
            view = view_of(lab, mac)
            print(f"{name}: {line['message']}")
            assert "did not start" in view["failure"] and "Secure Boot" in view["failure"], view
        finally:
            assert bootd.stop() == 0
