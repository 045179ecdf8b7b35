"""DHCP: the codec, PXE decisions (every arch, iPXE forms, UEFI strategies, relays, policies, malformed
input), the packets real firmware sent (research/tools.md §6-7), and authoritative address decisions."""

from __future__ import annotations

import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

import pytest

from appliance.dhcp.modes import IpxeDetection, UefiStrategy
from appliance.dhcp.authoritative import AddressPolicy, DhcpAnswer, Reservation, decide_dhcp
from appliance.dhcp.leases import Bind, Decline, HoldOffer, Lease, LeaseTable, Release
from appliance.dhcp.packet import (
    BOOTREPLY, DhcpPacket, MalformedPacket, MessageType, Option, encode_packet, parse_options, parse_packet,
)
from appliance.dhcp.pxe import (
    BootOffer, Firmware, Ignore, MachinePolicy, PxePolicy, classify_client, decide_boot,
    is_proxy_request, proxy_reply, send_target,
)
from appliance.mac import MacAddress

SERVER = IPv4Address("10.77.0.1")
MAC = bytes.fromhex("525400770010")
ALL = frozenset(Firmware)
POLICY = PxePolicy(available=ALL, http_port=8080)
GUID = b"\x00" + bytes(16)


def packet(*options: tuple[int, bytes], op: int = 1, flags: int = 0, ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0",
           xid: int = 0x1234, chaddr: bytes = MAC) -> DhcpPacket:
    return DhcpPacket(op=op, xid=xid, flags=flags, ciaddr=IPv4Address(ciaddr), giaddr=IPv4Address(giaddr),
                      chaddr=chaddr.ljust(16, b"\0"), options=MappingProxyType(dict(options)))


def pxe(arch: int, kind: int = MessageType.DISCOVER, *extra: tuple[int, bytes], vendor: bytes | None = None,
        **kw) -> DhcpPacket:
    vendor = vendor if vendor is not None else f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
    return packet((53, bytes((kind,))), (93, struct.pack("!H", arch)), (94, b"\x01\x02\x01"), (60, vendor),
                  (97, GUID), *extra, **kw)


def boot(p: DhcpPacket, policy: PxePolicy = POLICY, port: int = 67) -> BootOffer | Ignore:
    request = classify_client(p)
    return request if isinstance(request, Ignore) else decide_boot(request, policy, SERVER, port=port)


IPXE_77 = (77, b"iPXE")
IPXE_175 = (175, bytes.fromhex("b1050180860100"))


# --- the decision table --------------------------------------------------------------------------------

