"""Real firmware PXE-boots through bootd alone: QEMU VMs (TCG) on taps on a bridge in a namespace the test
makes, bootd as the only DHCP, TFTP and HTTP server there, a payload that reports back what it got.

Cases here: a BIOS VM whose e1000 NIC ROM is iPXE (DHCP -> bootd's script -> profile -> kernel, initrd ->
Ignition -> report); a BIOS VM whose ROM is made to act as a plain PXE ROM (tests/e2e/ipxe_shell.py), so it
chainloads Debian's undionly.kpxe over TFTP; a UEFI VM running OVMF with `virtio-net-pci,romfile=` so EDK2's
own PXE client runs and chainloads Debian's ipxe.efi over TFTP; each machine has its own profile, and each
must get its own Ignition config and kernel arguments and not the other's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from appliance.lab import qemu_argv
from appliance.lab.payload import build
from tests.e2e.ipxe_shell import AUTOBOOT, DHCP_AND_CHAIN, PlainPxeRom
from tests.integration.test_http import write
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
ROOT = Path(__file__).parents[2]
FIRMWARE_CACHE = Path("/var/tmp/bootd-e2e/firmware")
BOOT_SECONDS = 300  # TCG: BIOS ~35 s, UEFI ~60 s on an idle 2-core box; parallel VMs share the cores

MACHINES = {  # name: (mac, firmware, nic, profile)
    "bios1": ("52:54:00:e2:00:01", "bios", "e1000", "profile-a"),
    "uefi1": ("52:54:00:e2:00:02", "uefi", "virtio-net-pci,romfile=", "profile-b"),
    "uefi2": ("52:54:00:e2:00:03", "uefi", "e1000", "profile-a"),  # OVMF runs the NIC ROM's iPXE: straight to HTTP
    "undi1": ("52:54:00:e2:00:04", "bios-undi", "e1000", "profile-b"),  # plain PXE -> TFTP undionly.kpxe -> iPXE
}
PROXY_MACHINES = {
    "pbios": ("52:54:00:e3:00:01", "bios", "e1000", "profile-a"),
    "puefi": ("52:54:00:e3:00:02", "uefi", "virtio-net-pci,romfile=", "profile-b"),
    "pundi": ("52:54:00:e3:00:03", "bios-undi-autoboot", "e1000", "profile-b"),  # plain PXE, 4011, undionly
}
STRANGER = ("52:54:00:e3:00:99", "bios", "e1000", "profile-a")  # not in bootd.yaml
BROKEN = {"broken1": ("52:54:00:e2:00:09", "bios", "e1000", "broken")}


def firmware() -> Path:
    if not (FIRMWARE_CACHE / "ipxe.efi").is_file():
        subprocess.run([sys.executable, "-m", "appliance", "firmware", "fetch", "--dir", str(FIRMWARE_CACHE)],
                       check=True, cwd=ROOT, capture_output=True, timeout=300)
    return FIRMWARE_CACHE


def make_lab_config(tmp: Path, machines: dict = MACHINES, dhcp: str | None = None) -> Path:
    kernel, initrd = build()
    data = tmp / "data"
    for name in ("vmlinuz", "initrd.gz"):
        (data / "assets").mkdir(parents=True, exist_ok=True)
        shutil.copy(kernel if name == "vmlinuz" else initrd, data / "assets" / name)
    write(data / "profiles/broken.json", {"id": "broken", "boot": {  # its kernel is missing
        "kernel": "${bootd}/assets/no-such-kernel", "initrd": ["${bootd}/assets/initrd.gz"], "args": []}})
    for profile in ("profile-a", "profile-b"):
        write(data / f"profiles/{profile}.json", {"id": profile, "ignition_id": f"{profile}.ign", "boot": {
            "kernel": "${bootd}/assets/vmlinuz", "initrd": ["${bootd}/assets/initrd.gz"],
            # initrd= names the image for the kernel's EFI stub (ipxe.efi hands initrds over that way)
            "args": ["initrd=initrd.gz", "console=ttyS0", "quiet", f"bootd.profile={profile}",
                     "bootd.ignition=${bootd}/ignition?mac=${mac:hexhyp}",
                     "bootd.report=${bootd}/api/v1/machines/${mac:hexhyp}/report"]}})
        write(data / f"ignition/{profile}.ign", {"ignition": {"version": "3.4.0"}, "storage": {"files": [
            {"path": "/etc/profile-name", "contents": {"source": f"data:,{profile}"}}]}})
    (tmp / "state").mkdir(exist_ok=True)
    listed = "".join(f'  - {{name: {name}, mac: "{mac}", profile: {profile}}}\n'
                     for name, (mac, _fw, _nic, profile) in machines.items())
    # user-class detection: the ROM that hides its user class is chained to undionly.kpxe despite its 175
    dhcp = dhcp or ("  mode: authoritative\n  subnet: 192.0.2.0/24\n  range: [192.0.2.100, 192.0.2.150]\n"
                    "  router: 192.0.2.1\n  ipxe_detection: user-class\n")
    (tmp / "bootd.yaml").write_text(
        f"state_dir: {tmp / 'state'}\ndomain: lab.test\nlisten: {{address: 192.0.2.1}}\n"
        f"http: {{address: 192.0.2.1, port: 8080, data_dir: {data}}}\n"
        f"dhcp:\n  firmware_dir: {firmware()}\n{dhcp}"
        f"tftp: {{address: 192.0.2.1}}\n"
        f"machines:\n{listed}")
    return tmp / "bootd.yaml"


def start_vm(lab: NetLab, tmp: Path, index: int, name: str, machine: tuple) -> PlainPxeRom | None:
    """Start the VM; for `bios-undi`, also the thread that types into its ROM's shell."""
    mac, fw, nic, _ = machine
    undi = fw.startswith("bios-undi")  # a plain PXE ROM: typed into (see ipxe_shell.py)
    serial_socket = Path(f"/tmp/bootd-e2e-{os.getpid()}-{name}.sock") if undi else None  # < 108 bytes
    argv = qemu_argv(name, mac, lab.add_tap(f"tap{index}"), "bios" if undi else fw, tmp, nic,
                     serial_socket=serial_socket)
    lab.start(lab.server_ns, argv, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.qemu.log", "wb"))
    if serial_socket is None:
        return None
    rom = PlainPxeRom(serial_socket, tmp / f"{name}.serial.log",
                      AUTOBOOT if fw.endswith("autoboot") else DHCP_AND_CHAIN)
    rom.start()
    return rom


def serial_tail(tmp: Path, name: str) -> str:
    path = tmp / f"{name}.serial.log"
    return path.read_text(errors="replace")[-1500:] if path.exists() else "(no serial output)"


def wait_for_report(bootd: BootdProcess, tmp: Path, name: str, mac: str, *, timeout: float = BOOT_SECONDS,
                    note: str = "") -> None:
    """Until the machine's system has reported to bootd; else the failure shows the end of its serial console."""
    try:
        bootd.wait_for_log(lambda l: l.get("stage") == "report" and l.get("mac") == mac, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{name} did not report within {timeout:.0f} s{note}.\nserial:\n"
                             f"{serial_tail(tmp, name)}\n{exc}") from None


def boot_and_check(lab: NetLab, bootd: BootdProcess, tmp: Path, machines: dict, *, lease: bool) -> None:
    started = time.time()
    roms = {name: start_vm(lab, tmp, index, name, machine) for index, (name, machine) in enumerate(machines.items())}
    for name, (mac, *_rest) in machines.items():
        rom = roms[name]
        wait_for_report(bootd, tmp, name, mac, timeout=BOOT_SECONDS - (time.time() - started),
                        note=f" (typing into its ROM: {rom.error})" if rom and rom.error else "")
    for name, (mac, fw, nic, profile) in machines.items():
        view = json.loads(lab.run(lab.server_ns, ["curl", "-sf", f"http://192.0.2.1:8080/api/v1/machines/{mac}"]).stdout)
        stages = [s["stage"] for s in view["stages"]]
        firmware_file = "undionly.kpxe" if fw.startswith("bios-undi") else "ipxe.efi" if "romfile=" in nic else None  # TFTP
        expected = ["dhcp", *(["tftp"] if firmware_file else []), "boot-script", "boot-config", "kernel",
                    "initrd", *(["lease"] if lease else []), "ignition", "report"]
        assert stages == expected, (name, stages, view["events"])
        if firmware_file:
            tftp = next(s for s in view["stages"] if s["stage"] == "tftp")
            assert firmware_file in tftp["detail"], (name, tftp)
        times = [s["time"] for s in view["stages"]]
        assert times == sorted(times), (name, view["stages"])
        ignition = json.loads((tmp / f"data/ignition/{profile}.ign").read_bytes())
        expected_sha = hashlib.sha256(json.dumps(ignition, separators=(",", ":")).encode()).hexdigest()
        report = view["report"]
        assert report["ignition_sha256"] == expected_sha, (name, report)
        assert f"bootd.profile={profile}" in report["cmdline"], report
        other = "profile-b" if profile == "profile-a" else "profile-a"
        assert f"bootd.profile={other}" not in report["cmdline"]  # the wrong-profile check
        print(f"{name} ({fw}, {nic}): " + ", ".join(
            f"{s['stage']}{' x%d' % s['count'] if s['count'] > 1 else ''} +{s['time'] - view['stages'][0]['time']:.1f}s"
            for s in view["stages"]))


@pytest.fixture
def qemu():
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 is not installed")


def test_authoritative_bios_and_uefi_machines_boot_their_own_profiles(qemu, tmp_path):
    with NetLab("be2e", bridge=True) as lab:
        bootd = BootdProcess(make_lab_config(tmp_path, {**MACHINES, **BROKEN}), lab=lab, ns=lab.server_ns).start()
        try:
            (name, machine), = BROKEN.items()
            start_vm(lab, tmp_path, 8, name, machine)
            boot_and_check(lab, bootd, tmp_path, MACHINES, lease=True)
            # the broken machine stops at its kernel, and its progress says why
            line = bootd.wait_for_log(lambda l: l.get("mac") == machine[0] and l.get("ok") is False, timeout=120)
            assert line["stage"] == "kernel" and "no-such-kernel: not found" in line["message"], line
            view = json.loads(lab.run(lab.server_ns, ["curl", "-sf",
                                                      f"http://192.0.2.1:8080/api/v1/machines/{machine[0]}"]).stdout)
            assert view["stage"] == "kernel" and view["ok"] is False
        finally:
            assert bootd.stop() == 0


def test_proxy_mode_beside_a_plain_dhcp_server_and_unknown_machines_refused(qemu, tmp_path):
    config = make_lab_config(tmp_path, PROXY_MACHINES, "  mode: proxy\n  only_known: true\n"
                                                       "  ipxe_detection: user-class\n")
    with NetLab("pe2e", bridge=True) as lab:
        site = lab.add_client("192.0.2.2/24")  # the site's DHCP server: addresses only, no PXE, an IPv6 RA
        lab.run(site.ns, ["ip", "addr", "add", "fd77::2/64", "dev", site.ifname, "nodad"])
        lab.start(site.ns, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                            f"--interface={site.ifname}", "--bind-interfaces", "--dhcp-range=192.0.2.100,192.0.2.150,1h",
                            "--enable-ra", "--dhcp-range=fd77::,ra-only,64", "--no-ping", "--dhcp-leasefile=/dev/null",
                            "--log-facility=-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bootd = BootdProcess(config, lab=lab, ns=lab.server_ns).start()
        try:
            start_vm(lab, tmp_path, 9, "stranger", STRANGER)
            boot_and_check(lab, bootd, tmp_path, PROXY_MACHINES, lease=False)
            line = bootd.wait_for_log(lambda l: l.get("mac") == STRANGER[0] and l.get("stage") == "dhcp", timeout=60)
            assert line["ok"] is False and "unknown-machine" in line["message"]
        finally:
            assert bootd.stop() == 0
