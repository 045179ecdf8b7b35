"""PXE boot decisions: which client is asking, and what it is told to boot. Pure functions, no I/O.

Rules (research/pxe.md, tools.md §6-7):
1. A PXE client is a BOOTREQUEST from Ethernet with option 93 (client architecture). Option 60's text is
   not trusted for that: an iPXE chained from a PXE ROM may send a bare `PXEClient`. Option 97 (GUID) may be
   absent (Intel ROMs omit it) but, when present, is 17 bytes starting with 0.
2. The architecture table below is the only one; ports 67 and 4011 and both DHCP modes use it.
3. iPXE is recognised by option 77 = `iPXE` (bare, or RFC 3004 length-prefixed) or by option 175 (with
   `ipxe_detection: user-class`, by option 77 only). An iPXE client is always handed bootd's HTTP script, on
   67 and on 4011, whatever boot item (43.71) it asks for: never an iPXE binary again, so it cannot loop.
4. UEFI PXE (not iPXE, not HTTP boot) gets one of two strategies, per architecture: `binl` (no option 43;
   EDK2 then asks again on UDP 4011, as dnsmasq and pixiecore arrange it) or `direct` (option 43 {6: 0x08}:
   skip discovery and boot the file, as smee does). BIOS always gets `direct`.
5. UEFI HTTP boot (arch 15, 16, 18, 19) gets a URL to the firmware over HTTP and option 60 `HTTPClient`.
6. A firmware file that is not present is a reasoned drop (the client may find another server), never an
   offer of a file that would fail over TFTP.
7. Secure Boot (`secure_boot: true` for the machine, or `dhcp.secure_boot` for every one): an x86-64 UEFI
   client gets Debian's Microsoft-signed shim instead of iPXE (unsigned: such firmware refuses it). shim
   loads the signed network GRUB from beside it (`grubx64.efi`), GRUB reads its config from bootd (/grub)
   and boots the profile's (signed) kernel. DHCP cannot see whether a firmware enforces Secure Boot, so
   this is bootd.yaml's choice, not a guess.
8. Never hijack a machine: a client whose MAC no group could ever select (`PxePolicy.claimed`, computed
   from the groups whenever they change) gets no boot offer at all, so its firmware goes on to its next
   boot device as it would without bootd on the network. In proxy mode it is not answered; in
   authoritative mode it still gets its address, with no boot file (as dnsmasq does for a client no
   `dhcp-boot` matches). A machine a group could select but that bootd then has nothing for is told so by
   bootd's script at /bootd/ipxe, which exits to the next boot device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from ipaddress import IPv4Address
from types import MappingProxyType

from appliance.dhcp.packet import (
    BOOTREPLY, BOOTREQUEST, BROADCAST_FLAG, ZERO_IP, DhcpPacket, MalformedPacket, MessageType, Option, encode_packet,
    parse_options,
)
from appliance.dhcp.modes import IpxeDetection, UefiStrategy
from appliance.mac import MacAddress

PXE_DISCOVERY_CONTROL = 6  # option 43 sub-option; bit 3 (0x08): boot the file, no discovery/menu
PXE_BOOT_ITEM = 71  # option 43 sub-option: the boot server item a client asks a 4011 server for
IPXE_NO_PXEDHCP = 176  # option 175 sub-option: "don't wait for ProxyDHCP offers"
PXE_PORT = 4011


class Arch(IntEnum):
    """Option 93 values (RFC 4578, IANA "Processor Architecture Types")."""

    BIOS = 0
    EFI_IA32 = 6
    EFI_X64 = 7
    EFI_BC = 9  # x86-64 as well: RFC 4578's erratum swapped 7 and 9, firmware sends either
    EFI_ARM32 = 10
    EFI_ARM64 = 11
    HTTP_IA32 = 15
    HTTP_X64 = 16
    HTTP_ARM32 = 18
    HTTP_ARM64 = 19


class Firmware(StrEnum):
    """The iPXE binaries bootd serves, by file name."""

    UNDIONLY = "undionly.kpxe"  # x86 BIOS, drives the NIC through the PXE ROM's UNDI
    IPXE_EFI_X64 = "ipxe.efi"
    IPXE_EFI_IA32 = "ipxe-i386.efi"
    SNP_ARM32 = "snp-arm32.efi"
    SNP_ARM64 = "snp.efi"
    # Secure Boot (x86-64 UEFI): Debian's shim signed by Microsoft's UEFI CA, and Debian's signed network GRUB
    # under the name shim loads from beside itself
    SHIM_X64 = "shimx64.efi"
    GRUB_X64 = "grubx64.efi"
    # arm64: Debian builds no arm64 iPXE (snp.efi is the user's); its signed network GRUB boots the profile
    GRUB_ARM64 = "grubaa64.efi"


SECURE_BOOT_CHAIN = (Firmware.SHIM_X64, Firmware.GRUB_X64)


@dataclass(frozen=True, slots=True)
class ArchEntry:
    arch: Arch
    firmware: Firmware
    uefi: bool
    http_boot: bool
    fallback: Firmware | None = None  # served when `firmware` is not there (GRUB instead of iPXE)


# The architecture table: defined once.
ARCH_TABLE: Mapping[int, ArchEntry] = MappingProxyType({e.arch: e for e in (
    ArchEntry(Arch.BIOS, Firmware.UNDIONLY, uefi=False, http_boot=False),
    ArchEntry(Arch.EFI_IA32, Firmware.IPXE_EFI_IA32, uefi=True, http_boot=False),
    ArchEntry(Arch.EFI_X64, Firmware.IPXE_EFI_X64, uefi=True, http_boot=False),
    ArchEntry(Arch.EFI_BC, Firmware.IPXE_EFI_X64, uefi=True, http_boot=False),
    ArchEntry(Arch.EFI_ARM32, Firmware.SNP_ARM32, uefi=True, http_boot=False),
    ArchEntry(Arch.EFI_ARM64, Firmware.SNP_ARM64, uefi=True, http_boot=False, fallback=Firmware.GRUB_ARM64),
    ArchEntry(Arch.HTTP_IA32, Firmware.IPXE_EFI_IA32, uefi=True, http_boot=True),
    ArchEntry(Arch.HTTP_X64, Firmware.IPXE_EFI_X64, uefi=True, http_boot=True),
    ArchEntry(Arch.HTTP_ARM32, Firmware.SNP_ARM32, uefi=True, http_boot=True),
    ArchEntry(Arch.HTTP_ARM64, Firmware.SNP_ARM64, uefi=True, http_boot=True),
)})


@dataclass(frozen=True, slots=True)
class Ignore:
    """Not answered, and why (a short countable reason, plus detail for the log)."""

    reason: str
    detail: str = ""
    mac: MacAddress | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PxeRequest:
    packet: DhcpPacket
    mac: MacAddress
    message_type: int
    arch: ArchEntry
    ipxe_user_class: bool  # option 77 `iPXE`
    ipxe_encapsulated: bool  # option 175 (iPXE's own options)
    http_client: bool  # option 60 starts with HTTPClient
    guid: bytes | None
    boot_item: bytes | None  # option 43.71, echoed on 4011

    @property
    def ipxe(self) -> bool:
        return self.ipxe_user_class or self.ipxe_encapsulated


@dataclass(frozen=True, slots=True, kw_only=True)
class MachinePolicy:
    """What bootd.yaml says about one machine's booting."""

    ignore: bool = False
    boot_file: str | None = None  # instead of the architecture's firmware (a file name or a URL)
    secure_boot: bool | None = None  # None: the policy's default