@pytest.mark.parametrize("p, file, decision, has_43, vendor_class", [
    pytest.param(pxe(0), "undionly.kpxe", "tftp:undionly.kpxe", True, b"PXEClient", id="bios"),
    pytest.param(pxe(6), "ipxe-i386.efi", "binl:ipxe-i386.efi", False, b"PXEClient", id="uefi-ia32-binl"),
    pytest.param(pxe(7), "ipxe.efi", "binl:ipxe.efi", False, b"PXEClient", id="uefi-x64-7-binl"),
    pytest.param(pxe(9), "ipxe.efi", "binl:ipxe.efi", False, b"PXEClient", id="uefi-x64-9-binl"),
    pytest.param(pxe(10), "snp-arm32.efi", "binl:snp-arm32.efi", False, b"PXEClient", id="uefi-arm32"),
    pytest.param(pxe(11), "snp.efi", "binl:snp.efi", False, b"PXEClient", id="uefi-arm64"),
    pytest.param(pxe(15, vendor=b"HTTPClient:Arch:00015"), "http://10.77.0.1:8080/firmware/ipxe-i386.efi",
                 "http:ipxe-i386.efi", False, b"HTTPClient", id="http-ia32"),
    pytest.param(pxe(16, vendor=b"HTTPClient:Arch:00016"), "http://10.77.0.1:8080/firmware/ipxe.efi",
                 "http:ipxe.efi", False, b"HTTPClient", id="uefi-http-boot-gets-url-and-httpclient"),
    pytest.param(pxe(18, vendor=b"HTTPClient"), "http://10.77.0.1:8080/firmware/snp-arm32.efi", "http:snp-arm32.efi",
                 False, b"HTTPClient", id="http-arm32"),
    pytest.param(pxe(19, vendor=b"HTTPClient"), "http://10.77.0.1:8080/firmware/snp.efi", "http:snp.efi", False,
                 b"HTTPClient", id="http-arm64"),
    pytest.param(pxe(0, MessageType.DISCOVER, IPXE_77), "http://10.77.0.1:8080/bootd.ipxe", "ipxe-script", True,
                 b"PXEClient", id="ipxe-raw-77"),
    pytest.param(pxe(7, MessageType.DISCOVER, (77, b"\x04iPXE")), "http://10.77.0.1:8080/bootd.ipxe", "ipxe-script",
                 True, b"PXEClient", id="ipxe-rfc3004-77"),
    pytest.param(pxe(7, MessageType.DISCOVER, (77, b"\x03foo\x04iPXE")), "http://10.77.0.1:8080/bootd.ipxe",
                 "ipxe-script", True, b"PXEClient", id="ipxe-rfc3004-second-class"),
    pytest.param(pxe(9, MessageType.DISCOVER, IPXE_175), "http://10.77.0.1:8080/bootd.ipxe", "ipxe-script", True,
                 b"PXEClient", id="ipxe-175-only"),
])
def test_boot_decision_per_client(p, file, decision, has_43, vendor_class):
    offer = boot(p)
    assert isinstance(offer, BootOffer), offer
    assert (offer.boot_file, offer.decision, offer.vendor_options is not None, offer.vendor_class) == (
        file, decision, has_43, vendor_class)


def test_user_class_detection_chains_an_ipxe_rom_that_hides_its_user_class():
    user_class_only = PxePolicy(available=ALL, ipxe_detection=IpxeDetection.USER_CLASS)
    # the QEMU ROM after `set user-class FirmwarePXE`: option 175 still there (tools.md §6.2)
    rom = pxe(0, MessageType.DISCOVER, IPXE_175, (77, b"FirmwarePXE"))
    assert boot(rom).decision == "ipxe-script"  # the default: 175 is iPXE
    offer = boot(rom, user_class_only)
    assert (offer.decision, offer.boot_file) == ("tftp:undionly.kpxe", "undionly.kpxe")
    # the chained undionly.kpxe says iPXE again: the script, on 67 and on 4011 with a boot item, so no loop
    chained = pxe(0, MessageType.DISCOVER, IPXE_175, IPXE_77)
    assert boot(chained, user_class_only).decision == "ipxe-script"
    at_4011 = pxe(0, MessageType.REQUEST, IPXE_175, IPXE_77, (43, bytes((71, 4, 0x80, 0, 0, 0, 255))),
                  ciaddr="10.77.0.145")
    assert boot(at_4011, user_class_only, port=4011).decision == "ipxe-script"


def test_uefi_direct_strategy_sends_option_43_per_arch():
    policy = PxePolicy(available=ALL, uefi=MappingProxyType({9: UefiStrategy.DIRECT}))
    assert boot(pxe(9), policy).vendor_options == bytes((6, 1, 8, 255))
    assert boot(pxe(7), policy).vendor_options is None  # 7 keeps the default, binl
    assert boot(pxe(7), PxePolicy(available=ALL, default_uefi=UefiStrategy.DIRECT)).vendor_options is not None


def test_binl_client_on_4011_gets_the_file_with_option_43():
    offer = boot(pxe(7, MessageType.REQUEST, ciaddr="10.77.0.145"), port=4011)
    assert offer.decision == "tftp:ipxe.efi" and offer.vendor_options is not None


