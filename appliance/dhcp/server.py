"""The DHCP transport: UDP 67 and 4011, decisions from pxe.py / authoritative.py, replies, events.

Each socket is non-blocking with `loop.add_reader`, read until EAGAIN ("drain"): asyncio's
DatagramProtocol hides IP_PKTINFO, which tells the interface a broadcast came in on and the address bootd
has there (the reply's server identifier, next-server and URLs), and costs 2-4x more per packet.
Replies leave through the same interface (IP_PKTINFO on sendmsg), 67's from :67 and 4011's from :4011
(iPXE ignores replies from other ports).

Batches (issue 16): where Linux has recvmmsg/sendmmsg (appliance/mmsg.py), one call reads up to 64 queued
datagrams with their IP_PKTINFO, each is decided by the same functions as one read alone, and the replies
of the batch leave in one sendmmsg, each with its own destination and IP_PKTINFO. Replies made outside a
read (an ACK once its lease is on disk, an etcd commit's answer) are gathered the same way until the loop's
next turn. Without the calls (or with `batch=False`) the server reads and sends one datagram per call.

The only broad `except` is the per-datagram guard: our bug is logged with its traceback and counted, and
the next packet is served. Malformed packets are `MalformedPacket`: counted by reason, logged at DEBUG.
Nothing on this path awaits: iPXE waits about 2 s for a proxy offer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from appliance import mmsg
from appliance.dhcp.modes import DhcpMode
from appliance.dhcp.authoritative import DhcpAnswer, decide_dhcp, forget_templates
from appliance.dhcp.leases import Bind, LeaseTable, LeaseWriter
from appliance.dhcp.packet import (
    HEADER_SIZE, MAGIC_COOKIE, DhcpPacket, MalformedPacket, Option, parse_options, parse_packet,
)
from appliance.dhcp.policy import DhcpPolicies
from appliance.dhcp.pxe import (
    PXE_PORT, Ignore, ReplyTemplate, classify_client, compile_template, decide_boot, is_proxy_request, send_target,
    template_key,
)
from appliance.events import DhcpServed, Event, EventBus, EventKind, client_arch, dhcp_served
from appliance.mac import MacAddress

logger = logging.getLogger(__name__)

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux <linux/in.h>; the socket module has it from Python 3.12
_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_CMSG_SPACE = socket.CMSG_SPACE(_PKTINFO.size)
_CMSG_LEN = socket.CMSG_LEN(_PKTINFO.size)
_CMSG_DATA = _CMSG_LEN - _PKTINFO.size  # where in_pktinfo starts after its cmsghdr
_PKTINFO_TYPE = struct.pack("=ii", socket.IPPROTO_IP, IP_PKTINFO)  # cmsghdr's level and type
_MAX_DATAGRAM = 4096  # DHCP messages are at most 576 bytes unless option 57 allows more; 4 KiB bounds it
_DRAIN_BATCH = 64  # datagrams read per wakeup before other callbacks get a turn
# Authoritative mode under overload (see _drain_authoritative): DISCOVERs kept waiting at most this many
# (beyond, the oldest are dropped: their clients have retried or given up), and answered per turn of the loop.
_DISCOVER_BACKLOG = 256
_DISCOVERS_PER_TURN = 16
_TEMPLATE_CACHE = 4096  # reply kinds kept; mutated floods make new kinds, so the cache is bounded
_GIADDR = slice(24, 28)
# How often, at most, the server asks whether its policies need rebuilding (`refresh`: the groups, read from
# the data dir, decide which MACs are answered). Asked only while packets come, never per packet.
REFRESH_SECONDS = 1.0
# Ignore reasons worth a progress event: the machine is real and the operator wants to know why it did not boot.
# (Each is one event per packet; the progress tracker's bound, not the number of MACs sent, caps the memory.)
_REPORTED = {"unknown-machine", "ignored-machine", "no-profile", "firmware-missing", "pool-exhausted",
             "unsupported-arch", "no-pool-for-relay"}


@dataclass(slots=True)
class PortCounts:
    """What one socket (67 or 4011) received, answered and dropped (by reason). Each socket's counts are bound
    to it once, at start, so counting a packet is an attribute increment, never a lookup (/metrics reads
    them at scrape time)."""

    received: int = 0
    answered: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class DhcpStats:
    dhcp: PortCounts = field(default_factory=PortCounts)  # UDP 67
    pxe: PortCounts = field(default_factory=PortCounts)  # UDP 4011, PXE's boot server discovery
    internal_errors: int = 0
    lease_write_failures: int = 0  # changes answered while the lease file could not be written (a full disk)

    def as_json(self) -> dict[str, object]:
        dropped = Counter(self.dhcp.dropped)
        dropped.update(self.pxe.dropped)
        return {"received": self.dhcp.received + self.pxe.received,
                "answered": self.dhcp.answered + self.pxe.answered, "internal_errors": self.internal_errors,
                "lease_write_failures": self.lease_write_failures, "dropped": dict(dropped)}


@dataclass(slots=True)  # not frozen: made per packet, and a frozen dataclass's __init__ costs a call per field
class Datagram:
    data: bytes
    source: tuple[str, int]
    ifindex: int
    local_ip: IPv4Address  # the address the packet reached us at (for a broadcast: the interface's)
    counts: PortCounts  # the counters of the socket it came in on


class DhcpServer:
    def __init__(self, *, policies: DhcpPolicies, bus: EventBus, leases: LeaseTable | None = None,
                 port: int = 67, pxe_port: int = PXE_PORT, bind_address: str = "",
                 server_address: IPv4Address | None = None, interfaces: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.time,
                 on_new_interface: Callable[[int], None] | None = None,
                 on_lease_change: Callable[[], None] | None = None,
                 refresh: Callable[[], None] | None = None, batch: bool = True) -> None:
        self.policies = policies
        self.bus = bus
        self.leases = leases if leases is not None else LeaseTable()
        self.port, self.pxe_port = port, pxe_port
        self.bind_address = bind_address
        self.server_address = server_address
        self.interfaces = interfaces
        self.stats = DhcpStats()
        self._clock = clock
        self._on_new_interface = on_new_interface  # told once per interface a client was answered on
        self._answered_on: set[int] = set()
        self._on_lease_change = on_lease_change  # told after a lease was bound or freed (DNS follows leases)
        self._ifindexes: frozenset[int] = frozenset()
        self._sockets: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # a kind of request -> its reply, the event's detail and the client's architecture (option 93), or why not
        self._templates: dict[tuple[object, ...], tuple[ReplyTemplate, str, int | None] | Ignore] = {}
        self._refresh = refresh  # may call `update` with new policies
        self._writer: LeaseWriter | None = None
        self._refresh_at = 0.0
        self._discover_backlog: deque[Datagram] = deque()  # authoritative mode: see _drain_authoritative
        self._backlog_scheduled = False
        # while DISCOVERs wait: the exchanges (xid + chaddr) whose REQUEST was read meanwhile
        self._requested: set[bytes] = set()
        calls = mmsg.functions() if batch else None
        self._reader = _BatchReader(calls[0]) if calls is not None else None
        self._replies = _Replies(calls[1]) if calls is not None else None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ifindexes = frozenset(socket.if_nametoindex(name) for name in self.interfaces)
        for port, counts in ((self.port, self.stats.dhcp), (self.pxe_port, self.stats.pxe)):
            sock = _udp_socket(self.bind_address, port)
            self._sockets.append(sock)
            self._loop.add_reader(sock.fileno(), self._drain, sock, port, counts)

    def close(self) -> None:
        if self._replies is not None:
            self._replies.flush()
        for sock in self._sockets:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()
        if self._writer is not None:  # the write in flight finishes; one whole snapshot is left
            self._writer.close()
            self._writer = None

    def update(self, policies: DhcpPolicies) -> None:
        """Reload: new decisions from the next packet on; leases are kept."""
        self.policies = policies
        self._templates.clear()
        forget_templates()  # authoritative mode's: keyed by the replaced policies' identity, so only kept

    @property
    def bound_ports(self) -> list[int]:
        return [sock.getsockname()[1] for sock in self._sockets]

    # --- receiving --------------------------------------------------------------------------------

    def _drain(self, sock: socket.socket, port: int, counts: PortCounts) -> None:
        if self._refresh is not None and (now := time.monotonic()) >= self._refresh_at:
            self._refresh_at = now + REFRESH_SECONDS
            try:
                self._refresh()
            except Exception:  # our bug: serve with the policies we have
                self.stats.internal_errors += 1
                logger.exception("dhcp: refreshing the policies failed")
        if port != self.pxe_port and self.policies.mode is DhcpMode.AUTHORITATIVE:
            self._drain_authoritative(sock, port, counts)
            return
        if self._reader is not None:
            self._serve_batch(sock, port, self._reader.read(sock, port, counts))
            return
        for _ in range(_DRAIN_BATCH):
            try:
                data, ancdata, _flags, source = sock.recvmsg(_MAX_DATAGRAM, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors surfacing on the socket
                logger.debug("dhcp :%d receive error: %s", port, exc)
                return
            ifindex, local_ip = _pktinfo(ancdata)
            try:
                self.handle_datagram(sock, Datagram(data, source, ifindex, local_ip, counts), port, self._clock())
            except Exception:  # our bug: log it once with the traceback, count it, serve the next packet
                self.stats.internal_errors += 1
                logger.exception("dhcp: internal error on a packet from %s", source)

    def _drain_authoritative(self, sock: socket.socket, port: int, counts: PortCounts) -> None:
        """Overload: finish exchanges before starting new ones. Everything waiting is read (a read costs a
        few microseconds, an answer a hundred); REQUESTs (and every other kind) are answered at once, while
        DISCOVERs wait in a bounded backlog answered newest first, a few per turn of the loop. Answering in
        arrival order, a flood of DISCOVERs delays the REQUESTs behind it until their clients give up, and
        the OFFER made for each of those was work for nothing. Without overload the backlog never holds
        more than what one read brought, and every packet is answered as before. A DISCOVER still waiting
        when its client's REQUEST of the same exchange (same xid and chaddr) was read is dropped
        (`stale-discover`): the client took an offer already, ours or another server's (a retransmitted
        DISCOVER, a second replica), and an OFFER now would hold an address for nobody."""
        backlog, requested = self._discover_backlog, self._requested
        replies = self._replies
        if replies is not None:
            replies.open(sock)
        try:
            for dgram in self._read_authoritative(sock, port, counts):
                # option 53 is the first option of every client's DISCOVER seen so far; anything else is
                # answered at once, as it comes
                if dgram.data[240:243] == b"\x35\x01\x01":
                    if len(backlog) == _DISCOVER_BACKLOG:
                        counts.received += 1
                        counts.dropped["overload"] += 1
                        backlog.popleft()
                    backlog.append(dgram)
                    continue
                # a REQUEST with option 53 first, as clients send it (one placed elsewhere only misses this
                # shortcut: its late DISCOVER gets an OFFER, as before)
                if backlog and dgram.data[240:243] == b"\x35\x01\x03":
                    if len(requested) >= 4 * _DISCOVER_BACKLOG:  # bounded: forgetting one only costs an OFFER
                        requested.clear()
                    requested.add(_exchange(dgram.data))
                self._handle_guarded(sock, dgram, port)
            for _ in range(min(len(backlog), _DISCOVERS_PER_TURN)):
                dgram = backlog.pop()
                if requested and _exchange(dgram.data) in requested:
                    dgram.counts.received += 1
                    self._drop(Ignore("stale-discover", "its client REQUESTed an offer of this exchange already",
                                      mac=MacAddress(dgram.data[28:34].hex(":"))), dgram)
                    continue
                self._handle_guarded(sock, dgram, port)
            if not backlog:
                requested.clear()
        finally:
            if replies is not None:
                replies.flush()
        if backlog and not self._backlog_scheduled:
            assert self._loop is not None
            self._backlog_scheduled = True
            self._loop.call_soon(self._backlog_turn, sock, port, counts)

    def _read_authoritative(self, sock: socket.socket, port: int, counts: PortCounts) -> Iterator[Datagram]:
        """Everything queued, up to 4 * _DISCOVER_BACKLOG datagrams (a read costs a few microseconds)."""
        reader = self._reader
        if reader is not None:
            for _ in range(4 * _DISCOVER_BACKLOG // mmsg.BATCH):
                batch = reader.read(sock, port, counts)
                yield from batch
                if len(batch) < mmsg.BATCH:
                    return
            return
        for _ in range(4 * _DISCOVER_BACKLOG):
            try:
                data, ancdata, _flags, source = sock.recvmsg(_MAX_DATAGRAM, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors surfacing on the socket
                logger.debug("dhcp :%d receive error: %s", port, exc)
                return
            ifindex, local_ip = _pktinfo(ancdata)
            yield Datagram(data, source, ifindex, local_ip, counts)

    def _serve_batch(self, sock: socket.socket, port: int, batch: list[Datagram]) -> None:
        """Each datagram of a batch decided in turn, the replies sent together."""
        replies = self._replies
        assert replies is not None
        replies.open(sock)
        try:
            for dgram in batch:
                try:
                    self.handle_datagram(sock, dgram, port, self._clock())
                except Exception:  # our bug: log it once with the traceback, count it, serve the next packet
                    self.stats.internal_errors += 1
                    logger.exception("dhcp: internal error on a packet from %s", dgram.source)
        finally:
            replies.flush()

    def _backlog_turn(self, sock: socket.socket, port: int, counts: PortCounts) -> None:
        self._backlog_scheduled = False
        if sock.fileno() >= 0:
            self._drain_authoritative(sock, port, counts)

    def _handle_guarded(self, sock: socket.socket, dgram: Datagram, port: int) -> None:
        try:
            self.handle_datagram(sock, dgram, port, self._clock())
        except Exception:  # our bug: log it once with the traceback, count it, serve the next packet
            self.stats.internal_errors += 1
            logger.exception("dhcp: internal error on a packet from %s", dgram.source)

    def handle_datagram(self, sock: socket.socket, dgram: Datagram, port: int, now: float) -> None:
        dgram.counts.received += 1
        if self._ifindexes and dgram.ifindex not in self._ifindexes:
            self._drop(Ignore("other-interface"), dgram)
            return
        data = dgram.data
        server_ip = self.server_address or dgram.local_ip
        policies = self.policies
        if policies.mode is DhcpMode.AUTHORITATIVE and port != self.pxe_port and policies.addresses is not None:
            try:
                packet = parse_packet(data)
            except MalformedPacket as exc:
                self._drop(Ignore(exc.reason), dgram)
                return
            self.leases.sweep(now)
            answer = decide_dhcp(packet, self.leases, policies.addresses, policies.pxe, server_ip, now)
            if isinstance(answer, Ignore):
                self._drop(answer, dgram)
            else:
                self._apply(sock, packet, answer, dgram)
            return
        # Proxy: the hot path reads the raw header and the options only; the typed packet is built just
        # for the first request of each kind (see ReplyTemplate).
        if len(data) < HEADER_SIZE + 4:
            self._drop(Ignore("short-packet"), dgram)
            return
        if data[HEADER_SIZE : HEADER_SIZE + 4] != MAGIC_COOKIE:
            self._drop(Ignore("bad-magic-cookie"), dgram)
            return
        try:
            options = parse_options(data, HEADER_SIZE + 4)
        except MalformedPacket as exc:
            self._drop(Ignore(exc.reason), dgram)
            return
        self._proxy(sock, dgram, port, server_ip, options, now)

    def _proxy(self, sock: socket.socket, dgram: Datagram, port: int, server_ip: IPv4Address,
               options: dict[int, bytes], now: float) -> None:
        data = dgram.data
        mac = MacAddress(data[28:34].hex(":"))
        pxe_port = PXE_PORT if port == self.pxe_port else 67
        pxe = self.policies.pxe
        # the server address as an int: IPv4Address hashes and compares in Python, twice per packet
        key = template_key(data, options, pxe_port, int(server_ip), pxe.machines.get(mac), pxe.is_claimed(mac))
        cached = self._templates.get(key)
        if cached is None:
            try:
                cached = self._decide_proxy(parse_packet(data), pxe_port, server_ip)
            except MalformedPacket as exc:  # bad op or hlen: both are in the key, so this caches too
                cached = Ignore(exc.reason)
            if not isinstance(cached, Ignore):  # option 93 is in the key: its architecture is the kind's too
                cached = (*cached, client_arch(options.get(93)))
            if len(self._templates) >= _TEMPLATE_CACHE:
                self._templates.clear()
            self._templates[key] = cached
        if cached.__class__ is Ignore:
            self._drop(Ignore(cached.reason, cached.detail, mac=mac) if cached.mac else cached, dgram)
            return
        template, detail, arch = cached
        giaddr = data[_GIADDR]
        if giaddr != b"\0\0\0\0":
            address, to_port = socket.inet_ntoa(giaddr), 67
        elif pxe_port == PXE_PORT:
            address, to_port = dgram.source
        else:
            address, to_port = "255.255.255.255", 68
        self._send(sock, template.render(data, options.get(97)), address, to_port, dgram)  # 97: the GUID
        # a relayed request comes from the relay: its address is not the client's
        source = dgram.source[0] if giaddr == b"\0\0\0\0" else "0.0.0.0"
        # the event is stamped with the request's time (the clock read once per datagram)
        self.bus.publish(dhcp_served(mac, source if source != "0.0.0.0" else None, detail, arch, now))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("dhcp %s from %s:%d: %s", mac, source, dgram.source[1], detail)

    def _decide_proxy(self, packet: DhcpPacket, pxe_port: int,
                      server_ip: IPv4Address) -> tuple[ReplyTemplate, str] | Ignore:
        """The typed decision for the first request of its kind; its reply becomes the template."""
        request = classify_client(packet)
        if isinstance(request, Ignore):
            return request
        if not is_proxy_request(request, pxe_port):
            return Ignore("not-for-proxy", f"message type {request.message_type} on {pxe_port}")
        offer = decide_boot(request, self.policies.pxe, server_ip, port=pxe_port)
        if isinstance(offer, Ignore):
            return offer
        what = "OFFER" if pxe_port == 67 else "ACK on 4011"
        detail = (f"proxy {what}: arch {request.arch.arch.value} ({request.arch.arch.name})"
                  f"{', iPXE' if request.ipxe else ''}: {offer.decision} {offer.boot_file}")
        return compile_template(request, offer, port=pxe_port), detail

    # --- answering --------------------------------------------------------------------------------

    def _apply(self, sock: socket.socket, packet: DhcpPacket, answer: DhcpAnswer, dgram: Datagram) -> None:
        if answer.change is not None and self.leases.apply(answer.change):
            # the table already says it (the next packet's decision sees it); the ACK goes out once it is on disk
            if self._writer is None:
                assert self._loop is not None
                self._writer = LeaseWriter(self.leases, self._loop)
            self._writer.commit(answer.change,
                                lambda ok: self._answer(sock, packet, answer, dgram, changed=True, written=ok))
            return
        self._answer(sock, packet, answer, dgram, changed=False)

    def _answer(self, sock: socket.socket, packet: DhcpPacket, answer: DhcpAnswer, dgram: Datagram, *,
                changed: bool, written: bool = True) -> None:
        if not written:
            self.stats.lease_write_failures += 1
        if changed and self._on_lease_change is not None:
            self._on_lease_change()
        if answer.reply is not None:
            target = send_target(packet, dgram.source, port=67, reply=answer.reply)
            self._send(sock, answer.encoded_reply(), target.address, target.port, dgram)
            if self._on_new_interface is not None and dgram.ifindex not in self._answered_on:
                self._answered_on.add(dgram.ifindex)
                self._on_new_interface(dgram.ifindex)
        ok = not isinstance(answer.boot, Ignore)
        peer = None
        if answer.ip is not None and isinstance(answer.change, Bind):
            peer = socket.inet_ntoa(answer.ip.packed)  # str() of an IPv4Address formats it in Python (per ACK)
        # A PXE firmware's DHCP is a boot step; the booted system's own DHCP client only takes a lease.
        kind = EventKind.DHCP if answer.boot is not None else EventKind.LEASE
        self.bus.publish(DhcpServed(kind=kind, mac=answer.mac, peer=peer, detail=answer.summary, ok=ok,
                                    arch=client_arch(packet.options.get(Option.ARCH))))

    def _send(self, sock: socket.socket, data: bytes, address: str, port: int, dgram: Datagram) -> None:
        replies = self._replies
        if replies is not None and len(data) <= _MAX_DATAGRAM:
            if replies.sock is None and self._loop is not None and sock.fileno() >= 0:
                # a reply made outside a read (an ACK after its lease write): gathered until the loop's next turn
                replies.open(sock)
                self._loop.call_soon(replies.flush)
            if replies.sock is sock:
                replies.add(data, address, port, dgram)
                return
        key = (dgram.ifindex, int(dgram.local_ip))  # an int: IPv4Address hashes in Python
        ancillary = _ANCILLARY.get(key)
        if ancillary is None:
            ancillary = [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(
                dgram.ifindex, dgram.local_ip.packed, b"\0\0\0\0"))] if dgram.ifindex else []
            if len(_ANCILLARY) > 256:
                _ANCILLARY.clear()
            _ANCILLARY[key] = ancillary
        try:
            sock.sendmsg([data], ancillary, 0, (address, port))
            dgram.counts.answered += 1
        except OSError as exc:
            dgram.counts.dropped["send-failed"] += 1
            logger.warning("dhcp: cannot send to %s:%d: %s", address, port, exc)

    def _drop(self, ignore: Ignore, dgram: Datagram) -> None:
        dgram.counts.dropped[ignore.reason] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("dhcp drop from %s: %s %s", dgram.source, ignore.reason, ignore.detail)
        if ignore.mac is not None and ignore.reason in _REPORTED:
            self.bus.publish(Event(kind=EventKind.DHCP, mac=MacAddress(ignore.mac), peer=None, ok=False,
                                   detail=f"not answered: {ignore.reason}: {ignore.detail}"))


def _exchange(data: bytes) -> bytes:
    """A client message's exchange: its xid and chaddr (RFC 2131 §4.4.1: one xid from DISCOVER to REQUEST)."""
    return data[4:8] + data[28:44]