@dataclass(frozen=True, slots=True, kw_only=True)
class PxePolicy:
    """Everything a PXE decision needs that is not in the packet; rebuilt on reload."""

    available: frozenset[Firmware] = frozenset()
    uefi: Mapping[int, UefiStrategy] = field(default_factory=lambda: MappingProxyType({}))
    default_uefi: UefiStrategy = UefiStrategy.BINL
    ipxe_detection: IpxeDetection = IpxeDetection.ANY
    only_known: bool = False
    machines: Mapping[MacAddress, MachinePolicy] = field(default_factory=lambda: MappingProxyType({}))
    # The MACs some group could select or that have their own boot file; None: any MAC may be selected.
    claimed: frozenset[MacAddress] | None = None
    http_port: int = 8080
    script_path: str = "/bootd.ipxe"
    secure_boot: bool = False  # rule 7, for machines that do not say

    def signed_chain(self, mac: MacAddress, entry: ArchEntry) -> bool:
        """Rule 7: does this client get shim instead of iPXE?"""
        if entry.firmware is not Firmware.IPXE_EFI_X64:  # Debian signs x86-64 shim and GRUB only
            return False
        machine = self.machines.get(mac)
        return self.secure_boot if machine is None or machine.secure_boot is None else machine.secure_boot

    def strategy(self, arch: Arch) -> UefiStrategy:
        return self.uefi.get(arch, self.default_uefi)

    def is_claimed(self, mac: MacAddress) -> bool:
        return self.claimed is None or mac in self.claimed

    def is_ipxe(self, request: PxeRequest) -> bool:
        return request.ipxe_user_class if self.ipxe_detection is IpxeDetection.USER_CLASS else request.ipxe


