"""The decisions behind issue 17's firmware paths: relayed clients' pools (giaddr), Secure Boot's signed
chain, and the config that names them."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType

import pytest

from appliance.config import ConfigInvalid, parse_config
from appliance.dhcp.authoritative import DhcpAnswer, decide_dhcp
from appliance.dhcp.leases import LeaseTable
from appliance.dhcp.packet import MessageType
from appliance.dhcp.policy import build_policies
from appliance.dhcp.pxe import Firmware, Ignore, MachinePolicy, PxePolicy
from tests.unit.test_dhcp import IPXE_77, SERVER, boot, packet, pxe

FAR_MAC = bytes.fromhex("5254000000f1")
CONFIG = """
state_dir: /var/lib/bootd
dhcp:
  mode: authoritative
  subnet: 10.77.0.0/24
  range: [10.77.0.100, 10.77.0.150]
  router: 10.77.0.1
  dns_servers: [10.77.0.1]
  relay_pools:
    - {subnet: 198.51.100.0/24, range: [198.51.100.100, 198.51.100.101], router: 198.51.100.1}
    - {subnet: 203.0.113.0/25, range: [203.0.113.10, 203.0.113.20], dns_servers: [203.0.113.53]}
machines:
  - {name: near, mac: "52:54:00:00:00:f2", ip: 10.77.0.21}