def _udp_socket(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


_ANCILLARY: dict[tuple[int, int], list[tuple[int, int, bytes]]] = {}  # IP_PKTINFO to send with, per interface


def _pktinfo(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, IPv4Address]:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _PKTINFO.size:
            return _local(data[:8])
    return 0, ipaddress.IPv4Address(0)


class _BatchReader:
    """recvmmsg into one MessageArray (shared by the server's sockets: each read is used up before the next),
    each datagram copied out with its sender and IP_PKTINFO as a Datagram."""

    def __init__(self, recvmmsg) -> None:
        self._recvmmsg = recvmmsg
        self._array = mmsg.MessageArray(_MAX_DATAGRAM, control=_CMSG_SPACE)
        self._sources: dict[bytes, tuple] = {}  # sockaddr's first 8 bytes -> recvfrom's address tuple

    def read(self, sock: socket.socket, port: int, counts: PortCounts) -> list[Datagram]:
        array = self._array
        try:
            count = array.receive(self._recvmmsg, sock.fileno())
        except OSError as exc:  # e.g. ICMP errors surfacing on the socket
            logger.debug("dhcp :%d receive error: %s", port, exc)
            return []
        words, qwords, data, names, controls = array.words, array.qwords, array.data, array.names, array.controls
        sources = self._sources
        batch = []
        for i in range(count):
            size = words[i * mmsg.STEP + mmsg.LEN]
            start = i * _MAX_DATAGRAM
            at = i * mmsg.NAME
            name = names[at : at + 8].tobytes()
            source = sources.get(name)
            if source is None:
                source = array.address(i)
                if len(sources) >= 4096:
                    sources.clear()
                if name[:2] == _AF_INET:  # the cache key holds the whole of an IPv4 sockaddr's address
                    sources[name] = source
            at = i * _CMSG_SPACE
            if (qwords[i * mmsg.QSTEP + mmsg.CONTROLLEN] >= _CMSG_LEN
                    and controls[at + 8 : at + _CMSG_DATA] == _PKTINFO_TYPE):
                ifindex, local_ip = _local(controls[at + _CMSG_DATA : at + _CMSG_DATA + 8].tobytes())
            else:
                ifindex, local_ip = 0, _ANY
            batch.append(Datagram(data[start : start + size].tobytes(), source, ifindex, local_ip, counts))
        return batch


class _Replies:
    """The replies of one batch, sent with one sendmmsg (more when the batch has more than BATCH), each to
    its own address through its own interface (IP_PKTINFO), as `DhcpServer._send` would one by one."""

    def __init__(self, sendmmsg) -> None:
        self._sendmmsg = sendmmsg
        self._array = mmsg.MessageArray(_MAX_DATAGRAM, control=_CMSG_SPACE)
        self.sock: socket.socket | None = None
        self._count = 0
        self._targets: list[tuple[str, int, PortCounts]] = []
        self._names: dict[tuple[str, int], bytes] = {}
        self._last: tuple[int, IPv4Address | None, bytes] = (0, None, b"")  # ifindex, local address, its cmsg

    def open(self, sock: socket.socket) -> None:
        if self.sock is not None:
            self.flush()
        self.sock = sock

    def add(self, data: bytes, address: str, port: int, dgram: Datagram) -> None:
        array, i = self._array, self._count
        start = i * _MAX_DATAGRAM
        array.data[start : start + len(data)] = data
        array.lengths[2 * i + 1] = len(data)
        name = self._names.get((address, port))
        if name is None:
            if len(self._names) >= 4096:
                self._names.clear()
            name = self._names[(address, port)] = mmsg.sockaddr_in(address, port)
        at = i * mmsg.NAME
        array.names[at : at + 16] = name
        array.words[i * mmsg.STEP + mmsg.NAMELEN] = 16
        if dgram.ifindex:
            at = i * _CMSG_SPACE
            # the last datagram's interface nearly always (one IPv4Address per interface: see _local)
            if dgram.ifindex != self._last[0] or dgram.local_ip is not self._last[1]:
                self._last = (dgram.ifindex, dgram.local_ip, _send_control(dgram.ifindex, dgram.local_ip))
            array.controls[at : at + _CMSG_SPACE] = self._last[2]
            array.qwords[i * mmsg.QSTEP + mmsg.CONTROLLEN] = _CMSG_SPACE
        else:
            array.qwords[i * mmsg.QSTEP + mmsg.CONTROLLEN] = 0
        self._targets.append((address, port, dgram.counts))
        self._count = i + 1
        if self._count == mmsg.BATCH:
            self._send()

    def flush(self) -> None:
        if self._count:
            self._send()
        self.sock = None

    def _send(self) -> None:
        """A datagram the kernel refuses (no route to a relay, a full socket buffer) is counted and logged as
        sendmsg's refusal was; the ones after it are still sent."""
        sock, count, targets = self.sock, self._count, self._targets
        self._count, self._targets = 0, []
        if sock is None or sock.fileno() < 0:
            return
        fd, sent = sock.fileno(), 0
        while sent < count:
            done = self._array.send(self._sendmmsg, fd, sent, count - sent)
            if done < 0:
                address, port, counts = targets[sent]
                counts.dropped["send-failed"] += 1
                logger.warning("dhcp: cannot send to %s:%d: %s", address, port, os.strerror(-done))
                sent += 1
                continue
            for _address, _port, counts in targets[sent : sent + done]:
                counts.answered += 1
            sent += done


_AF_INET = struct.pack("=H", socket.AF_INET)
_ANY = IPv4Address(0)
_CONTROLS: dict[tuple[int, int], bytes] = {}  # a cmsg with IP_PKTINFO to send with, per interface


def _send_control(ifindex: int, local_ip: IPv4Address) -> bytes:
    key = (ifindex, int(local_ip))  # an int: IPv4Address hashes in Python
    control = _CONTROLS.get(key)
    if control is None:
        if len(_CONTROLS) > 256:
            _CONTROLS.clear()
        header = struct.pack("=Q", _CMSG_LEN) + _PKTINFO_TYPE
        control = header + _PKTINFO.pack(ifindex, local_ip.packed, b"\0\0\0\0")
        control = _CONTROLS[key] = control + bytes(_CMSG_SPACE - len(control))
    return control


def _local(info: bytes) -> tuple[int, IPv4Address]:
    """in_pktinfo's ifindex and spec_dst (its first 8 bytes) as the interface and our address on it; a host
    has few, so each pair's IPv4Address is built once (IPv4Address construction is Python code)."""
    found = _PKTINFOS.get(info)
    if found is None:
        ifindex, spec_dst = struct.unpack("=I4s", info)
        if len(_PKTINFOS) > 256:
            _PKTINFOS.clear()
        found = _PKTINFOS[info] = (ifindex, IPv4Address(spec_dst))
    return found


_PKTINFOS: dict[bytes, tuple[int, IPv4Address]] = {}