@dataclass(frozen=True, slots=True, kw_only=True)
class BootOffer:
    """The PXE part of a reply: what to boot and from where."""

    next_server: IPv4Address
    boot_file: str
    vendor_class: bytes  # option 60: PXEClient or HTTPClient
    vendor_options: bytes | None  # option 43, already encoded; None = leave it out (BINL)
    ipxe_options: bytes | None  # option 175 to send (authoritative mode: no-pxedhcp)
    guid: bytes | None
    decision: str  # for events and logs: "ipxe-script", "tftp:undionly.kpxe", ...


def mac_of(packet: DhcpPacket) -> MacAddress:
    return MacAddress(packet.chaddr[:6].hex(":"))


def client_of(packet: DhcpPacket) -> tuple[MacAddress, int] | Ignore:
    """(MAC, message type) of a client request from Ethernet; or why the packet is not one."""
    if packet.op != BOOTREQUEST:
        return Ignore("bootreply")
    if packet.htype != 1 or packet.hlen != 6:
        return Ignore("not-ethernet")
    mac = mac_of(packet)
    message_type = packet.message_type
    if message_type is None:
        return Ignore("no-message-type", mac=mac)
    return mac, message_type


def classify_client(packet: DhcpPacket) -> PxeRequest | Ignore:
    """Is this a PXE/iPXE client, and which; or why it is not ours."""
    client = client_of(packet)
    if isinstance(client, Ignore):
        return client
    mac, message_type = client
    arch_option = packet.options.get(Option.ARCH)
    if arch_option is None:
        return Ignore("not-pxe", "no option 93", mac=mac)
    if len(arch_option) < 2 or len(arch_option) % 2:
        return Ignore("bad-option-93", f"length {len(arch_option)}", mac=mac)
    code = int.from_bytes(arch_option[:2], "big")
    entry = ARCH_TABLE.get(code)
    if entry is None:
        return Ignore("unsupported-arch", f"arch {code}", mac=mac)
    guid = packet.options.get(Option.GUID)
    if guid is not None and (len(guid) != 17 or guid[0] != 0):
        return Ignore("bad-option-97", f"length {len(guid)}", mac=mac)
    vendor = packet.options.get(Option.VENDOR_CLASS, b"")
    boot_item = None
    if (vendor_options := packet.options.get(Option.VENDOR)) is not None:
        try:
            boot_item = parse_options(vendor_options).get(PXE_BOOT_ITEM)
        except MalformedPacket:
            return Ignore("bad-option-43", mac=mac)
    return PxeRequest(packet=packet, mac=mac, message_type=message_type, arch=entry,
                      ipxe_user_class=ipxe_user_class(packet), ipxe_encapsulated=Option.IPXE in packet.options,
                      http_client=vendor.startswith(b"HTTPClient"), guid=guid, boot_item=boot_item)


