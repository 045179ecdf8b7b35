"""The appliance image (image/build) boots in QEMU (TCG) and does its job on a namespace bridge.

A, turnkey: the image with no bootd.yaml on BOOTD (only a matchbox data dir) boots under UEFI beside a plain
DHCP server, takes its address by DHCP and, as a proxy-DHCP server, PXE-boots a BIOS and a UEFI client VM
through to their reports, read from the appliance's own API over HTTP. The address and the progress URL are
read from the appliance's serial console, where a person would read them.

B, authoritative: the image with a bootd.yaml for authoritative DHCP + DNS on BOOTD boots under BIOS on a
bridge with no other server; a client VM boots; the appliance answers DNS; the serial console says bootd
runs as its own user with exactly CAP_NET_BIND_SERVICE and CAP_NET_RAW; then, switched off, it gets a
bootd.yaml with an error on BOOTD, and after it is switched on again the console names the error (file,
line, field) and bootd runs the last good config, in which the first client's lease is still held: a second client then gets the next address of the range, where an appliance
that forgot its leases would hand out the first one again (allocation is first-free, so this holds only
if the lease was kept).

C, upgrade: image/upgrade writes the system partitions of a new image onto an appliance disk and leaves
BOOTD and the state partition byte for byte as they were (no VM: the disks are compared).

Both appliances boot at the same time (a module fixture powers them on; each test waits for its own),
because booting is most of the time. Each test works on a sparse copy of the cached image, so the cache
stays as built. image/build is called here; it returns at once when its inputs have not changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.lab import qemu_argv
from appliance.lab.payload import build as build_payload, write_data_dir
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
ROOT = Path(__file__).parents[2]
BOOT_SECONDS = 420  # TCG, power-on to bootd ready: ~1-2 min alone, two appliances and clients share 2 cores
CLIENT_SECONDS = 300
RUNNING = re.compile(r"bootd: running as user (\S+) \(uid (\d+)\), pid (\d+), capabilities (\S+), rss (\d+) MiB")
PROGRESS = re.compile(r"(http://[0-9.]+:\d+)/api/v1/machines")

APPLIANCE_A = "52:54:00:a9:00:01"
APPLIANCE_B = "52:54:00:a9:00:02"
A_ADDRESS = "192.0.2.10"  # the site DHCP server's reservation for appliance A
B_ADDRESS = "192.0.2.10"  # static, from B's bootd.yaml
CLIENTS_A = {"abios": ("52:54:00:a9:01:01", "bios", "e1000"),
             "auefi": ("52:54:00:a9:01:02", "uefi", "virtio-net-pci,romfile=")}  # EDK2's own PXE, then TFTP
CLIENT_B = ("bbios", "52:54:00:a9:02:01", "bios", "e1000")
LATE_B = "52:54:00:a9:02:02"  # asks for an address after the reboot


# --- the disk: partitions and what goes on BOOTD ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Partition:
    number: int
    name: str
    offset: int  # bytes
    size: int


def gpt_partitions(header: bytes, entries: bytes) -> list[Partition]:
    """The used entries of a GPT (UEFI spec 5.3): `header` is LBA 1, `entries` the table it points at."""
    assert header[:8] == b"EFI PART", "no GPT"
    count, entry_size = struct.unpack_from("<II", header, 80)
    found = []
    for i in range(count):
        entry = entries[i * entry_size:(i + 1) * entry_size]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le").rstrip("\0")
        found.append(Partition(i + 1, name, first * 512, (last - first + 1) * 512))
    return found


def partitions_of(disk: Path) -> dict[str, Partition]:
    with open(disk, "rb") as f:
        f.seek(512)
        header = f.read(512)
        start, = struct.unpack_from("<Q", header, 72)
        count, entry_size = struct.unpack_from("<II", header, 80)
        f.seek(start * 512)
        entries = f.read(count * entry_size)
    return {p.name: p for p in gpt_partitions(header, entries)}


def put_on_bootd(disk: Path, files: dict[str, Path]) -> None:
    """Copy files onto the BOOTD FAT partition (mtools, at its offset), as a person would from any OS."""
    bootd = partitions_of(disk)["BOOTD"]
    image = f"{disk}@@{bootd.offset}"
    for target, source in files.items():
        parts = target.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            subprocess.run(["mmd", "-D", "s", "-i", image, "::" + "/".join(parts[:depth])], capture_output=True)
        subprocess.run(["mcopy", "-o", "-i", image, str(source), f"::{target}"], check=True, capture_output=True)


def matchbox_data(tmp: Path) -> Path:
    """A matchbox data dir: the reporting payload as assets, one profile, a default group, Ignition."""
    kernel, initrd = build_payload()
    return write_data_dir(tmp / "data", kernel, initrd, "payload")


def data_files(data: Path) -> dict[str, Path]:
    return {f"data/{p.relative_to(data)}": p for p in sorted(data.rglob("*")) if p.is_file()}


# --- the appliance VM --------------------------------------------------------------------------------

class ApplianceVm:
    """One QEMU (TCG) booting the image copy `disk` with its NIC on `tap`; serial console to a file."""

    def __init__(self, lab: NetLab, tmp: Path, name: str, disk: Path, mac: str, tap: str, firmware: str) -> None:
        self.lab, self.tmp, self.name, self.disk, self.mac, self.tap = lab, tmp, name, disk, mac, tap
        self.firmware = firmware
        self.boots = 0
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    @property
    def serial(self) -> Path:
        return self.tmp / f"{self.name}.boot{self.boots}.serial.log"

    @property
    def monitor(self) -> Path:
        return Path(f"/tmp/bootd-appl-{os.getpid()}-{self.name}.mon")  # a unix socket path: < 108 bytes

    def power_on(self) -> None:
        self.boots += 1
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "1", "-nodefaults", "-display", "none",
                "-serial", f"file:{self.serial}", "-monitor", f"unix:{self.monitor},server=on,wait=off",
                "-drive", f"file={self.disk},format=raw,if=virtio",
                "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}"]
        if self.firmware == "uefi":
            variables = self.tmp / f"{self.name}.vars.fd"
            shutil.copy("/usr/share/OVMF/OVMF_VARS.fd", variables)
            argv += ["-M", "q35", "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
                     "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]
        else:
            argv += ["-M", "pc,graphics=off"]
        self.started = time.monotonic()
        self.proc = self.lab.start(self.lab.server_ns, argv, stdout=subprocess.DEVNULL,
                                   stderr=open(self.tmp / f"{self.name}.qemu.log", "ab"))

    def console(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def wait_for_console(self, pattern: re.Pattern, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            found = pattern.search(self.console())
            if found:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: QEMU exited ({self.proc.returncode}) before the console "
                                     f"showed {pattern.pattern!r}:\n{self.console()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: the console did not show {pattern.pattern!r} within "
                                     f"{timeout:.0f} s:\n{self.console()[-3000:]}")
            time.sleep(1)

    def wait_until_ready(self, timeout: float = BOOT_SECONDS) -> tuple[re.Match, float]:
        """The banner line bootd's unit writes once bootd runs; and seconds from power-on to it."""
        found = self.wait_for_console(RUNNING, timeout)
        return found, time.monotonic() - self.started

    def power_off(self) -> None:
        """Pull the plug (the test is done with it): the other appliance gets the CPU."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def shut_down(self, timeout: float = 180) -> None:
        """A clean shutdown: the ACPI power button, which systemd-logind turns into poweroff."""
        with socket.socket(socket.AF_UNIX) as monitor:
            monitor.connect(str(self.monitor))
            monitor.sendall(b"system_powerdown\n")
            time.sleep(0.5)  # let the monitor read the command before the socket closes
        assert self.proc is not None
        self.proc.wait(timeout)


def copy_image(raw: Path, tmp: Path, name: str) -> Path:
    disk = tmp / f"{name}.raw"
    subprocess.run(["cp", "--sparse=always", str(raw), str(disk)], check=True)
    return disk


def api(lab: NetLab, url: str) -> dict | None:
    result = lab.run(lab.server_ns, ["curl", "-sf", "--max-time", "5", url])
    return json.loads(result.stdout) if result.returncode == 0 else None


def wait_for_reports(lab: NetLab, base: str, macs: dict[str, str], started: float, timeout: float) -> dict:
    views: dict[str, dict] = {}
    while True:
        for name, mac in macs.items():
            view = api(lab, f"{base}/api/v1/machines/{mac}")
            if view is not None:
                views[name] = view
        if all(views.get(name, {}).get("stage") == "report" for name in macs):
            return views
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not every client reported within {timeout:.0f} s: "
                                 + json.dumps({n: v.get("stages") for n, v in views.items()}))
        time.sleep(2)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("image/build and network namespaces need root")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 is not installed")
    if os.environ.get("BOOTD_APPLIANCE_IMAGE"):  # a given image (say, one being debugged), not this tree's
        return Path(os.environ["BOOTD_APPLIANCE_IMAGE"])
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "image/build")], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, f"image/build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    raw = Path(re.search(r"^raw:\s+(/\S+)$", result.stdout, re.M).group(1))
    log(f"image/build: {time.monotonic() - started:.0f} s ({result.stdout.splitlines()[0]})")
    return raw


@dataclass
class Scenario:
    lab: NetLab
    tmp: Path
    vm: ApplianceVm
    data: Path


@pytest.fixture(scope="module")
def scenarios(image, tmp_path_factory):
    """Both appliances, powered on together; the tests wait for them."""
    labs: list[NetLab] = []
    try:
        # A: turnkey (no bootd.yaml), beside a plain DHCP server that also sends the IPv6 RA iPXE waits for
        tmp_a = tmp_path_factory.mktemp("turnkey")
        lab_a = NetLab("apla", bridge=True).create()
        labs.append(lab_a)
        site = lab_a.add_client("192.0.2.2/24")
        lab_a.run(site.ns, ["ip", "addr", "add", "fd77::2/64", "dev", site.ifname, "nodad"])
        lab_a.start(site.ns, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                              f"--interface={site.ifname}", "--bind-interfaces",
                              "--dhcp-range=192.0.2.100,192.0.2.150,1h", f"--dhcp-host={APPLIANCE_A},{A_ADDRESS}",
                              "--enable-ra", "--dhcp-range=fd77::,ra-only,64", "--no-ping",
                              "--dhcp-leasefile=/dev/null", "--log-facility=-"],
                    stdout=subprocess.DEVNULL, stderr=open(tmp_a / "site-dnsmasq.log", "wb"))
        data_a = matchbox_data(tmp_a)
        disk_a = copy_image(image, tmp_a, "appliance")
        put_on_bootd(disk_a, data_files(data_a))
        vm_a = ApplianceVm(lab_a, tmp_a, "appliance-a", disk_a, APPLIANCE_A, lab_a.add_tap("tapa0"), "uefi")

        # B: authoritative DHCP + DNS from BOOTD's bootd.yaml, alone on its bridge
        tmp_b = tmp_path_factory.mktemp("authoritative")
        lab_b = NetLab("aplb", bridge=True).create()
        labs.append(lab_b)
        data_b = matchbox_data(tmp_b)
        (tmp_b / "bootd.yaml").write_text(
            "# the appliance's config, as a person would write it on BOOTD\n"
            "domain: example.com\n"
            f"listen: {{address: {B_ADDRESS}}}\n"
            "names: {provisioner: matchbox}\n"
            "http: {port: 8080, data_dir: data}\n"
            "dhcp:\n  mode: authoritative\n  subnet: 192.0.2.0/24\n  range: [192.0.2.100, 192.0.2.150]\n"
            f"  dns_servers: [{B_ADDRESS}]\n  router_advertisement: true\n"
            "tftp: {}\n"
            "dns: {}\n")
        disk_b = copy_image(image, tmp_b, "appliance")
        put_on_bootd(disk_b, {"bootd.yaml": tmp_b / "bootd.yaml", **data_files(data_b)})
        vm_b = ApplianceVm(lab_b, tmp_b, "appliance-b", disk_b, APPLIANCE_B, lab_b.add_tap("tapb0"), "bios")

        vm_a.power_on()
        vm_b.power_on()
        log("both appliances powered on")
        yield {"turnkey": Scenario(lab_a, tmp_a, vm_a, data_a), "authoritative": Scenario(lab_b, tmp_b, vm_b, data_b)}
    finally:
        for lab in labs:
            lab.close()


def test_turnkey_appliance_proxies_pxe_beside_a_plain_dhcp_server(scenarios):
    s: Scenario = scenarios["turnkey"]
    running, seconds = s.vm.wait_until_ready()
    log(f"appliance A (UEFI) ready {seconds:.0f} s after power-on: {running.group(0)}")
    console = s.vm.console()
    progress = PROGRESS.search(console)
    assert progress, f"the console does not say where the progress is:\n{console[-3000:]}"
    base = progress.group(1)
    assert f"http://{A_ADDRESS}:" in base, f"the progress URL is not at the address DHCP gave: {base}"
    assert "proxy" in console.lower(), f"the console does not say it serves proxy-DHCP:\n{console[-3000:]}"

    started = time.monotonic()
    for index, (name, (mac, firmware, nic)) in enumerate(CLIENTS_A.items()):
        s.lab.start(s.lab.server_ns, qemu_argv(name, mac, s.lab.add_tap(f"tapa{index + 1}"), firmware, s.tmp, nic),
                    stdout=subprocess.DEVNULL, stderr=open(s.tmp / f"{name}.qemu.log", "wb"))
    views = wait_for_reports(s.lab, base, {name: mac for name, (mac, _f, _n) in CLIENTS_A.items()}, started,
                             CLIENT_SECONDS)
    for name, view in views.items():
        stages = [stage["stage"] for stage in view["stages"]]
        tftp = ["tftp"] if "romfile=" in CLIENTS_A[name][2] else []  # EDK2 fetched ipxe.efi first
        assert stages == ["dhcp", *tftp, "boot-script", "boot-config", "kernel", "initrd", "ignition", "report"], \
            (name, stages)
        assert "bootd.profile=payload" in view["report"]["cmdline"], view["report"]
        log(f"{name}: reported {view['stages'][-1]['time'] - view['stages'][0]['time']:.0f} s after its first DHCP")
    s.vm.power_off()


def test_authoritative_appliance_serves_dhcp_and_dns_runs_unprivileged_and_keeps_leases(scenarios):
    s: Scenario = scenarios["authoritative"]
    running, seconds = s.vm.wait_until_ready()
    log(f"appliance B (BIOS) ready {seconds:.0f} s after power-on: {running.group(0)}")
    user, uid, _pid, capabilities, rss = running.groups()
    assert user == "bootd" and int(uid) != 0, running.group(0)
    assert capabilities == "cap_net_bind_service,cap_net_raw", running.group(0)
    base = f"http://{B_ADDRESS}:8080"

    dig = s.lab.run(s.lab.server_ns, ["dig", f"@{B_ADDRESS}", "matchbox.example.com", "+short", "+time=5"])
    assert dig.stdout.split() == [B_ADDRESS], (dig.stdout, dig.stderr)

    name, mac, firmware, nic = CLIENT_B
    started = time.monotonic()
    s.lab.start(s.lab.server_ns, qemu_argv(name, mac, s.lab.add_tap("tapb1"), firmware, s.tmp, nic),
                stdout=subprocess.DEVNULL, stderr=open(s.tmp / f"{name}.qemu.log", "wb"))
    view = wait_for_reports(s.lab, base, {name: mac}, started, CLIENT_SECONDS)[name]
    stages = [stage["stage"] for stage in view["stages"]]
    assert stages == ["dhcp", "boot-script", "boot-config", "kernel", "initrd", "lease", "ignition", "report"], stages
    assert view["ip"] == "192.0.2.100", view  # the first address of the range: its lease
    log(f"{name}: reported; rebooting the appliance")

    s.vm.shut_down()
    # while it is off, a person edits BOOTD and gets it wrong: the appliance keeps its last good config
    good = (s.tmp / "bootd.yaml").read_text()
    (s.tmp / "broken.yaml").write_text(good + "bogus: 1\n")
    put_on_bootd(s.vm.disk, {"bootd.yaml": s.tmp / "broken.yaml"})
    s.vm.power_on()
    running, seconds = s.vm.wait_until_ready()
    log(f"appliance B ready again {seconds:.0f} s after power-on")
    console = s.vm.console()
    assert "kept the last good one" in console, console[-3000:]
    error_line = len(good.splitlines()) + 1
    assert re.search(rf"bootd\.yaml:{error_line}\b.*bogus", console), console[-3000:]  # file, line, field
    # a DHCP client with another MAC: first-free allocation gives it .101 only if .100 is still leased
    late = s.lab.add_client(mac=LATE_B)
    script = s.tmp / "udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "bound $ip"\nexit 0\n')
    script.chmod(0o755)
    got = s.lab.run(late.ns, ["busybox", "udhcpc", "-i", late.ifname, "-f", "-q", "-n", "-t", "5", "-T", "2",
                              "-s", str(script)], timeout=60)
    bound = re.search(r"bound (\S+)", got.stdout)
    assert bound, (got.stdout, got.stderr)
    assert bound.group(1) == "192.0.2.101", f"after the reboot a new client got {bound.group(1)}: the lease of " \
                                            f"{mac} (192.0.2.100) was not kept"


def region(disk: Path, part: Partition) -> str:
    """The sha256 of a partition's bytes (read in chunks: p3 is 1 GiB)."""
    digest = hashlib.sha256()
    with open(disk, "rb") as f:
        f.seek(part.offset)
        left = part.size
        while left:
            chunk = f.read(min(left, 1 << 22))
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def test_upgrade_writes_the_system_part_and_keeps_bootd_and_state(image, tmp_path):
    """image/upgrade onto an appliance disk whose system part is older (here: scribbled over) and whose BOOTD
    holds a config: p1-p3 become the new image's, p4 and p5 stay byte for byte; a disk with another
    partition table is refused with nothing written."""
    disk = copy_image(image, tmp_path, "old")
    parts = partitions_of(disk)
    (tmp_path / "bootd.yaml").write_text("domain: example.com\n")
    put_on_bootd(disk, {"bootd.yaml": tmp_path / "bootd.yaml"})
    with open(disk, "r+b") as f:  # an older system: other bytes in p2 and p3, and in the state partition
        for name in ("EFI", "bootd-root", "bootd-state"):
            f.seek(parts[name].offset + 1024 * 1024)
            f.write(b"old bytes " * 1000)
    kept = {name: region(disk, parts[name]) for name in ("BOOTD", "bootd-state")}

    result = subprocess.run([str(ROOT / "image/upgrade"), str(disk), str(image)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "BOOTD (p4) and bootd-state (p5) were not touched" in result.stdout
    for name in ("bios", "EFI", "bootd-root"):
        assert region(disk, parts[name]) == region(image, parts[name]), name
    for name, before in kept.items():
        assert region(disk, parts[name]) == before, name
    with open(disk, "rb") as f, open(image, "rb") as new:
        assert f.read(440) == new.read(440)  # GRUB's boot code in the MBR

    other = tmp_path / "other.raw"
    subprocess.run(["truncate", "-s", "64M", str(other)], check=True)
    subprocess.run(["sgdisk", "-n", "1:1M:+8M", "-n", "2:0:+8M", str(other)], check=True, capture_output=True)
    before = other.read_bytes()
    result = subprocess.run([str(ROOT / "image/upgrade"), str(other), str(image)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("image/upgrade: partition 1 of ") and "nothing written" in result.stderr
    assert other.read_bytes() == before
