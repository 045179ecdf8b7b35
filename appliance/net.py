"""The host's network as bootd sees it: the kernel's neighbour table (IP -> MAC) and the interfaces'
addresses, each read with an rtnetlink dump on a socket of the standard library's (no pyroute2 in the
daemon: 5-6 MB and 50-150 ms of import, issue 16), and the IPv6 router advertisement that spares iPXE its
IPv6 wait.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct

from appliance.mac import MacAddress, try_parse_mac

logger = logging.getLogger(__name__)


class NeighbourTable:
    """The kernel's neighbour table, read with an RTM_GETNEIGH dump on a netlink socket of the standard library
    (as interface_addresses reads addresses): pyroute2, used here before, cost 5-6 MB of RSS from the first
    lookup on (issue 16's idle target), and its dump was filtered in Python all the same."""

    def __init__(self) -> None:
        self.failures = 0

    async def lookup(self, ip: str) -> MacAddress | None:
        """The MAC the kernel has for `ip` on any interface, or None (loopback, unknown, netlink failure)."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if address.is_loopback or address.is_unspecified:
            return None
        try:
            for found, lladdr in _netlink_neighbours(socket.AF_INET if address.version == 4 else socket.AF_INET6):
                # a machine's MAC: 6 bytes, unicast (a NOARP entry holds the broadcast address, a multicast
                # group's entry 33:33:..., an incomplete one none)
                if found == address and len(lladdr) == 6 and any(lladdr) and not lladdr[0] & 1:
                    return try_parse_mac(lladdr.hex(":"))
        except OSError as exc:  # netlink is best effort: a failed lookup leaves the event without a MAC
            self.failures += 1
            logger.debug("neighbour lookup for %s failed: %r", ip, exc)
        return None

    async def close(self) -> None:
        """Nothing held between lookups (each opens and closes its netlink socket)."""


async def interface_addresses(names: tuple[str, ...]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The global addresses of the named interfaces (IPv4 first). OSError for a name the host does not have.

    Read with one RTM_GETADDR dump on a netlink socket of the standard library, not pyroute2: bootd needs
    this at every start with listen.interfaces, and importing pyroute2 costs 5-6 MB of RSS and 50-150 ms for
    the whole daemon's life (issue 16's start and idle targets)."""
    indexes = set()
    for name in names:
        try:
            indexes.add(socket.if_nametoindex(name))
        except OSError:
            raise OSError(errno.ENODEV, f"listen.interfaces: this host has no interface {name!r}") from None
    found = [address for index, address in _netlink_addresses() if index in indexes
             and not address.is_link_local and not address.is_loopback]
    return sorted(found, key=lambda a: a.version)


_RTM_NEWADDR, _RTM_GETADDR, _RTM_NEWNEIGH, _RTM_GETNEIGH, _NLMSG_ERROR, _NLMSG_DONE = 20, 22, 28, 30, 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFA_ADDRESS, _IFA_LOCAL, _NDA_DST, _NDA_LLADDR = 1, 2, 1, 2
_NLMSGHDR, _RTATTR = struct.Struct("=IHHII"), struct.Struct("=HH")
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_NDMSG = struct.Struct("=BBHiHBB")  # family, padding x2, interface index, state, flags, type
_ADDRESS_SIZE = {socket.AF_INET: 4, socket.AF_INET6: 16}  # an attribute of another size is not an address


def _netlink_addresses() -> list[tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """(interface index, address) of every address of the host (rtnetlink(7), RTM_GETADDR dump). An
    interface's own address is IFA_LOCAL where given (on a point-to-point link IFA_ADDRESS is the peer's)."""
    found: list[tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]] = []
    for header, attributes in _netlink_dump(_RTM_GETADDR, _RTM_NEWADDR, _IFADDRMSG, socket.AF_UNSPEC):
        family, index = header[0], header[4]
        raw = attributes.get(_IFA_LOCAL) or attributes.get(_IFA_ADDRESS)
        if raw is not None and len(raw) == _ADDRESS_SIZE.get(family):
            found.append((index, ipaddress.ip_address(raw)))
    return found


def _netlink_neighbours(family: int) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, bytes]]:
    """(address, link-layer address) of every neighbour entry of `family` (RTM_GETNEIGH dump); b"" when the
    entry has none (incomplete, failed)."""
    found: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, bytes]] = []
    for header, attributes in _netlink_dump(_RTM_GETNEIGH, _RTM_NEWNEIGH, _NDMSG, family):
        raw = attributes.get(_NDA_DST)
        if raw is not None and len(raw) == _ADDRESS_SIZE.get(header[0]):
            found.append((ipaddress.ip_address(raw), attributes.get(_NDA_LLADDR, b"")))
    return found