def ipxe_user_class(packet: DhcpPacket) -> bool:
    user_class = packet.options.get(Option.USER_CLASS)
    if not user_class:
        return False
    if user_class == b"iPXE":
        return True
    # RFC 3004: a list of length-prefixed classes
    i = 0
    while i < len(user_class):
        length = user_class[i]
        if user_class[i + 1 : i + 1 + length] == b"iPXE":
            return True
        i += 1 + length
    return False


def decide_boot(request: PxeRequest, policy: PxePolicy, server_ip: IPv4Address, *, port: int,
                authoritative: bool = False) -> BootOffer | Ignore:
    """What this client boots next. `port` is where the request came in (67 or 4011)."""
    machine = policy.machines.get(request.mac)
    if machine is not None and machine.ignore:
        return Ignore("ignored-machine", "ignore: true in the config", mac=request.mac)
    if machine is None and policy.only_known:
        return Ignore("unknown-machine", "only_known: true and the MAC is not in the config", mac=request.mac)
    if not policy.is_claimed(request.mac):
        return Ignore("no-profile", "no group can select this MAC, so bootd has nothing to boot for it; to claim "
                      f'it, add under machines: in bootd.yaml: - {{name: NAME, mac: "{request.mac}", profile: '
                      "PROFILE} (or a group in the data dir's groups/ that selects it)", mac=request.mac)
    entry = request.arch
    vendor_class = b"PXEClient"
    vendor_options: bytes | None = _DIRECT
    ipxe = policy.is_ipxe(request)
    if ipxe:
        boot_file = f"http://{server_ip}:{policy.http_port}{policy.script_path}"
        decision = "ipxe-script"
    elif machine is not None and machine.boot_file:
        boot_file, decision = machine.boot_file, "configured-boot-file"
        if entry.http_boot:  # HTTP boot firmware takes only an answer that says HTTPClient
            vendor_class, vendor_options = b"HTTPClient", None
    elif (signed := policy.signed_chain(request.mac, entry)) and (
            missing := [f.value for f in SECURE_BOOT_CHAIN if f not in policy.available]):
        return Ignore("firmware-missing", f"no {' and no '.join(missing)} for Secure Boot (arch {entry.arch.value}, "
                      f"{entry.arch.name}): `bootd firmware fetch` installs Debian's signed ones", mac=request.mac)
    elif not signed and entry.firmware not in policy.available and entry.fallback not in policy.available:
        return Ignore("firmware-missing", f"no {entry.firmware} for arch {entry.arch.value} ({entry.arch.name})"
                      + (f" and no {entry.fallback}" if entry.fallback else ""), mac=request.mac)
    else:
        firmware = (Firmware.SHIM_X64 if signed else entry.firmware if entry.firmware in policy.available
                    else entry.fallback or entry.firmware)
        if entry.http_boot:
            boot_file = f"http://{server_ip}:{policy.http_port}/firmware/{firmware}"
            vendor_class, vendor_options, decision = b"HTTPClient", None, f"http:{firmware}"
        else:
            boot_file, decision = firmware.value, f"tftp:{firmware}"
            if entry.uefi and port != PXE_PORT and policy.strategy(entry.arch) is UefiStrategy.BINL:
                vendor_options, decision = None, f"binl:{firmware}"
        if signed:
            decision += " (Secure Boot: signed shim, then GRUB)"
    if vendor_options is not None and request.boot_item is not None:
        vendor_options = _vendor_options(request.boot_item)
    return BootOffer(
        next_server=server_ip,
        boot_file=boot_file,
        vendor_class=vendor_class,
        vendor_options=vendor_options,
        ipxe_options=_NO_PXEDHCP if authoritative and ipxe else None,
        guid=request.guid,
        decision=decision,
    )


