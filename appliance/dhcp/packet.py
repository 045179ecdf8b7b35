"""DHCPv4 codec (RFC 2131, 2132): bytes <-> DhcpPacket.

Invariants:
- `parse_packet` reads the fixed header and makes one pass over the options, keeping each option's raw
  bytes (RFC 3396: a repeated option's parts are joined). Values are interpreted only when a decision asks
  (the accessors below), so the hot path pays for what it reads.
- Every malformed input raises `MalformedPacket(reason)` with a short countable reason; nothing else is
  raised for bad bytes.
- `encode_packet` writes the header, the magic cookie, options in the given order (long values split into
  255-byte parts, RFC 3396), END, and pads to 300 bytes: BOOTP's minimum, which some PXE ROMs insist on.
- Wire names (yiaddr, siaddr) stay in this file; decisions use what they mean.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address
from types import MappingProxyType

MAGIC_COOKIE = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_SIZE = HEADER.size  # 236
MIN_PACKET = 300  # RFC 1542 BOOTP minimum; dnsmasq pads to it too
BROADCAST_FLAG = 0x8000
ZERO_IP = IPv4Address(0)

BOOTREQUEST, BOOTREPLY = 1, 2


class MessageType(IntEnum):  # option 53
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Option(IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN = 15
    VENDOR = 43  # PXE sub-options (6 discovery control, 71 boot item, ...)
    REQUESTED_IP = 50
    LEASE_TIME = 51
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_LIST = 55
    MESSAGE = 56
    MAX_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOT_FILE = 67
    USER_CLASS = 77
    RELAY_AGENT = 82
    ARCH = 93
    NDI = 94
    GUID = 97
    DOMAIN_SEARCH = 119
    IPXE = 175
    END = 255


class MalformedPacket(ValueError):
    """The peer sent bytes that are not a DHCP packet we can read; `reason` is a short slug."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class DhcpPacket:
    op: int = BOOTREQUEST
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO_IP
    yiaddr: IPv4Address = ZERO_IP
    siaddr: IPv4Address = ZERO_IP
    giaddr: IPv4Address = ZERO_IP
    chaddr: bytes = b"\0" * 16
    sname: bytes = b""
    file: bytes = b""
    options: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))

    # --- what the fields mean (decisions read these) ---------------------------------------------

    @property
    def hardware_address(self) -> bytes:
        return self.chaddr[: min(self.hlen, 16)]

    @property
    def message_type(self) -> int | None:
        value = self.options.get(Option.MESSAGE_TYPE)
        return value[0] if value and len(value) == 1 else None

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)

    def option_ip(self, code: int) -> IPv4Address | None:
        value = self.options.get(code)
        return IPv4Address(value) if value is not None and len(value) == 4 else None


def parse_packet(data: bytes) -> DhcpPacket:
    if len(data) < HEADER_SIZE + 4:
        raise MalformedPacket("short-packet")
    op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file = (
        HEADER.unpack_from(data))
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedPacket("bad-op")
    if hlen > 16:
        raise MalformedPacket("bad-hlen")
    if data[HEADER_SIZE : HEADER_SIZE + 4] != MAGIC_COOKIE:
        raise MalformedPacket("bad-magic-cookie")
    # A plain dict for the options: this runs per packet, and nothing past the codec mutates a packet.
    return DhcpPacket(
        op=op, htype=htype, hlen=hlen, hops=hops, xid=xid, secs=secs, flags=flags,
        ciaddr=_address(ciaddr), yiaddr=_address(yiaddr), siaddr=_address(siaddr), giaddr=_address(giaddr),
        chaddr=chaddr, sname=sname.split(b"\0", 1)[0], file=file.split(b"\0", 1)[0],
        options=parse_options(data, HEADER_SIZE + 4),
    )


def _address(packed: bytes) -> IPv4Address:
    return ZERO_IP if packed == b"\0\0\0\0" else IPv4Address(packed)  # most are 0.0.0.0: skip the constructor


def parse_options(data: bytes, start: int = 0, *, end: int | None = None) -> dict[int, bytes]:
    """code -> raw value; PAD skipped, parsing stops at END or the end of the data.

    Per packet on the hot path: plain int literals (comparing with an IntEnum costs a method call) and a
    bound `get`; this loop is half the cost of the straightforward one."""
    options: dict[int, bytes] = {}
    get = options.get
    i, stop = start, len(data) if end is None else end
    while i < stop:
        code = data[i]
        if code == 255:  # END
            break
        if code == 0:  # PAD
            i += 1
            continue
        value_start = i + 2
        if value_start > stop:
            raise MalformedPacket("option-truncated")
        value_end = value_start + data[i + 1]
        if value_end > stop:
            raise MalformedPacket("option-past-end")
        previous = get(code)
        options[code] = data[value_start:value_end] if previous is None else previous + data[value_start:value_end]
        i = value_end  # RFC 3396: a repeated option's parts are joined above
    return options


def encode_options(options: Mapping[int, bytes] | list[tuple[int, bytes]]) -> bytes:
    parts: list[bytes] = []
    add = parts.append
    items = options.items() if isinstance(options, Mapping) else options
    for code, value in items:
        size = len(value)
        if 0 < size <= 255:  # nearly every option: one part (per reply on the hot path)
            add(bytes((code, size)))
            add(value)
        elif not size:
            add(bytes((code, 0)))
        else:
            for i in range(0, size, 255):
                part = value[i : i + 255]
                add(bytes((code, len(part))))
                add(part)
    return b"".join(parts)


def encode_packet(packet: DhcpPacket) -> bytes:
    header = HEADER.pack(
        packet.op, packet.htype, packet.hlen, packet.hops, packet.xid, packet.secs, packet.flags,
        packet.ciaddr.packed, packet.yiaddr.packed, packet.siaddr.packed, packet.giaddr.packed,
        packet.chaddr.ljust(16, b"\0")[:16], packet.sname[:63], packet.file[:127],  # keep a NUL at the end
    )
    body = header + MAGIC_COOKIE + encode_options(packet.options) + bytes((Option.END,))
    return body.ljust(MIN_PACKET, b"\0")


def mac_text(hardware_address: bytes) -> str:
    return ":".join(f"{b:02x}" for b in hardware_address)
