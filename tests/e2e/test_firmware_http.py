"""UEFI HTTP boot: OVMF with its PXE boot options turned off (fw_cfg) asks DHCP as an HTTP client
(architecture 16, option 60 `HTTPClient`), gets `http://bootd/firmware/ipxe.efi`, and boots it with no TFTP
server anywhere on the network; iPXE then goes on as usual to the report.

Bad input: a machine whose boot file is a /firmware/ URL naming a file that is not there: the firmware
stops, and its progress and bootd's log say which file and where bootd looked.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.bootd_process import BootdProcess
from tests.e2e.test_boot import make_lab_config, start_vm, wait_for_report
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
BOOT_SECONDS = 300
HTTP_BOOT = ("hboot", "52:54:00:e6:00:01", "profile-a")
MISSING = ("hmissing", "52:54:00:e6:00:02", "profile-b")
MISSING_URL = "http://192.0.2.1:8080/firmware/missing.efi"


@pytest.fixture
def qemu():
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 is not installed")


def view_of(lab: NetLab, mac: str) -> dict:
    return json.loads(lab.run(lab.server_ns, ["curl", "-sf", f"http://192.0.2.1:8080/api/v1/machines/{mac}"]).stdout)


def test_uefi_http_boot_without_tftp_and_a_missing_file_said_in_words(qemu, tmp_path):
    machines = {name: (mac, "uefi-http", "virtio-net-pci,romfile=", profile) for name, mac, profile in (HTTP_BOOT,
                                                                                                      MISSING)}
    config = make_lab_config(tmp_path, machines)
    text = config.read_text()
    assert "tftp: {address: 192.0.2.1}\n" in text
    text = text.replace("tftp: {address: 192.0.2.1}\n", "")  # no TFTP server at all
    text = text.replace(f'mac: "{MISSING[1]}", profile: {MISSING[2]}}}',
                        f'mac: "{MISSING[1]}", profile: {MISSING[2]}, boot_file: "{MISSING_URL}"}}')
    config.write_text(text)
    with NetLab("he2e", bridge=True) as lab:
        bootd = BootdProcess(config, lab=lab, ns=lab.server_ns).start()
        try:
            started = time.time()
            for index, (name, machine) in enumerate(machines.items()):
                start_vm(lab, tmp_path, index, name, machine)
            name, mac, profile = HTTP_BOOT
            wait_for_report(bootd, tmp_path, name, mac)
            assert not any(l.get("stage") == "tftp" for l in bootd.lines)
            view = view_of(lab, mac)
            stages = [s["stage"] for s in view["stages"]]
            assert stages == ["dhcp", "firmware", "boot-script", "boot-config", "kernel", "initrd", "lease",
                              "ignition", "report"], (stages, view["events"])
            firmware = view["stages"][1]
            dhcp = [e["detail"] for e in view["events"] if e["stage"] == "dhcp"]
            # the firmware's own DHCP (told the HTTP URL), then iPXE's (told bootd's script)
            assert "boot http:ipxe.efi http://192.0.2.1:8080/firmware/ipxe.efi" in dhcp[1], dhcp
            assert "boot ipxe-script" in dhcp[-1], dhcp
            assert firmware["detail"].startswith("/firmware/ipxe.efi over HTTP (") and firmware["ok"], firmware
            assert f"bootd.profile={profile}" in view["report"]["cmdline"], view["report"]
            print(f"{name} (UEFI HTTP boot): " + ", ".join(
                f"{s['stage']}{' x%d' % s['count'] if s['count'] > 1 else ''} +{s['time'] - view['stages'][0]['time']:.1f}s"
                for s in view["stages"]) + f"; power-on to report {time.time() - started:.1f} s")

            name, mac, _profile = MISSING
            line = bootd.wait_for_log(lambda l: l.get("mac") == mac and l.get("ok") is False, timeout=BOOT_SECONDS)
            assert line["stage"] == "firmware", line
            assert "/firmware/missing.efi over HTTP: not found in" in line["message"], line
            view = view_of(lab, mac)
            assert view["ok"] is False and "missing.efi over HTTP: not found" in view["failure"], view
        finally:
            assert bootd.stop() == 0