def _vendor_options(boot_item: bytes | None) -> bytes:
    options = bytes((PXE_DISCOVERY_CONTROL, 1, 0x08))
    if boot_item is not None:
        options += bytes((PXE_BOOT_ITEM, len(boot_item))) + boot_item
    return options + b"\xff"


_DIRECT = _vendor_options(None)
_NO_PXEDHCP = bytes((IPXE_NO_PXEDHCP, 1, 1))


def pxe_options(offer: BootOffer) -> list[tuple[int, bytes]]:
    """The options a reply carries for `offer`, after 53 and 54."""
    options = [(Option.VENDOR_CLASS, offer.vendor_class)]
    if offer.guid is not None:
        options.append((Option.GUID, offer.guid))
    if offer.vendor_options is not None:
        options.append((Option.VENDOR, offer.vendor_options))
    if offer.ipxe_options is not None:
        options.append((Option.IPXE, offer.ipxe_options))
    return options


def boot_file_fields(offer: BootOffer, requested: bytes) -> tuple[bytes, bytes, list[tuple[int, bytes]]]:
    """(sname, file, extra options): the file goes in the BOOTP header; also in option 67 when the client
    asked for it (PRL) or when it does not fit the 128-byte field."""
    file = offer.boot_file.encode()
    extra: list[tuple[int, bytes]] = []
    if Option.BOOT_FILE in requested or len(file) > 127:
        extra.append((Option.BOOT_FILE, file + b"\0"))  # dnsmasq adds the NUL; some ROMs need it
    sname = b"" if b"://" in file else str(offer.next_server).encode()
    return sname, (file if len(file) <= 127 else b""), extra


def is_proxy_request(request: PxeRequest, port: int) -> bool:
    """Proxy mode answers DISCOVER on 67 and REQUEST/INFORM on 4011; everything else is another server's."""
    if port == PXE_PORT:
        return request.message_type in (MessageType.REQUEST, MessageType.INFORM)
    return request.message_type == MessageType.DISCOVER


def proxy_reply(request: PxeRequest, offer: BootOffer, *, port: int) -> DhcpPacket:
    """Proxy OFFER on 67 (no address, broadcast) or ACK on 4011 (to the sender), carrying only boot options."""
    p = request.packet
    on_4011 = port == PXE_PORT
    sname, file, extra = boot_file_fields(offer, p.options.get(Option.PARAMETER_LIST, b""))
    options = {
        Option.MESSAGE_TYPE: bytes((MessageType.ACK if on_4011 else MessageType.OFFER,)),
        Option.SERVER_ID: offer.next_server.packed,
    }
    options.update(pxe_options(offer))
    options.update(extra)
    return DhcpPacket(
        op=BOOTREPLY, htype=p.htype, hlen=p.hlen, xid=p.xid, flags=p.flags if on_4011 else p.flags | BROADCAST_FLAG,
        ciaddr=p.ciaddr, yiaddr=p.ciaddr if on_4011 and request.boot_item is not None else ZERO_IP,
        siaddr=offer.next_server, giaddr=p.giaddr, chaddr=p.chaddr, sname=sname, file=file,
        options=MappingProxyType(options),
    )


@dataclass(frozen=True, slots=True)
class SendTarget:
    address: str
    port: int


BROADCAST = SendTarget("255.255.255.255", 68)


