"""PXE clients on another subnet, behind a real DHCP relay (Debian's isc-dhcp-relay), boot through bootd.

Two segments: bootd's (192.0.2.0/24, bridge br0 in the lab's server namespace) and a far one
(198.51.100.0/24, bridge brf in a router namespace that forwards between them and runs `dhcrelay`). The
machines' taps are on the far bridge, so every DHCP packet of theirs reaches bootd only through the relay
(giaddr 198.51.100.1) and every TFTP and HTTP request is routed.

- authoritative: bootd hands out the far segment's addresses from `dhcp.relay_pools` (chosen by giaddr)
  and answers the relay; a BIOS (iPXE ROM) and a UEFI (OVMF's own PXE, TFTP ipxe.efi) machine boot.
- proxy: the far segment has its own DHCP server (dnsmasq, addresses only); bootd answers through the
  relay with boot options only, and UEFI's BINL request reaches UDP 4011 routed.
- bad input: a third segment the relay serves (203.0.113.0/24) that bootd has no pool for: a real DHCP
  client there gets no answer, and that machine's progress says why.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from appliance.lab import qemu_argv
from tests.bootd_process import BootdProcess
from tests.e2e.test_boot import make_lab_config, wait_for_report
from tests.netns import Client, NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
BOOT_SECONDS = 300
ROUTER_NEAR = "192.0.2.254"
FAR = "198.51.100"  # TEST-NET-2: the segment behind the relay
ORPHAN = "203.0.113"  # TEST-NET-3: a segment the relay serves and bootd has no pool for

AUTHORITATIVE = {
    "rbios": ("52:54:00:e5:00:01", "bios", "e1000", "profile-a"),
    "ruefi": ("52:54:00:e5:00:02", "uefi", "virtio-net-pci,romfile=", "profile-b"),
}
PROXY = {
    "pbios": ("52:54:00:e5:00:11", "bios", "e1000", "profile-a"),
    "puefi": ("52:54:00:e5:00:12", "uefi", "virtio-net-pci,romfile=", "profile-b"),
}
ORPHAN_MAC = "52:54:00:e5:00:99"


def sh(lab: NetLab, ns: str, *commands: str) -> None:
    for command in commands:
        result = lab.run(ns, command.split())
        assert result.returncode == 0, (command, result.stderr)


def far_segment(lab: NetLab, tmp: Path, *, orphan: bool = False) -> Client:
    """The router: a namespace on bootd's bridge (192.0.2.254) with the far bridge brf (198.51.100.1),
    forwarding between them, and isc-dhcp-relay relaying brf's (and the orphan segment's) DHCP to bootd."""
    router = lab.add_client(f"{ROUTER_NEAR}/24")
    sh(lab, router.ns, "sysctl -qw net.ipv4.ip_forward=1", "ip link add brf type bridge",
       "ip link set brf type bridge stp_state 0 forward_delay 0", f"ip addr add {FAR}.1/24 dev brf",
       "ip addr add fd51::1/64 dev brf nodad", "ip link set brf up")
    sh(lab, lab.server_ns, f"ip route add {FAR}.0/24 via {ROUTER_NEAR}", f"ip route add {ORPHAN}.0/24 via {ROUTER_NEAR}")
    downstream = ["-id", "brf"]
    if orphan:
        sh(lab, router.ns, "ip link add brorph type bridge", f"ip addr add {ORPHAN}.1/24 dev brorph", "ip link set brorph up")
        downstream += ["-id", "brorph"]
    # -d: foreground (its process group ends with the lab); -iu: the side bootd is on
    lab.start(router.ns, ["dhcrelay", "-4", "-d", "--no-pid", *downstream, "-iu", router.ifname, lab.server_ip],
              stdout=subprocess.DEVNULL, stderr=open(tmp / "dhcrelay.log", "wb"))
    # an IPv6 router advertisement on the far segment, so iPXE does not wait for IPv6 (dnsmasq, RA only)
    lab.start(router.ns, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                          "--interface=brf", "--bind-interfaces", "--enable-ra", "--dhcp-range=fd51::,ra-only,64",
                          "--dhcp-leasefile=/dev/null", "--log-facility=-"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return router


def add_segment_host(lab: NetLab, router: Client, bridge: str, index: int, mac: str | None = None) -> Client:
    """A namespace on one of the router's bridges (through a veth pair), cleaned up with the lab."""
    ns = f"{lab.name}-c{len(lab.clients)}"
    inner, outer = f"{lab.name[:6]}h{index}", f"{lab.name[:6]}o{index}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    client = Client(ns, inner, mac or "", None, outer)
    lab.clients.append(client)
    sh(lab, router.ns, f"ip link add {outer} type veth peer name {inner} netns {ns}",
       f"ip link set {outer} master {bridge} up")
    sh(lab, ns, "ip link set lo up", *([f"ip link set {inner} address {mac}"] if mac else []), f"ip link set {inner} up")
    return client


def start_far_vm(lab: NetLab, router: Client, tmp: Path, index: int, name: str, machine: tuple) -> None:
    mac, fw, nic, _profile = machine
    tap = f"rtap{index}"
    sh(lab, router.ns, f"ip tuntap add dev {tap} mode tap", f"ip link set {tap} master brf up")
    lab.start(router.ns, qemu_argv(name, mac, tap, fw, tmp, nic), stdout=subprocess.DEVNULL,
              stderr=open(tmp / f"{name}.qemu.log", "wb"))