@pytest.mark.parametrize("p, reason", [
    pytest.param(packet((53, b"\x01"), (60, b"PXEClient")), "not-pxe", id="non-pxe-client"),
    pytest.param(pxe(0, op=2), "bootreply", id="bootreply"),
    pytest.param(pxe(12), "unsupported-arch", id="unknown-arch"),
    pytest.param(packet((53, b"\x01"), (93, b"\x00")), "bad-option-93", id="odd-93"),
    pytest.param(packet((53, b"\x01"), (93, b"\x00\x00"), (97, b"\x00" * 9)), "bad-option-97", id="short-97"),
    pytest.param(packet((53, b"\x01"), (93, b"\x00\x00"), (97, b"\x01" + bytes(16))), "bad-option-97", id="97-type"),
    pytest.param(packet((93, b"\x00\x00")), "no-message-type", id="no-53"),
])
def test_not_ours_is_a_reasoned_drop(p, reason):
    result = boot(p)
    assert isinstance(result, Ignore) and result.reason == reason


def test_missing_guid_is_accepted():
    p = packet((53, b"\x01"), (93, b"\x00\x00"), (60, b"PXEClient"))
    assert isinstance(boot(p), BootOffer)


def test_absent_firmware_is_a_reasoned_drop():
    result = boot(pxe(11), PxePolicy(available=frozenset({Firmware.UNDIONLY, Firmware.IPXE_EFI_X64})))
    assert isinstance(result, Ignore) and result.reason == "firmware-missing" and "snp.efi" in result.detail
    # ...but an iPXE client of that arch still gets the script
    assert boot(pxe(11, MessageType.DISCOVER, IPXE_77), PxePolicy(available=frozenset())).decision == "ipxe-script"


def test_machine_policies():
    mac = MacAddress("52:54:00:77:00:10")
    only_known = PxePolicy(available=ALL, only_known=True)
    assert boot(pxe(0), only_known).reason == "unknown-machine"
    known = PxePolicy(available=ALL, only_known=True, machines=MappingProxyType({mac: MachinePolicy()}))
    assert isinstance(boot(pxe(0), known), BootOffer)
    ignored = PxePolicy(available=ALL, machines=MappingProxyType({mac: MachinePolicy(ignore=True)}))
    assert boot(pxe(0), ignored).reason == "ignored-machine"
    custom = PxePolicy(available=ALL, machines=MappingProxyType({mac: MachinePolicy(boot_file="special.kpxe")}))
    assert boot(pxe(0), custom).boot_file == "special.kpxe"
    assert boot(pxe(0, MessageType.DISCOVER, IPXE_77), custom).decision == "ipxe-script"


@pytest.mark.parametrize("kind, port, answered", [
    (MessageType.DISCOVER, 67, True), (MessageType.REQUEST, 67, False), (MessageType.INFORM, 67, False),
    (MessageType.REQUEST, 4011, True), (MessageType.INFORM, 4011, True), (MessageType.DISCOVER, 4011, False),
])
def test_proxy_answers_discover_on_67_and_request_on_4011(kind, port, answered):
    assert is_proxy_request(classify_client(pxe(0, kind)), port) is answered


# --- replies -----------------------------------------------------------------------------------------------

def reply_for(p: DhcpPacket, port: int = 67) -> DhcpPacket:
    request = classify_client(p)
    return parse_packet(encode_packet(proxy_reply(request, decide_boot(request, POLICY, SERVER, port=port), port=port)))


def test_proxy_offer_shape():
    wire = encode_packet(proxy_reply(classify_client(pxe(0)), boot(pxe(0)), port=67))
    offer = parse_packet(wire)
    assert len(wire) >= 300
    assert (offer.op, offer.xid, offer.yiaddr, offer.siaddr, offer.broadcast) == (BOOTREPLY, 0x1234, IPv4Address(0),
                                                                                   SERVER, True)
    assert offer.message_type == MessageType.OFFER and offer.options[Option.SERVER_ID] == SERVER.packed
    assert offer.options[Option.VENDOR_CLASS] == b"PXEClient" and offer.options[Option.GUID] == GUID
    assert parse_options(offer.options[Option.VENDOR]) == {6: b"\x08"}
    assert offer.file == b"undionly.kpxe" and offer.sname == b"10.77.0.1"
    assert send_target(pxe(0), ("0.0.0.0", 68), port=67, reply=offer).address == "255.255.255.255"