def send_target(request: DhcpPacket, source: tuple[str, int], *, port: int, reply: DhcpPacket) -> SendTarget:
    """RFC 2131 §4.1, and PXE's 4011 rule: to the relay, back to the 4011 sender, unicast to a client that
    has an address and did not ask for broadcast, else broadcast."""
    # `is` first: parse_packet gives ZERO_IP itself for 0.0.0.0, and IPv4Address's != is a Python call
    if request.giaddr is not ZERO_IP and request.giaddr != ZERO_IP:
        return SendTarget(str(request.giaddr), 67)
    if port == PXE_PORT:
        return SendTarget(source[0], source[1])
    if request.ciaddr is not ZERO_IP and request.ciaddr != ZERO_IP and not reply.broadcast:
        return SendTarget(str(request.ciaddr), 68)
    return BROADCAST


# --- decide once, answer many -------------------------------------------------------------------------------
# A proxy reply depends on a few request facts (architecture, iPXE or not, ...) and otherwise only copies
# per-packet fields (xid, flags, ciaddr, giaddr, chaddr, the GUID). So the first request of each kind is
# decided and encoded through the functions above, and the encoded reply becomes a template that later
# requests of the same kind patch (research/bench.md: 2-4x less work per packet). `ReplyTemplate.render`
# gives byte for byte what `encode_packet(proxy_reply(...))` gives; the unit tests hold it to that.

@dataclass(frozen=True, slots=True)
class ReplyTemplate:
    wire: bytes
    force_broadcast: bool
    yiaddr_is_ciaddr: bool
    guid_offset: int | None  # where option 97's value sits in `wire`
    offer: BootOffer
    request: PxeRequest  # the request the template was made from (its arch, iPXE flag... for events)

    def render(self, data: bytes, guid: bytes | None) -> bytes:
        """The reply to `data`: this template with the request's xid, flags, ciaddr (and yiaddr), giaddr,
        chaddr and GUID. One join of slices: the cheapest way to build it in Python."""
        wire = self.wire
        flags = data[10:12]
        if self.force_broadcast:
            flags = bytes((flags[0] | 0x80, flags[1]))
        yiaddr = data[12:16] if self.yiaddr_is_ciaddr else wire[16:20]
        parts = [wire[0:4], data[4:8], wire[8:10], flags, data[12:16], yiaddr, wire[20:24], data[24:44]]
        offset = self.guid_offset
        if offset is not None and guid is not None:
            parts += (wire[44:offset], guid, wire[offset + len(guid):])
        else:
            parts.append(wire[44:])
        return b"".join(parts)


def compile_template(request: PxeRequest, offer: BootOffer, *, port: int) -> ReplyTemplate:
    reply = proxy_reply(request, offer, port=port)
    wire = encode_packet(reply)
    guid_offset = None
    if offer.guid is not None:
        marker = bytes((Option.GUID, len(offer.guid))) + offer.guid
        guid_offset = wire.index(marker, 240) + 2
    return ReplyTemplate(wire=wire, force_broadcast=port != PXE_PORT,
                         yiaddr_is_ciaddr=port == PXE_PORT and request.boot_item is not None,
                         guid_offset=guid_offset, offer=offer, request=request)


def template_key(data: bytes, options: Mapping[int, bytes], port: int, server_ip: IPv4Address | int,
                 machine: MachinePolicy | None, claimed: bool) -> tuple[object, ...]:
    """Everything in a request that `classify_client`, `decide_boot` and `proxy_reply` read, except the
    fields a template copies. Two requests with the same key get the same reply but for those fields.
    (Option numbers as literals: this runs per packet.) The list is kept honest by a test, not by hand:
    tests/unit/test_dhcp.py changes every option and header field of each kind of request one at a time and
    checks that a change the key does not see leaves the typed path's answer equal to the template's."""
    get = options.get
    guid = get(97)
    vendor_class = get(60)
    return (
        port, data[0:3], server_ip, machine, claimed, get(53), get(93), get(77), 175 in options, get(43),
        vendor_class is not None and vendor_class.startswith(b"HTTPClient"),
        67 in get(55, b""),
        None if guid is None else (len(guid), guid[:1]),
    )