def machine_view(lab: NetLab, mac: str) -> dict:
    return json.loads(lab.run(lab.server_ns, ["curl", "-sf", f"http://192.0.2.1:8080/api/v1/machines/{mac}"]).stdout)


def boot_far_machines(lab: NetLab, router: Client, bootd: BootdProcess, tmp: Path, machines: dict, *,
                      lease: bool) -> None:
    started = time.time()
    for index, (name, machine) in enumerate(machines.items()):
        start_far_vm(lab, router, tmp, index, name, machine)
    for name, (mac, *_rest) in machines.items():
        wait_for_report(bootd, tmp, name, mac, timeout=BOOT_SECONDS - (time.time() - started))
    for name, (mac, fw, nic, profile) in machines.items():
        view = machine_view(lab, mac)
        stages = [s["stage"] for s in view["stages"]]
        tftp = "romfile=" in nic  # OVMF's own PXE: ipxe.efi over TFTP, routed
        # A routed proxy-mode iPXE ROM's first request (/bootd.ipxe, no labels) cannot be put to its MAC: bootd
        # never learnt its address (the far DHCP server gave it), and the neighbour table holds the router's.
        # From bootd's script on, every request names the MAC. EDK2's BINL request to 4011 comes from the
        # client's own address, so the UEFI machine's is known.
        script = ["boot-script"] if lease or tftp else []
        assert stages == ["dhcp", *(["tftp"] if tftp else []), *script, "boot-config", "kernel", "initrd",
                          *(["lease"] if lease else []), "ignition", "report"], (name, stages, view["events"])
        dhcp = next(s for s in view["stages"] if s["stage"] == "dhcp")
        if tftp:
            assert "ipxe.efi" in next(s for s in view["stages"] if s["stage"] == "tftp")["detail"]
        report = view["report"]
        assert f"bootd.profile={profile}" in report["cmdline"], report
        assert view["ip"].startswith(f"{FAR}."), view  # its address is the far segment's, routed to bootd
        print(f"{name} ({fw}, {nic}) relayed: " + ", ".join(
            f"{s['stage']} +{s['time'] - view['stages'][0]['time']:.1f}s" for s in view["stages"])
              + f"; dhcp: {dhcp['detail']}")


@pytest.fixture
def qemu():
    import shutil

    for tool in ("qemu-system-x86_64", "dhcrelay"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (qemu-system-x86, isc-dhcp-relay)")


def test_relayed_bios_and_uefi_machines_get_far_addresses_from_authoritative_bootd(qemu, tmp_path):
    config = make_lab_config(tmp_path, AUTHORITATIVE, (
        "  mode: authoritative\n  subnet: 192.0.2.0/24\n  range: [192.0.2.100, 192.0.2.150]\n  router: 192.0.2.1\n"
        "  ipxe_detection: user-class\n"
        f"  relay_pools:\n    - {{subnet: {FAR}.0/24, range: [{FAR}.100, {FAR}.150], router: {FAR}.1}}\n"))
    with NetLab("re2ea", bridge=True) as lab:
        router = far_segment(lab, tmp_path, orphan=True)
        bootd = BootdProcess(config, lab=lab, ns=lab.server_ns).start()
        try:
            boot_far_machines(lab, router, bootd, tmp_path, AUTHORITATIVE, lease=True)
            # bad input: the relay forwards a segment no pool covers: no address, and a reason in words
            orphan = add_segment_host(lab, router, "brorph", 9, ORPHAN_MAC)
            udhcpc = lab.run(orphan.ns, ["busybox", "udhcpc", "-i", orphan.ifname, "-n", "-q", "-t", "2", "-T", "1",
                                         "-s", "/bin/true"], timeout=30)
            assert udhcpc.returncode != 0  # no lease from anyone
            line = bootd.wait_for_log(lambda l: l.get("mac") == ORPHAN_MAC and l.get("stage") == "dhcp", timeout=30)
            assert line["ok"] is False and f"relayed by {ORPHAN}.1" in line["message"], line
            assert "no pool's subnet holds that address" in line["message"], line
            view = machine_view(lab, ORPHAN_MAC)
            assert view["ok"] is False and "dhcp.relay_pools" in view["failure"], view
        finally:
            assert bootd.stop() == 0


def test_relayed_bios_and_uefi_machines_boot_through_proxy_bootd_beside_the_far_dhcp_server(qemu, tmp_path):
    config = make_lab_config(tmp_path, PROXY, "  mode: proxy\n  only_known: true\n  ipxe_detection: user-class\n")
    with NetLab("re2ep", bridge=True) as lab:
        router = far_segment(lab, tmp_path)
        site = add_segment_host(lab, router, "brf", 1)  # the far segment's own DHCP server: addresses only
        sh(lab, site.ns, f"ip addr add {FAR}.2/24 dev {site.ifname}", f"ip route add default via {FAR}.1")
        lab.start(site.ns, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                            f"--interface={site.ifname}", "--bind-interfaces", f"--dhcp-range={FAR}.100,{FAR}.150,1h",
                            f"--dhcp-option=3,{FAR}.1", "--no-ping", "--dhcp-leasefile=/dev/null", "--log-facility=-"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bootd = BootdProcess(config, lab=lab, ns=lab.server_ns).start()
        try:
            boot_far_machines(lab, router, bootd, tmp_path, PROXY, lease=False)
        finally:
            assert bootd.stop() == 0