def test_boot_file_goes_in_option_67_when_requested():
    offer = reply_for(pxe(0, MessageType.DISCOVER, (55, bytes([1, 3, 66, 67]))))
    assert offer.options[Option.BOOT_FILE] == b"undionly.kpxe\0" and offer.file == b"undionly.kpxe"


def test_relayed_request_is_answered_to_the_relay():
    p = pxe(0, giaddr="10.1.2.3")
    offer = reply_for(p)
    assert offer.giaddr == IPv4Address("10.1.2.3")
    target = send_target(p, ("10.1.2.3", 67), port=67, reply=offer)
    assert (target.address, target.port) == ("10.1.2.3", 67)


# --- packets real firmware sent (tools.md §6-7) --------------------------------------------------------

def test_replay_undionly_discover_with_bare_pxeclient_gets_the_script():
    # undionly.kpxe chained behind a proxy: option 60 is a bare "PXEClient", flags 0x8000, user class iPXE
    p = packet((53, b"\x01"), (57, struct.pack("!H", 1472)), (93, b"\x00\x00"), (94, b"\x01\x02\x01"),
               (60, b"PXEClient"), (77, b"iPXE"), (55, bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 175])),
               (175, bytes.fromhex("b105018086100eeb03010000")), (61, b"\x01" + MAC), (97, GUID), flags=0x8000)
    offer = reply_for(p)
    assert offer.file == b"http://10.77.0.1:8080/bootd.ipxe"


def test_replay_edk2_binl_request_from_4011():
    # OVMF after a proxy offer without option 43: REQUEST from 10.77.0.145:4011 to :4011, ciaddr set, no 43
    p = packet((53, b"\x03"), (55, bytes([1, 3, 43, 60, 66, 67, 97])), (57, struct.pack("!H", 1472)),
               (60, b"PXEClient:Arch:00007:UNDI:003000"), (93, b"\x00\x07"), (94, b"\x01\x03\x00"), (97, GUID),
               ciaddr="10.77.0.145", xid=0xABCDEF01)
    request = classify_client(p)
    assert is_proxy_request(request, 4011)
    ack = reply_for(p, port=4011)
    assert ack.message_type == MessageType.ACK and ack.file == b"ipxe.efi" and ack.siaddr == SERVER
    assert ack.sname == b"10.77.0.1" and not ack.broadcast
    target = send_target(p, ("10.77.0.145", 4011), port=4011, reply=ack)
    assert (target.address, target.port) == ("10.77.0.145", 4011)


def test_replay_ipxe_4011_request_with_xid_0_and_boot_item_keeps_loop_protection():
    # iPXE's ProxyDHCP REQUEST from port 68: xid 0, flags 0x8000, 43 = {71: 80 03 00 00} (the menu's item)
    p = packet((53, b"\x03"), (93, b"\x00\x00"), (60, b"PXEClient:Arch:00000:UNDI:002001"), (77, b"iPXE"),
               (43, bytes([71, 4, 0x80, 0x03, 0, 0, 255])), (97, GUID), ciaddr="10.77.0.145", xid=0, flags=0x8000)
    ack = reply_for(p, port=4011)
    assert ack.file == b"http://10.77.0.1:8080/bootd.ipxe"  # never undionly.kpxe again
    assert ack.xid == 0 and ack.yiaddr == IPv4Address("10.77.0.145")
    assert parse_options(ack.options[Option.VENDOR])[71] == bytes([0x80, 0x03, 0, 0])


# --- malformed bytes -------------------------------------------------------------------------------------

GOOD = encode_packet(pxe(0))


@pytest.mark.parametrize("data, reason", [
    pytest.param(GOOD[:100], "short-packet", id="truncated"),
    pytest.param(GOOD[:236] + b"\x63\x82\x53\x64" + GOOD[240:], "bad-magic-cookie", id="bad-cookie"),
    pytest.param(GOOD[:240] + bytes([53, 1, 1, 60, 200, 65]), "option-past-end", id="option-length-past-end"),
    pytest.param(GOOD[:240] + bytes([53]), "option-truncated", id="option-without-length"),
    pytest.param(bytes([3]) + GOOD[1:], "bad-op", id="bad-op"),
    pytest.param(GOOD[:2] + bytes([17]) + GOOD[3:], "bad-hlen", id="bad-hlen"),
])
def test_malformed_packets_raise_with_a_reason(data, reason):
    with pytest.raises(MalformedPacket) as info:
        parse_packet(data)
    assert info.value.reason == reason


