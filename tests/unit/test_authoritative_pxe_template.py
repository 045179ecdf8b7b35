"""Authoritative mode's PXE reply templates (issue 16): a templated reply is byte for byte, and field for
field, the reply the full decision (classify_client, decide_boot, boot_file_fields, encode_packet) gives."""

from __future__ import annotations

import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

import pytest

from appliance.dhcp import authoritative
from appliance.dhcp.authoritative import (
    AddressPolicy,
    Reservation,
    decide_dhcp,
    forget_templates,
)
from appliance.dhcp.leases import Bind, Lease, LeaseTable
from appliance.dhcp.modes import UefiStrategy
from appliance.dhcp.packet import DhcpPacket, MessageType, Option, encode_packet
from appliance.dhcp.pxe import Firmware, Ignore, MachinePolicy, PxePolicy
from appliance.mac import MacAddress

SERVER = IPv4Address("10.77.0.1")
MAC = bytes.fromhex("525400770010")
RESERVED = bytes.fromhex("525400aaaaaa")
SECURE = bytes.fromhex("525400bbbbbb")  # a machine with Secure Boot on
OWN_FILE = bytes.fromhex("525400cccccc")  # a machine with its own boot file
GUID = b"\x00" + bytes(range(1, 17))
PXE = PxePolicy(available=frozenset(Firmware), http_port=8080, uefi=MappingProxyType({7: UefiStrategy.DIRECT}),
                machines=MappingProxyType({MacAddress(SECURE.hex(":")): MachinePolicy(secure_boot=True),
                                           MacAddress(OWN_FILE.hex(":")): MachinePolicy(boot_file="custom.efi")}))
ADDRESSES = AddressPolicy(
    subnet=IPv4Network("10.77.0.0/24"), first=IPv4Address("10.77.0.100"), last=IPv4Address("10.77.0.200"),
    router=SERVER, dns_servers=(SERVER,), domain="example.com",
    reservations=MappingProxyType({MacAddress(RESERVED.hex(":")): Reservation(ip=IPv4Address("10.77.0.21"),
                                                                              hostname="node1")}),
    extra_options=MappingProxyType({42: SERVER.packed}),
    relayed=(AddressPolicy(subnet=IPv4Network("10.9.8.0/24"), first=IPv4Address("10.9.8.100"),
                           last=IPv4Address("10.9.8.200"), router=IPv4Address("10.9.8.1")),),
)


def packet(*options: tuple[int, bytes], flags: int = 0, ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0",
           xid: int = 0x1234, chaddr: bytes = MAC) -> DhcpPacket:
    return DhcpPacket(op=1, xid=xid, flags=flags, ciaddr=IPv4Address(ciaddr), giaddr=IPv4Address(giaddr),
                      chaddr=chaddr.ljust(16, b"\0"), options=MappingProxyType(dict(options)))


def pxe(arch: int, kind: int = MessageType.DISCOVER, *extra: tuple[int, bytes], vendor: bytes | None = None,
        prl: bytes = bytes([1, 3, 6, 43, 60, 66, 67]), **kw) -> DhcpPacket:
    vendor = vendor if vendor is not None else f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
    return packet((53, bytes((kind,))), (55, prl), (93, struct.pack("!H", arch)), (94, b"\x01\x02\x01"),
                  (60, vendor), (97, GUID), *extra, **kw)


IPXE = (77, b"iPXE")
CASES = {
    "bios": pxe(0),
    "uefi-x64": pxe(7),
    "uefi-x64-binl": pxe(9),
    "arm64": pxe(11),
    "http-boot": pxe(16, vendor=b"HTTPClient:Arch:00016"),
    "ipxe-bios": pxe(0, MessageType.DISCOVER, IPXE),
    "ipxe-uefi": pxe(7, MessageType.DISCOVER, IPXE, (175, bytes([19, 1, 1]))),
    "relayed": pxe(0, giaddr="10.9.8.1"),
    "reserved-hostname": pxe(7, chaddr=RESERVED),
    "secure-boot": pxe(7, chaddr=SECURE),
    "own-boot-file": pxe(0, chaddr=OWN_FILE),
    "prl-without-67": pxe(0, prl=bytes([1, 3, 6])),
    "prl-empty": pxe(7, prl=b""),
    "broadcast-flag": pxe(0, flags=0x8000),
    "boot-item": pxe(0, MessageType.DISCOVER, (43, bytes([71, 4, 0x80, 3, 0, 0, 255]))),
    "no-guid": packet((53, b"\x01"), (93, b"\x00\x00"), (60, b"PXEClient")),
    "request": pxe(7, MessageType.REQUEST, (50, IPv4Address("10.77.0.100").packed), (54, SERVER.packed)),
    "renewal": pxe(0, MessageType.REQUEST, IPXE, ciaddr="10.77.0.100"),
    "inform": pxe(0, MessageType.INFORM, ciaddr="10.77.0.150"),
    "plain": packet((53, b"\x01"), (55, bytes([1, 3, 6, 15]))),
    "plain-reserved": packet((53, b"\x01"), chaddr=RESERVED),
}


def another(first: DhcpPacket, chaddr: bytes | None = None) -> DhcpPacket:
    """Another client of the same kind: other xid, flags and GUID (a reserved or configured MAC stays)."""
    options = dict(first.options)
    if Option.GUID in options:
        options[Option.GUID] = b"\x00" + bytes(range(100, 116))
    mac = first.chaddr[:6]
    if chaddr is None and mac == MAC:
        chaddr = bytes.fromhex("5254009999aa")
    ciaddr = first.ciaddr + 1 if first.ciaddr != IPv4Address(0) else first.ciaddr
    return replace(first, xid=0xCAFEBABE, flags=first.flags ^ 0x8000, options=MappingProxyType(options),
                   chaddr=(chaddr or mac).ljust(16, b"\0"), ciaddr=ciaddr)