def _netlink_dump(request_kind: int, answer_kind: int, header: struct.Struct,
                  family: int) -> list[tuple[tuple, dict[int, bytes]]]:
    """One rtnetlink dump: each answer's fixed header (unpacked with `header`, whose first field is the
    family) and its attributes by type. OSError for netlink's error answer."""
    # the fixed header of the request: its family (the first byte) and zeros (no filter)
    request = _NLMSGHDR.pack(_NLMSGHDR.size + header.size, request_kind, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) \
        + bytes((family,)) + bytes(header.size - 1)
    found: list[tuple[tuple, dict[int, bytes]]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(request)
        while True:  # the kernel writes the dump as it is read: each recv returns at once
            data = sock.recv(65536)
            if not data:
                return found
            at = 0
            while at + _NLMSGHDR.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, at)
                if length < _NLMSGHDR.size or kind == _NLMSG_DONE:
                    return found  # the end, or a malformed header: stop rather than loop on it
                if kind == _NLMSG_ERROR:
                    error = -struct.unpack_from("=i", data, at + _NLMSGHDR.size)[0]
                    if error:
                        raise OSError(error, f"netlink dump: {os.strerror(error)}")
                    return found
                if kind == answer_kind and length >= _NLMSGHDR.size + header.size:
                    fixed = header.unpack_from(data, at + _NLMSGHDR.size)
                    attributes: dict[int, bytes] = {}
                    offset, end = at + _NLMSGHDR.size + header.size, at + length
                    while offset + _RTATTR.size <= end:
                        size, attribute = _RTATTR.unpack_from(data, offset)
                        if size < _RTATTR.size:
                            break
                        attributes[attribute & 0x3FFF] = data[offset + _RTATTR.size : offset + size]
                        offset += (size + 3) & ~3
                    found.append((fixed, attributes))
                at += (length + 3) & ~3


# --- IPv6 router advertisements -------------------------------------------------------------------------
# iPXE configures IPv6 alongside DHCPv4 and, on a network with no router advertisement, waits 13-15 s for
# one at every stage (research/tools.md §8-9). An RA with no M/O flags completes iPXE's IPv6 configurator
# at once. This one advertises nothing: router lifetime 0 (never a default router), no prefix, no DNS, so
# it cannot take traffic from any host; it only says "no IPv6 configuration here".

ICMPV6_ROUTER_SOLICITATION = 133
ICMPV6_ROUTER_ADVERTISEMENT = 134
ICMP6_FILTER = getattr(socket, "ICMP6_FILTER", 1)  # <netinet/icmp6.h>
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
RA_INTERVAL = 30.0  # unsolicited RAs; a router solicitation is answered at once

# type, code, checksum (the kernel fills it for ICMPv6 raw sockets), cur hop limit 0 (unspecified),
# flags 0 (no DHCPv6), router lifetime 0, reachable time 0, retrans timer 0.
EMPTY_ROUTER_ADVERTISEMENT = struct.pack("!BBHBBHII", ICMPV6_ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0)


class RouterAdvertiser:
    """Sends the empty RA on interfaces where PXE clients were seen, periodically and on each solicitation."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._interfaces: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0
        self.failures = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # RFC 4861 §6.1.2
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            blocked = [0xFFFFFFFF] * 8  # ICMP6_FILTER: pass router solicitations only
            blocked[ICMPV6_ROUTER_SOLICITATION >> 5] &= ~(1 << (ICMPV6_ROUTER_SOLICITATION & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *blocked))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_solicitation)
        self._timer = self._loop.call_later(RA_INTERVAL, self._periodic)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None

    def add_interface(self, ifindex: int) -> None:
        """A PXE client was seen on `ifindex`: advertise there from now on, starting now."""
        if ifindex <= 0 or ifindex in self._interfaces or self._sock is None:
            return
        group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", ifindex)
        try:
            self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
        except OSError as exc:  # no IPv6 on that interface: nothing to advertise on
            logger.info("router advertisements: interface %d has no IPv6 (%s); not advertising there", ifindex, exc)
            self._interfaces.add(ifindex)
            return
        self._interfaces.add(ifindex)
        logger.info("router advertisements: advertising 'no IPv6 here' on interface %d", ifindex)
        self.advertise(ifindex)

    def advertise(self, ifindex: int) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(EMPTY_ROUTER_ADVERTISEMENT, (ALL_NODES, 0, 0, ifindex))
            self.sent += 1
        except OSError as exc:
            self.failures += 1
            logger.debug("router advertisement on interface %d failed: %s", ifindex, exc)

    def _on_solicitation(self) -> None:
        assert self._sock is not None
        for _ in range(64):
            try:
                data, source = self._sock.recvfrom(1500)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("router solicitation receive error: %s", exc)
                return
            ifindex = source[3] if len(source) > 3 else 0
            if data[:1] == bytes((ICMPV6_ROUTER_SOLICITATION,)) and ifindex in self._interfaces:
                self.advertise(ifindex)

    def _periodic(self) -> None:
        for ifindex in list(self._interfaces):
            self.advertise(ifindex)
        assert self._loop is not None
        self._timer = self._loop.call_later(RA_INTERVAL, self._periodic)