def test_codec_round_trip_and_rfc3396_concatenation():
    p = pxe(7, MessageType.DISCOVER, (43, bytes(300)))
    assert parse_packet(encode_packet(p)) == p
    assert parse_options(bytes([12, 2]) + b"ab" + bytes([12, 1]) + b"c" + b"\xff") == {12: b"abc"}


# --- authoritative decisions ------------------------------------------------------------------------------

A = MacAddress("52:54:00:77:00:10")
B_MAC = bytes.fromhex("5254000000bb")
RESERVED = MacAddress("52:54:00:aa:aa:aa")
ADDRESSES = AddressPolicy(
    subnet=IPv4Network("10.77.0.0/24"), first=IPv4Address("10.77.0.100"), last=IPv4Address("10.77.0.102"),
    router=IPv4Address("10.77.0.1"), dns_servers=(IPv4Address("10.77.0.1"),), domain="example.com",
    reservations=MappingProxyType({RESERVED: Reservation(ip=IPv4Address("10.77.0.21"), hostname="node1")}),
    extra_options=MappingProxyType({42: IPv4Address("10.77.0.1").packed}),
)


def dhcp(p: DhcpPacket, table: LeaseTable, now: float = 1000.0, policy: PxePolicy = POLICY) -> DhcpAnswer | Ignore:
    return decide_dhcp(p, table, ADDRESSES, policy, SERVER, now)


def test_discover_then_request_binds_and_offers_pxe_options():
    table = LeaseTable()
    offer = dhcp(pxe(0, MessageType.DISCOVER, IPXE_77), table)
    assert offer.ip == IPv4Address("10.77.0.100") and isinstance(offer.change, HoldOffer)
    reply = offer.reply
    assert reply.yiaddr == offer.ip and reply.options[Option.SUBNET_MASK] == IPv4Address("255.255.255.0").packed
    assert reply.options[Option.DNS] == SERVER.packed and reply.options[Option.DOMAIN] == b"example.com"
    assert reply.options[Option.DOMAIN_SEARCH] == b"\x07example\x03com\x00"
    assert reply.options[42] == SERVER.packed and reply.options[Option.LEASE_TIME] == (3600).to_bytes(4, "big")
    assert reply.file == b"http://10.77.0.1:8080/bootd.ipxe" and reply.options[Option.IPXE] == bytes((176, 1, 1))
    table.apply(offer.change)
    ack = dhcp(pxe(0, MessageType.REQUEST, IPXE_77, (50, offer.ip.packed), (54, SERVER.packed)), table)
    assert ack.reply.message_type == MessageType.ACK and isinstance(ack.change, Bind)
    table.apply(ack.change)
    assert table.lease_for(A, 1001.0).ip == offer.ip


def test_reserved_machine_gets_its_address_and_name_and_nobody_else_gets_it():
    table = LeaseTable()
    answer = dhcp(packet((53, b"\x01"), chaddr=bytes.fromhex("525400aaaaaa")), table)
    assert answer.ip == IPv4Address("10.77.0.21") and answer.reply.options[Option.HOSTNAME] == b"node1"
    stranger = dhcp(packet((53, b"\x03"), (50, IPv4Address("10.77.0.21").packed)), table)
    assert stranger.reply.message_type == MessageType.NAK


def test_pool_never_hands_out_an_address_twice_and_exhaustion_is_a_drop():
    table = LeaseTable()
    seen = set()
    for i in range(3):
        answer = dhcp(packet((53, b"\x01"), chaddr=bytes([2, 0, 0, 0, 0, i])), table)
        table.apply(answer.change)
        seen.add(answer.ip)
    assert len(seen) == 3
    result = dhcp(packet((53, b"\x01"), chaddr=bytes([2, 0, 0, 0, 0, 9])), table)
    assert isinstance(result, Ignore) and result.reason == "pool-exhausted"
    # offers run out after their hold; then the address is free again
    assert isinstance(dhcp(packet((53, b"\x01"), chaddr=bytes([2, 0, 0, 0, 0, 9])), table, now=2000.0), DhcpAnswer)


