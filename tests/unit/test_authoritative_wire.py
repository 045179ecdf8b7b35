"""Authoritative replies to clients that are not PXE firmware come from a per-pool precompiled template
(`DhcpAnswer.wire`): byte for byte what encoding the typed reply gives, for every kind of reply and client."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

import pytest

from appliance.dhcp.authoritative import AddressPolicy, Reservation, decide_dhcp
from appliance.dhcp.leases import LeaseTable
from appliance.dhcp.packet import DhcpPacket, MessageType, Option, encode_packet, parse_packet
from appliance.dhcp.pxe import PxePolicy
from appliance.mac import MacAddress

SERVER = IPv4Address("10.78.0.1")
RESERVED = MacAddress("52:54:00:aa:aa:aa")
LOCAL = AddressPolicy(
    subnet=IPv4Network("10.78.0.0/24"), first=IPv4Address("10.78.0.100"), last=IPv4Address("10.78.0.200"),
    router=IPv4Address("10.78.0.1"), dns_servers=(IPv4Address("10.78.0.1"), IPv4Address("10.78.0.2")),
    domain="lab.example", reservations=MappingProxyType({RESERVED: Reservation(ip=IPv4Address("10.78.0.21"),
                                                                              hostname="node1")}),
    extra_options=MappingProxyType({42: SERVER.packed, 200: b"x" * 300}),  # one option longer than 255 bytes
    relayed=(AddressPolicy(subnet=IPv4Network("10.79.0.0/24"), first=IPv4Address("10.79.0.10"),
                           last=IPv4Address("10.79.0.20")),),
)
BARE = AddressPolicy(subnet=IPv4Network("10.78.0.0/24"), first=IPv4Address("10.78.0.100"),
                     last=IPv4Address("10.78.0.101"))


def request(kind: int, chaddr: bytes, *options: tuple[int, bytes], flags: int = 0, ciaddr: str = "0.0.0.0",
            giaddr: str = "0.0.0.0", xid: int = 0xDEADBEEF) -> DhcpPacket:
    return DhcpPacket(op=1, xid=xid, flags=flags, secs=7, hops=1, ciaddr=IPv4Address(ciaddr),
                      giaddr=IPv4Address(giaddr), chaddr=chaddr.ljust(16, b"\0"),
                      options=MappingProxyType({53: bytes((kind,)), **dict(options)}))


CASES = {
    "discover": (LOCAL, request(MessageType.DISCOVER, bytes.fromhex("020000000001"))),
    "discover, broadcast flag": (LOCAL, request(MessageType.DISCOVER, bytes.fromhex("020000000002"), flags=0x8000)),
    "request (selecting)": (LOCAL, request(MessageType.REQUEST, bytes.fromhex("020000000003"),
                                           (50, IPv4Address("10.78.0.150").packed), (54, SERVER.packed))),
    "request (renewing, ciaddr)": (LOCAL, request(MessageType.REQUEST, bytes.fromhex("020000000004"),
                                                  ciaddr="10.78.0.151")),
    "reserved machine (hostname)": (LOCAL, request(MessageType.DISCOVER, bytes.fromhex("525400aaaaaa"))),
    "relayed": (LOCAL, request(MessageType.DISCOVER, bytes.fromhex("020000000005"), giaddr="10.79.0.1")),
    "inform": (LOCAL, request(MessageType.INFORM, bytes.fromhex("020000000006"), ciaddr="10.78.0.50")),
    "a pool without router, DNS or domain": (BARE, request(MessageType.DISCOVER, bytes.fromhex("020000000007"))),
}


@pytest.mark.parametrize("name", CASES)
def test_the_template_reply_is_byte_for_byte_the_encoded_typed_reply(name):
    policy, packet = CASES[name]
    answer = decide_dhcp(packet, LeaseTable(), policy, PxePolicy(), SERVER, 1000.0)
    assert answer.wire is not None, "a client that is not PXE firmware is answered from the template"
    assert answer.encoded_reply() == encode_packet(answer.reply)
    reply = parse_packet(answer.encoded_reply())
    assert (reply.op, reply.xid, reply.flags, reply.chaddr) == (2, packet.xid, packet.flags, packet.chaddr)
    assert (reply.giaddr, reply.yiaddr) == (packet.giaddr, answer.ip or IPv4Address(0))
    assert reply.options[Option.SERVER_ID] == SERVER.packed


def test_templates_follow_a_reload_and_pxe_firmware_is_encoded_from_its_typed_reply():
    packet = request(MessageType.DISCOVER, bytes.fromhex("020000000008"))
    first = decide_dhcp(packet, LeaseTable(), LOCAL, PxePolicy(), SERVER, 1000.0)
    reloaded = AddressPolicy(subnet=LOCAL.subnet, first=LOCAL.first, last=LOCAL.last, lease_seconds=60)
    second = decide_dhcp(packet, LeaseTable(), reloaded, PxePolicy(), SERVER, 1000.0)
    assert parse_packet(first.encoded_reply()).options[Option.LEASE_TIME] == (3600).to_bytes(4, "big")
    assert parse_packet(second.encoded_reply()).options[Option.LEASE_TIME] == (60).to_bytes(4, "big")
    # a copy of the answer with another reply (a backend that NAKs or shortens the lease) sends that reply
    nak = DhcpPacket(op=2, xid=packet.xid, chaddr=packet.chaddr, options=MappingProxyType({53: b"\x06"}))
    assert replace(first, reply=nak).encoded_reply() == encode_packet(nak)
    firmware = request(MessageType.DISCOVER, bytes.fromhex("020000000009"), (93, b"\0\0"), (60, b"PXEClient"))
    assert decide_dhcp(firmware, LeaseTable(), LOCAL, PxePolicy(), SERVER, 1000.0).wire is None