"""


def parse(text: str):
    return parse_config(text, Path("/etc/bootd/bootd.yaml"))


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse(text)
    return [str(e) for e in info.value.errors]


def addresses():
    policies = build_policies(parse(CONFIG), frozenset(Firmware), http_port=8080)
    return policies.addresses, policies.pxe


def discover(giaddr: str, chaddr: bytes = FAR_MAC) -> DhcpAnswer | Ignore:
    policy, pxe_policy = addresses()
    return decide_dhcp(packet((53, bytes((MessageType.DISCOVER,))), giaddr=giaddr, chaddr=chaddr), LeaseTable(),
                       policy, pxe_policy, SERVER, 1000.0)


# --- relayed clients --------------------------------------------------------------------------------

@pytest.mark.parametrize("giaddr, ip, router, dns", [
    pytest.param("0.0.0.0", "10.77.0.100", "10.77.0.1", "10.77.0.1", id="local"),
    pytest.param("10.77.0.254", "10.77.0.100", "10.77.0.1", "10.77.0.1", id="relay-on-the-local-segment"),
    pytest.param("198.51.100.1", "198.51.100.100", "198.51.100.1", "10.77.0.1", id="far-segment"),
    pytest.param("203.0.113.1", "203.0.113.10", None, "203.0.113.53", id="far-segment-own-dns"),
])
def test_relayed_discover_gets_an_address_of_the_relay_segment(giaddr, ip, router, dns):
    answer = discover(giaddr)
    assert isinstance(answer, DhcpAnswer) and answer.ip == IPv4Address(ip)
    options = answer.reply.options
    assert options.get(3) == (IPv4Address(router).packed if router else None)
    assert options[6] == IPv4Address(dns).packed
    assert answer.reply.giaddr == IPv4Address(giaddr)  # answered to the relay (send_target: giaddr:67)


def test_relay_from_a_segment_without_a_pool_is_a_reasoned_drop():
    answer = discover("192.0.2.1")
    assert isinstance(answer, Ignore) and answer.reason == "no-pool-for-relay"
    assert "relayed by 192.0.2.1" in answer.detail and "dhcp.relay_pools" in answer.detail
    assert "198.51.100.0/24" in answer.detail  # the pools it has, so the operator sees the gap


def test_reservation_holds_only_on_its_own_segment():
    near = bytes.fromhex("5254000000f2")
    assert discover("0.0.0.0", near).ip == IPv4Address("10.77.0.21")
    # the same machine moved behind the relay gets a far address, not one that would not route
    assert discover("198.51.100.1", near).ip == IPv4Address("198.51.100.100")


@pytest.mark.parametrize("pool, message", [
    pytest.param("{subnet: 198.51.100.0/24}", "dhcp.relay_pools[0].range: required", id="no-range"),
    pytest.param("{subnet: 198.51.100.0/24, range: [198.51.100.1, 10.0.0.1]}", "dhcp.relay_pools[0].range: not a range",
                 id="range-outside"),
    pytest.param("{subnet: 10.77.0.0/16, range: [10.77.1.1, 10.77.1.9]}", "overlaps 10.77.0.0/24", id="overlap"),
    pytest.param("{subnet: 198.51.100.0/24, range: [198.51.100.1, 198.51.100.9], router: 10.77.0.1}",
                 "dhcp.relay_pools[0].router: not inside", id="router-outside"),
    pytest.param("{subnet: 198.51.100.0/24, range: [198.51.100.1, 198.51.100.9], gateway: 1.2.3.4}",
                 "dhcp.relay_pools[0].gateway", id="unknown-key"),
])
def test_relay_pool_errors_name_the_field(pool, message):
    text = ("state_dir: /s\ndhcp:\n  mode: authoritative\n  subnet: 10.77.0.0/24\n  range: [10.77.0.100, 10.77.0.150]\n"
            f"  relay_pools:\n    - {pool}\n")
    errors = errors_of(text)
    assert any(message in e and "bootd.yaml:7" in e for e in errors), errors


# --- Secure Boot --------------------------------------------------------------------------------------

SIGNED = PxePolicy(available=frozenset(Firmware), http_port=8080, secure_boot=True)


@pytest.mark.parametrize("arch, file, decision", [
    pytest.param(7, "shimx64.efi", "binl:shimx64.efi", id="uefi-x64-7"),
    pytest.param(9, "shimx64.efi", "binl:shimx64.efi", id="uefi-x64-9"),
    pytest.param(16, "http://10.77.0.1:8080/firmware/shimx64.efi", "http:shimx64.efi", id="http-boot-x64"),
    pytest.param(0, "undionly.kpxe", "tftp:undionly.kpxe", id="bios-unaffected"),
    pytest.param(11, "snp.efi", "binl:snp.efi", id="arm64-unaffected"),  # Debian signs x86-64 shim only
])
def test_secure_boot_machines_get_the_signed_shim(arch, file, decision):
    offer = boot(pxe(arch), SIGNED)
    assert offer.boot_file == file and offer.decision.startswith(decision)
    assert ("Secure Boot" in offer.decision) == file.endswith("shimx64.efi")


def test_ipxe_is_still_handed_the_script_under_secure_boot_policy():
    assert boot(pxe(7, MessageType.DISCOVER, IPXE_77), SIGNED).decision == "ipxe-script"


def test_machine_choice_overrides_the_default_both_ways():
    mac = "52:54:00:77:00:10"  # test_dhcp's MAC
    off = PxePolicy(available=frozenset(Firmware), machines=MappingProxyType({mac: MachinePolicy(secure_boot=True)}))
    assert boot(pxe(7), off).boot_file == "shimx64.efi"
    on = PxePolicy(available=frozenset(Firmware), secure_boot=True,
                   machines=MappingProxyType({mac: MachinePolicy(secure_boot=False)}))
    assert boot(pxe(7), on).boot_file == "ipxe.efi"


def test_secure_boot_without_the_signed_binaries_is_a_reasoned_drop():
    policy = PxePolicy(available=frozenset({Firmware.IPXE_EFI_X64, Firmware.SHIM_X64}), secure_boot=True)
    result = boot(pxe(7), policy)
    assert isinstance(result, Ignore) and result.reason == "firmware-missing"
    assert "no grubx64.efi for Secure Boot" in result.detail and "bootd firmware fetch" in result.detail


def test_secure_boot_config_per_machine_and_default():
    config = parse("state_dir: /s\ndhcp: {mode: proxy, secure_boot: true}\nmachines:\n"
                   '  - {name: a, mac: "52:54:00:00:00:01", secure_boot: false}\n')
    assert config.dhcp.secure_boot is True and config.machines[0].secure_boot is False
    pxe_policy = build_policies(config, frozenset(Firmware), http_port=8080).pxe
    assert pxe_policy.secure_boot and pxe_policy.machines["52:54:00:00:00:01"].secure_boot is False
    assert any("machines[0].secure_boot" in e for e in errors_of(
        'state_dir: /s\nmachines:\n  - {name: a, mac: "52:54:00:00:00:01", secure_boot: maybe}\n'))


# --- Secure Boot refusing unsigned iPXE: the words in the machine's progress --------------------------

def watched(*events: tuple[str, str, bool]) -> list:
    from appliance.events import Event, EventBus, EventKind
    from appliance.secureboot import RefusedBinaryWatch

    bus = EventBus()
    seen: list = []
    bus.add_sink(seen.append)
    bus.add_sink(RefusedBinaryWatch(bus).see)
    for kind, detail, ok in events:
        bus.publish(Event(kind=EventKind(kind), mac="52:54:00:00:00:01", peer=None, detail=detail, ok=ok))
    return [e for e in seen if not e.ok]


SENT = ("tftp", "sent ipxe.efi: 850528 bytes in 0.6 s, blksize 1468", True)
FIRMWARE_DHCP = ("dhcp", "ACK 192.0.2.100, boot binl:ipxe.efi ipxe.efi", True)


@pytest.mark.parametrize("events, refused", [
    pytest.param([SENT, FIRMWARE_DHCP], True, id="firmware-asked-again"),
    pytest.param([("firmware", "/firmware/ipxe.efi over HTTP (850528 bytes)", True), FIRMWARE_DHCP], True,
                 id="http-boot-then-firmware-again"),
    pytest.param([SENT, ("dhcp", "ACK 192.0.2.100, boot ipxe-script http://192.0.2.1:8080/bootd.ipxe", True),
                  ("boot-script", "/bootd.ipxe", True), FIRMWARE_DHCP], False, id="ipxe-ran"),
    pytest.param([("tftp", "sent shimx64.efi: 1048504 bytes", True), FIRMWARE_DHCP], False, id="signed-shim"),
    pytest.param([("tftp", "sent undionly.kpxe: 1 bytes", True), FIRMWARE_DHCP], False, id="bios-no-secure-boot"),
    pytest.param([("tftp", "ipxe.efi: no answer after 5 retries", False), FIRMWARE_DHCP], False, id="never-sent"),
])
def test_a_sent_ipxe_that_never_ran_is_said_in_words(events, refused):
    failures = [e for e in watched(*events) if "did not start" in e.detail]
    assert bool(failures) == refused
    if refused:
        assert "Secure Boot" in failures[0].detail and "secure_boot: true" in failures[0].detail


# --- the network GRUB's files ------------------------------------------------------------------------

def test_network_grub_names_only_its_own_files():
    from appliance.grubnet import NetworkGrub

    grub = NetworkGrub(http_port=8080, store=lambda: None, publisher=None)
    assert b'set bootd="http://$bootd_server:8080"' in grub("/grub/grub.cfg")
    assert b'configfile "/grub/machines/$net_default_mac"' in grub("/grub/grub.cfg")
    assert grub("/grub/x86_64-efi/command.lst") == b""
    assert grub("/grub/other.cfg") is None and grub("grub/grub.cfg") is None and grub("/etc/passwd") is None
    assert b"is not a MAC address" in grub("/grub/machines/../../etc/passwd")


@pytest.mark.parametrize("available, file", [
    pytest.param(frozenset(Firmware), "snp.efi", id="arm64-ipxe-when-there"),
    pytest.param(frozenset(Firmware) - {Firmware.SNP_ARM64}, "grubaa64.efi", id="debian-grub-without-ipxe"),
])
def test_arm64_gets_ipxe_or_else_debians_network_grub(available, file):
    assert boot(pxe(11), PxePolicy(available=available)).boot_file == file


def test_arm64_without_either_is_a_reasoned_drop():
    result = boot(pxe(11), PxePolicy(available=frozenset({Firmware.IPXE_EFI_X64})))
    assert isinstance(result, Ignore) and result.detail == "no snp.efi for arch 11 (EFI_ARM64) and no grubaa64.efi"