def test_request_for_another_clients_address_is_naked():
    table = LeaseTable()
    table.apply(Bind(Lease(ip=IPv4Address("10.77.0.100"), mac=A, expires=5000.0)))
    answer = dhcp(packet((53, b"\x03"), (50, IPv4Address("10.77.0.100").packed), chaddr=B_MAC), table)
    assert answer.reply.message_type == MessageType.NAK and answer.reply.broadcast


def test_request_for_another_server_withdraws_our_offer():
    table = LeaseTable()
    offer = dhcp(packet((53, b"\x01")), table)
    table.apply(offer.change)
    answer = dhcp(packet((53, b"\x03"), (54, IPv4Address("10.77.0.2").packed), (50, offer.ip.packed)), table)
    assert answer.reply is None and isinstance(answer.change, Release)
    result = dhcp(packet((53, b"\x03"), (54, IPv4Address("10.77.0.2").packed)), LeaseTable())
    assert isinstance(result, Ignore) and result.reason == "other-server"


def test_decline_quarantines_and_the_client_moves_on():
    table = LeaseTable()
    offer = dhcp(packet((53, b"\x01")), table)
    table.apply(offer.change)
    table.apply(dhcp(packet((53, b"\x03"), (50, offer.ip.packed), (54, SERVER.packed)), table).change)
    decline = dhcp(packet((53, b"\x04"), (50, offer.ip.packed), (54, SERVER.packed)), table)
    assert decline.reply is None and isinstance(decline.change, Decline)
    table.apply(decline.change)
    again = dhcp(packet((53, b"\x01")), table)
    assert again.ip != offer.ip


def test_release_frees_and_inform_gets_options_without_an_address():
    table = LeaseTable()
    table.apply(Bind(Lease(ip=IPv4Address("10.77.0.100"), mac=A, expires=5000.0)))
    release = dhcp(packet((53, b"\x07"), ciaddr="10.77.0.100"), table)
    table.apply(release.change)
    assert table.lease_for(A, 1000.0) is None
    inform = dhcp(packet((53, b"\x08"), ciaddr="10.77.0.150"), table)
    assert inform.reply.yiaddr == IPv4Address(0) and Option.LEASE_TIME not in inform.reply.options


def test_a_decline_or_release_from_another_mac_changes_nothing():
    table = LeaseTable()
    table.apply(Bind(Lease(ip=IPv4Address("10.77.0.100"), mac=A, expires=5000.0)))
    decline = dhcp(packet((53, b"\x04"), (50, IPv4Address("10.77.0.100").packed), chaddr=B_MAC), table)
    assert isinstance(decline, Ignore) and decline.reason == "decline-not-holder"
    release = dhcp(packet((53, b"\x07"), ciaddr="10.77.0.100", chaddr=B_MAC), table)
    assert isinstance(release, Ignore) and release.reason == "release-not-holder"
    renewal = dhcp(packet((53, b"\x03"), (50, IPv4Address("10.77.0.100").packed), (54, SERVER.packed)), table)
    assert renewal.reply.message_type == MessageType.ACK  # A keeps its lease
    # nor does a stranger's DECLINE of a free address quarantine it
    free = dhcp(packet((53, b"\x04"), (50, IPv4Address("10.77.0.101").packed), chaddr=B_MAC), table)
    assert isinstance(free, Ignore) and not table.quarantined(IPv4Address("10.77.0.101"), 1000.0)