def decide(p: DhcpPacket, table: LeaseTable, pxe_policy: PxePolicy = PXE):
    return decide_dhcp(p, table, ADDRESSES, pxe_policy, SERVER, 1000.0)


def full(p: DhcpPacket, table: LeaseTable, pxe_policy: PxePolicy = PXE):
    """The untemplated answer: every template forgotten first."""
    forget_templates()
    return decide(p, table, pxe_policy)


def assert_same(answer, expected) -> None:
    if isinstance(expected, Ignore):
        assert answer == expected
        return
    assert answer.encoded_reply() == encode_packet(expected.reply)
    assert answer.reply == expected.reply
    assert (answer.change, answer.mac, answer.ip, answer.boot, answer.summary) == (
        expected.change, expected.mac, expected.ip, expected.boot, expected.summary)


def table_for(*packets: DhcpPacket) -> LeaseTable:
    """A table where each renewing client (a REQUEST from its address) holds its lease."""
    table = LeaseTable()
    for p in packets:
        if p.message_type == MessageType.REQUEST and p.ciaddr != IPv4Address(0):
            table.apply(Bind(Lease(ip=p.ciaddr, mac=MacAddress(p.chaddr[:6].hex(":")), expires=5000.0)))
    return table


@pytest.mark.parametrize("name", CASES)
def test_templated_reply_is_the_full_paths(name):
    first = CASES[name]
    second = another(first)
    table = table_for(first, second)
    forget_templates()
    decide(first, table)  # makes the template
    templated = decide(second, table)
    assert not isinstance(templated, Ignore)
    if Option.ARCH in first.options:
        assert authoritative._PXE_TEMPLATES, "a PXE client's answer was not templated"
        assert templated.wire is not None
    assert_same(templated, full(second, table))


_OPTION_VALUES = (b"", b"\x00", b"\x00\x07", b"\x00\x0b", b"iPXE", b"\x04iPXE", b"PXEClient:Arch:00007",
                  b"HTTPClient:Arch:00016", bytes([1, 66, 67]), bytes(17), b"\x00" + bytes(range(1, 17)),
                  IPv4Address("10.77.0.150").packed)


def _mutations(first: DhcpPacket):
    for number in range(1, 255):
        for value in _OPTION_VALUES:
            yield replace(first, options=MappingProxyType({**first.options, number: value}))
        yield replace(first, options=MappingProxyType({k: v for k, v in first.options.items() if k != number}))
    for name, values in (("flags", (0, 0x8000)), ("ciaddr", (IPv4Address("10.77.0.150"),)),
                         ("giaddr", (IPv4Address(0), IPv4Address("10.9.8.7"), IPv4Address("10.77.0.9"))),
                         ("chaddr", tuple(m.ljust(16, b"\0") for m in (RESERVED, SECURE, OWN_FILE))),
                         ("hops", (0, 3)), ("secs", (0, 9)), ("sname", (b"", b"srv")), ("file", (b"", b"x"))):
        for value in values:
            yield replace(first, **{name: value})


@pytest.mark.parametrize("name", ["bios", "uefi-x64", "ipxe-uefi", "reserved-hostname", "request", "relayed"])
def test_every_single_change_of_a_request_gets_the_full_paths_answer(name):
    """The key (`_pxe_key`) is listed by hand; a decision that started reading a field it leaves out would
    give one client another's reply. Each single change of an option (1-254, twelve values, or removed) or of a
    header field, answered right after the original made its template, is answered as the full path does."""
    first = CASES[name]
    table = table_for(first)
    checked = 0
    for mutated in _mutations(first):
        forget_templates()
        decide(first, table)
        templated = decide(mutated, table)
        assert_same(templated, full(mutated, table))
        checked += 1
    assert checked > 3000


def test_a_new_policy_is_never_answered_from_an_old_template():
    first, second = CASES["bios"], another(CASES["bios"])
    table = LeaseTable()
    forget_templates()
    decide(first, table)
    for policy in (replace(PXE, claimed=frozenset()), replace(PXE, available=frozenset({Firmware.IPXE_EFI_X64})),
                   replace(PXE, http_port=9090), replace(PXE, machines=MappingProxyType({
                       MacAddress(second.chaddr[:6].hex(":")): MachinePolicy(boot_file="other.kpxe")}))):
        answer = decide(second, table, policy)
        assert_same(answer, full(second, table, policy))
        decide(first, table)  # the old policy's template back in place for the next one


def test_server_update_forgets_the_templates():
    from appliance.dhcp.policy import DhcpPolicies
    from appliance.dhcp.server import DhcpServer
    from appliance.events import EventBus

    decide(CASES["bios"], LeaseTable())
    assert authoritative._PXE_TEMPLATES
    from appliance.dhcp.modes import DhcpMode

    policies = DhcpPolicies(mode=DhcpMode.AUTHORITATIVE, pxe=PXE, addresses=ADDRESSES)
    server = DhcpServer(policies=policies, bus=EventBus(), batch=False)
    server.update(replace(policies, pxe=replace(PXE, http_port=9090)))
    assert not authoritative._PXE_TEMPLATES