def test_release_and_decline_leave_no_offer_behind_and_the_sweep_forgets_what_ran_out():
    table = LeaseTable()
    offer = dhcp(packet((53, b"\x01")), table)
    table.apply(offer.change)
    table.apply(dhcp(packet((53, b"\x03"), (50, offer.ip.packed), (54, SERVER.packed)), table).change)
    table.apply(dhcp(packet((53, b"\x04"), (50, offer.ip.packed)), table).change)  # A declines its address
    other = dhcp(packet((53, b"\x01"), chaddr=B_MAC), table)
    table.apply(other.change)  # B is offered another address, then releases before it is bound
    table.apply(Release(other.ip, MacAddress(B_MAC.hex(":"))))
    assert table.sizes() == {"leases": 0, "offers": 0, "offers_by_mac": 0, "quarantined": 1}
    table.sweep(1000.0 + 601)  # the quarantine (600 s) ran out
    assert table.sizes() == {"leases": 0, "offers": 0, "offers_by_mac": 0, "quarantined": 0}


def test_a_release_of_an_offer_never_touches_another_clients_offer():
    table = LeaseTable()
    offer = dhcp(packet((53, b"\x01")), table)
    table.apply(offer.change)
    table.apply(Release(offer.ip, MacAddress(B_MAC.hex(":"))))  # B names A's offered address
    assert table.offered_to(A, 1000.0) == offer.ip


def test_only_known_and_ignored_machines_get_no_answer_in_authoritative_mode():
    only_known = PxePolicy(available=ALL, only_known=True)
    assert dhcp(pxe(0), LeaseTable(), policy=only_known).reason == "unknown-machine"
    assert isinstance(dhcp(pxe(0, chaddr=bytes.fromhex("525400aaaaaa")), LeaseTable(), policy=only_known), DhcpAnswer)


def test_leases_persist_atomically_and_reload(tmp_path):
    table = LeaseTable(tmp_path / "leases.json")
    table.apply(Bind(Lease(ip=IPv4Address("10.77.0.100"), mac=A, expires=5000.0, hostname="x")))
    table.save()
    assert [p.name for p in tmp_path.iterdir()] == ["leases.json"]  # no temp file left behind
    loaded = LeaseTable.load(tmp_path / "leases.json")
    assert loaded.lease_for(A, 1000.0) == Lease(ip=IPv4Address("10.77.0.100"), mac=A, expires=5000.0, hostname="x")
    (tmp_path / "leases.json").write_text("{broken")
    assert LeaseTable.load(tmp_path / "leases.json").leases(0) == []


# --- templates: decide once, answer many ----------------------------------------------------------------

from appliance.dhcp.pxe import compile_template, template_key  # noqa: E402

TEMPLATE_CASES = [
    pxe(0), pxe(7), pxe(16, vendor=b"HTTPClient:Arch:00016"), pxe(0, MessageType.DISCOVER, IPXE_77),
    pxe(0, MessageType.DISCOVER, (55, bytes([1, 66, 67]))), pxe(0, giaddr="10.9.8.7"),
    pxe(7, MessageType.REQUEST, ciaddr="10.77.0.145"),
    pxe(0, MessageType.REQUEST, IPXE_77, (43, bytes([71, 4, 0x80, 3, 0, 0, 255])), ciaddr="10.77.0.145", xid=0),
    packet((53, b"\x01"), (93, b"\x00\x00"), (60, b"PXEClient")),  # no GUID
]


@pytest.mark.parametrize("first", TEMPLATE_CASES)
def test_template_renders_exactly_what_the_typed_path_encodes(first):
    port = 4011 if first.message_type == MessageType.REQUEST else 67
    template = compile_template(classify_client(first), boot(first, port=port), port=port)
    # another machine of the same kind: other xid, MAC, GUID, flags, addresses
    second_guid = b"\x00" + bytes(range(100, 116))
    options = dict(first.options)
    if Option.GUID in options:
        options[Option.GUID] = second_guid
    second = DhcpPacket(op=1, xid=0xCAFEBABE, flags=first.flags ^ 0x8000, ciaddr=first.ciaddr, giaddr=first.giaddr,
                        chaddr=bytes.fromhex("5254009999aa").ljust(16, b"\0"), options=MappingProxyType(options))
    data = encode_packet(second)
    assert template_key(data, parse_options(data, 240), port, SERVER, None, True) == template_key(
        encode_packet(first), parse_options(encode_packet(first), 240), port, SERVER, None, True)
    expected = encode_packet(proxy_reply(classify_client(second), boot(second, port=port), port=port))
    assert template.render(data, options.get(Option.GUID)) == expected


def test_loading_removes_what_an_interrupted_write_left(tmp_path):
    table = LeaseTable(tmp_path / "leases.json")
    table.apply(Bind(Lease(ip=IPv4Address("10.77.0.100"), mac=A, expires=5000.0)))
    table.save()
    (tmp_path / ".leases.json.k2j3h4").write_bytes(b'{"version": 1, "lea')  # kill -9 between write and rename
    loaded = LeaseTable.load(tmp_path / "leases.json")
    assert loaded.lease_for(A, 1000.0).ip == IPv4Address("10.77.0.100")
    assert [p.name for p in tmp_path.iterdir()] == ["leases.json"]


def _typed_proxy_outcome(data: bytes, port: int) -> tuple[object, ...]:
    """What the typed path decides for a raw request (server._decide_proxy's steps): a reply's bytes or why not."""
    try:
        request = classify_client(parse_packet(data))
    except MalformedPacket as exc:
        return ("ignore", exc.reason)
    if isinstance(request, Ignore):
        return ("ignore", request.reason)
    if not is_proxy_request(request, port):
        return ("ignore", "not-for-proxy")
    offer = decide_boot(request, POLICY, SERVER, port=port)
    if isinstance(offer, Ignore):
        return ("ignore", offer.reason)
    return ("reply", encode_packet(proxy_reply(request, offer, port=port)))


_OPTION_VALUES = (b"", b"\x00", b"\x00\x07", b"\x00\x10", b"iPXE", b"\x04iPXE", b"PXEClient:Arch:00007",
                  b"HTTPClient:Arch:00016", bytes([1, 66, 67]), bytes(17), b"\x00" + bytes(range(1, 17)))


def _mutations(first: DhcpPacket):
    for number in range(1, 255):
        for value in _OPTION_VALUES:
            yield replace(first, options=MappingProxyType({**first.options, number: value}))
        yield replace(first, options=MappingProxyType({k: v for k, v in first.options.items() if k != number}))
    for name, values in (("op", (1, 2)), ("htype", (1, 6)), ("hlen", (0, 6, 16)), ("hops", (0, 3)),
                         ("secs", (0, 9)), ("flags", (0, 0x8000)), ("ciaddr", (IPv4Address("10.77.0.9"),)),
                         ("giaddr", (IPv4Address(0), IPv4Address("10.9.8.7"))), ("siaddr", (IPv4Address("10.1.1.1"),)),
                         ("sname", (b"", b"srv")), ("file", (b"", b"boot.file"))):
        for value in values:
            yield replace(first, **{name: value})


@pytest.mark.parametrize("first", TEMPLATE_CASES)
def test_requests_with_one_template_key_get_one_answer(first):
    """The proxy fast path answers from a template chosen by `template_key`, listed by hand; a decision that
    started reading a field the key leaves out would serve one client another's reply. Every single change of
    an option (1-254, eleven values, or removed) or of a header field either changes the key, or leaves the
    typed path's answer exactly what the template renders."""
    port = 4011 if first.message_type == MessageType.REQUEST else 67
    original = encode_packet(first)
    key = template_key(original, parse_options(original, 240), port, SERVER, None, True)
    outcome = _typed_proxy_outcome(original, port)
    template = compile_template(classify_client(first), boot(first, port=port), port=port) \
        if outcome[0] == "reply" else None
    checked = 0
    for mutated in _mutations(first):
        data = encode_packet(mutated)
        try:
            options = parse_options(data, 240)
        except MalformedPacket:
            continue
        if template_key(data, options, port, SERVER, None, True) != key:
            continue
        checked += 1
        typed = _typed_proxy_outcome(data, port)
        if template is None:
            assert typed == outcome, (mutated, typed, outcome)
        else:
            assert typed == ("reply", template.render(data, options.get(Option.GUID))), mutated
    assert checked > 1000
