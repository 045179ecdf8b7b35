"""Authoritative DHCP (RFC 2131) for a bare lab network: which address a client gets. Pure functions.

Rules:
- A machine in the config gets its reserved address and its name; no other client ever gets that address.
- Otherwise a client keeps its lease, or the address it was just offered, or the address it asks for if it
  is free, or a free address of the range (the next one never handed out, else one freed
  since: leases.py's hints, O(1) per client). Free: not leased or offered to another client, not
  declined recently, not reserved, not the server's or the router's.
- REQUEST: ACK when the address is one this client may have; NAK when it is not (wrong subnet, another
  client's); silence when the client chose another server (option 54).
- RELEASE frees the lease, DECLINE quarantines the address, each only from the address's holder; neither is
  answered. INFORM gets options only.
- PXE clients get the same boot options as in proxy mode (pxe.py) in the same reply, and iPXE gets option
  175.176 (no-pxedhcp) so it does not wait for proxy offers that will never come.
- `only_known: true` and `ignore: true` machines get no answer at all.
- Relayed requests (giaddr set, RFC 2131 §4.3.1) get an address from the pool whose subnet holds the
  relay's address (giaddr): the local subnet or one of `dhcp.relay_pools`. A relay on a segment bootd has no
  pool for is a reasoned drop, never an address from another segment's subnet (it would not route). A
  reservation is honoured only on its own subnet's segment.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

from appliance.dhcp.leases import (
    OFFER_HOLD_SECONDS, QUARANTINE_SECONDS, Bind, Decline, HoldOffer, Lease, LeaseChange, LeaseTable, Release,
)
from appliance.dhcp.packet import (
    BOOTREPLY, MAGIC_COOKIE, MIN_PACKET, ZERO_IP, DhcpPacket, MessageType, Option, encode_options, encode_packet,
)
from appliance.dhcp.pxe import (
    BootOffer, Ignore, PxePolicy, PxeRequest, boot_file_fields, classify_client, client_of, decide_boot, pxe_options,
)
from appliance.mac import MacAddress


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    ip: IPv4Address
    hostname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressPolicy:
    subnet: IPv4Network
    first: IPv4Address
    last: IPv4Address
    router: IPv4Address | None = None
    dns_servers: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    lease_seconds: int = 3600
    extra_options: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))
    reservations: Mapping[MacAddress, Reservation] = field(default_factory=lambda: MappingProxyType({}))
    ignored: frozenset[MacAddress] = frozenset()
    reserved_ips: frozenset[IPv4Address] = frozenset()  # the reservations' addresses, for a set lookup
    # the pools of segments behind DHCP relays (same reservations, domain, lease and options; own subnet,
    # range, router and DNS servers): chosen by the relay's address
    relayed: tuple[AddressPolicy, ...] = ()
    # the same facts as integers, for the per-packet free-address check (IPv4Address compares and hashes
    # through method calls); derived, never passed
    first_number: int = field(default=0, repr=False, compare=False)
    last_number: int = field(default=-1, repr=False, compare=False)
    router_number: int = field(default=-1, repr=False, compare=False)
    reserved_numbers: frozenset[int] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reserved_ips", frozenset(r.ip for r in self.reservations.values()))
        object.__setattr__(self, "first_number", int(self.first))
        object.__setattr__(self, "last_number", int(self.last))
        object.__setattr__(self, "router_number", int(self.router) if self.router is not None else -1)
        object.__setattr__(self, "reserved_numbers", frozenset(int(ip) for ip in self.reserved_ips))

    def for_segment(self, giaddr: IPv4Address) -> AddressPolicy | None:
        """The pool of the client's segment: the local one for a request that was not relayed, else the one
        whose subnet holds the relay's address; None when no pool has it."""
        if giaddr is ZERO_IP or giaddr == ZERO_IP or giaddr in self.subnet:
            return self
        return next((pool for pool in self.relayed if giaddr in pool.subnet), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class DhcpAnswer:
    reply: DhcpPacket | None  # None: RELEASE and DECLINE are not answered
    change: LeaseChange | None
    mac: MacAddress
    ip: IPv4Address | None
    boot: BootOffer | Ignore | None  # the PXE part, for events: what it boots, or why nothing
    summary: str
    # the reply encoded from a precompiled template, with the reply it encodes (byte for byte what
    # encode_packet gives; the unit tests hold it to that); a copy with another reply (dataclasses.replace)
    # is encoded from its own: see `encoded_reply`
    wire: tuple[DhcpPacket, bytes] | None = None

    def encoded_reply(self) -> bytes:
        """The reply's bytes (the caller checked there is a reply)."""
        assert self.reply is not None
        if self.wire is not None and self.wire[0] is self.reply:
            return self.wire[1]
        return encode_packet(self.reply)


def decide_dhcp(packet: DhcpPacket, table: LeaseTable, policy: AddressPolicy, pxe_policy: PxePolicy,
                server_ip: IPv4Address, now: float) -> DhcpAnswer | Ignore:
    client = client_of(packet)
    if isinstance(client, Ignore):
        return client
    mac, kind = client
    if mac in policy.ignored:
        return Ignore("ignored-machine", "ignore: true in the config", mac=mac)
    if pxe_policy.only_known and mac not in policy.reservations:
        return Ignore("unknown-machine", "only_known: true and the MAC is not in the config", mac=mac)
    segment = policy.for_segment(packet.giaddr)
    if segment is None:
        subnets = ", ".join(str(p.subnet) for p in (policy, *policy.relayed))
        return Ignore("no-pool-for-relay", f"relayed by {packet.giaddr}, and no pool's subnet holds that address "
                      f"(pools: {subnets}); add one under dhcp.relay_pools in bootd.yaml", mac=mac)
    policy = segment
    server_id = packet.option_ip(Option.SERVER_ID)
    if kind == MessageType.DISCOVER:
        ip = choose_address(mac, packet.option_ip(Option.REQUESTED_IP), table, policy, server_ip, now)
        if ip is None:
            return Ignore("pool-exhausted", f"no free address in {policy.first}-{policy.last}", mac=mac)
        return _answer(packet, MessageType.OFFER, ip, mac, policy, pxe_policy, server_ip,
                       HoldOffer(ip, mac, now + OFFER_HOLD_SECONDS))
    if kind == MessageType.REQUEST:
        if server_id is not None and server_id != server_ip:
            offered = table.offered_to(mac, now)
            return Ignore("other-server", f"client chose {server_id}", mac=mac) if offered is None else DhcpAnswer(
                reply=None, change=Release(offered, mac), mac=mac, ip=None, boot=None,
                summary=f"chose server {server_id}; offer of {offered} withdrawn")
        wanted = packet.option_ip(Option.REQUESTED_IP) or (packet.ciaddr if packet.ciaddr != ZERO_IP else None)
        if wanted is None:
            return Ignore("request-without-address", mac=mac)
        if may_have(mac, wanted, table, policy, server_ip, now):
            lease = Lease(ip=wanted, mac=mac, expires=now + policy.lease_seconds, hostname=_hostname(mac, policy))
            return _answer(packet, MessageType.ACK, wanted, mac, policy, pxe_policy, server_ip, Bind(lease))
        return DhcpAnswer(reply=_nak(packet, server_ip), change=None, mac=mac, ip=None, boot=None,
                          summary=f"NAK: {wanted} is not this client's")
    if kind == MessageType.RELEASE:
        if table.holder(packet.ciaddr, now) != mac:
            return Ignore("release-not-holder", f"{packet.ciaddr} is not this client's to release", mac=mac)
        return DhcpAnswer(reply=None, change=Release(packet.ciaddr, mac), mac=mac, ip=packet.ciaddr, boot=None,
                          summary=f"released {packet.ciaddr}")
    if kind == MessageType.DECLINE:
        declined = packet.option_ip(Option.REQUESTED_IP)
        if declined is None:
            return Ignore("decline-without-address", mac=mac)
        # A client declines the address it was just given (RFC 2131 §4.4.1, after an ARP check); from any
        # other MAC a DECLINE would let anyone on the segment take away another client's lease.
        if table.holder(declined, now) != mac:
            return Ignore("decline-not-holder", f"{declined} is not this client's to decline", mac=mac)
        return DhcpAnswer(reply=None, change=Decline(declined, mac, now + QUARANTINE_SECONDS), mac=mac, ip=declined,
                          boot=None, summary=f"declined {declined}: quarantined for {QUARANTINE_SECONDS:.0f} s")
    if kind == MessageType.INFORM:
        return _answer(packet, MessageType.ACK, None, mac, policy, pxe_policy, server_ip, None)
    return Ignore("not-a-client-message", f"message type {kind}", mac=mac)


def choose_address(mac: MacAddress, requested: IPv4Address | None, table: LeaseTable, policy: AddressPolicy,
                   server_ip: IPv4Address, now: float) -> IPv4Address | None:
    reservation = policy.reservations.get(mac)
    if reservation is not None and reservation.ip in policy.subnet:
        return reservation.ip
    for candidate in (_lease_ip(table, mac, now), table.offered_to(mac, now), requested):
        if candidate is not None and _free_for(mac, candidate, table, policy, server_ip, now):
            return candidate
    # O(1) per new client: the table's hints (freed addresses, then a cursor through the range), each checked
    for candidate in table.candidates(policy.first, policy.last, now):
        if _free_for(mac, candidate, table, policy, server_ip, now):
            return candidate
    return None


def may_have(mac: MacAddress, ip: IPv4Address, table: LeaseTable, policy: AddressPolicy, server_ip: IPv4Address,
             now: float) -> bool:
    reservation = policy.reservations.get(mac)
    if reservation is not None and reservation.ip in policy.subnet:
        return ip == reservation.ip
    return _free_for(mac, ip, table, policy, server_ip, now)


def _free_for(mac: MacAddress, ip: IPv4Address, table: LeaseTable, policy: AddressPolicy, server_ip: IPv4Address,
              now: float) -> bool:
    number = int(ip)  # integers: IPv4Address's own comparisons cost a method call each
    if not policy.first_number <= number <= policy.last_number or number == policy.router_number:
        return False
    if number in policy.reserved_numbers or number == int(server_ip) or table.quarantined(ip, now):
        return False
    holder = table.holder(ip, now)
    return holder is None or holder == mac


def _lease_ip(table: LeaseTable, mac: MacAddress, now: float) -> IPv4Address | None:
    lease = table.lease_for(mac, now)
    return lease.ip if lease is not None else None


def _hostname(mac: MacAddress, policy: AddressPolicy) -> str:
    reservation = policy.reservations.get(mac)
    return reservation.hostname if reservation is not None else ""


def _answer(packet: DhcpPacket, kind: MessageType, ip: IPv4Address | None, mac: MacAddress, policy: AddressPolicy,
            pxe_policy: PxePolicy, server_ip: IPv4Address, change: LeaseChange | None) -> DhcpAnswer:
    hostname = _hostname(mac, policy)
    if _ARCH not in packet.options:  # not PXE firmware (an OS's DHCP client): the pool's precompiled reply
        template = _reply_template(policy, kind, ip is not None, server_ip, hostname)
        yiaddr = ip or ZERO_IP
        ciaddr = packet.ciaddr if kind == MessageType.ACK else ZERO_IP
        reply = DhcpPacket(op=BOOTREPLY, htype=packet.htype, hlen=packet.hlen, xid=packet.xid, flags=packet.flags,
                           ciaddr=ciaddr, yiaddr=yiaddr, giaddr=packet.giaddr, chaddr=packet.chaddr,
                           options=template.options)
        wire = _REPLY_HEAD.pack(BOOTREPLY, packet.htype, packet.hlen, 0, packet.xid, 0, packet.flags,
                                ciaddr.packed, yiaddr.packed, b"\0\0\0\0", packet.giaddr.packed,
                                packet.chaddr[:16]) + template.tail
        what = f"{template.verb} {socket.inet_ntoa(yiaddr.packed)}" if ip is not None else f"{template.verb} (INFORM)"
        return DhcpAnswer(reply=reply, change=change, mac=mac, ip=ip, boot=None, summary=what, wire=(reply, wire))
    # PXE firmware: the reply of the first request of its kind (see _pxe_key), patched per packet
    key = _pxe_key(packet, kind, ip is not None, server_ip, hostname, mac, policy, pxe_policy)
    cached = _PXE_TEMPLATES.get(key)
    if cached is not None and cached.policy is policy and cached.pxe_policy is pxe_policy:
        return cached.answer(packet, kind, ip, mac, change)
    answer = _answer_pxe(packet, kind, ip, mac, policy, pxe_policy, server_ip, change, hostname)
    if isinstance(answer.boot, BootOffer):  # an Ignore names the MAC (detail, mac): decided per packet
        if len(_PXE_TEMPLATES) >= 4096:  # one per kind of client, policy and reserved hostname: bounded anyway
            _PXE_TEMPLATES.clear()
        _PXE_TEMPLATES[key] = _compile_pxe(answer, policy, pxe_policy)
    return answer


def _answer_pxe(packet: DhcpPacket, kind: MessageType, ip: IPv4Address | None, mac: MacAddress,
                policy: AddressPolicy, pxe_policy: PxePolicy, server_ip: IPv4Address, change: LeaseChange | None,
                hostname: str) -> DhcpAnswer:
    """The typed decision and reply for a PXE client: what every PXE reply template is made from."""
    before, after = _base_options(policy, kind, ip is not None, server_ip)
    if hostname:
        options = {**before, Option.HOSTNAME: hostname.encode(), **after}
    else:
        options = {**before, **after}
    sname = file = b""
    boot: BootOffer | Ignore | None = None
    request = classify_client(packet)
    if isinstance(request, PxeRequest):
        boot = decide_boot(request, pxe_policy, server_ip, port=67, authoritative=True)
        if isinstance(boot, BootOffer):
            sname, file, extra = boot_file_fields(boot, packet.options.get(Option.PARAMETER_LIST, b""))
            options.update(pxe_options(boot))
            options.update(extra)
    reply = DhcpPacket(
        op=BOOTREPLY, htype=packet.htype, hlen=packet.hlen, xid=packet.xid, flags=packet.flags,
        ciaddr=packet.ciaddr if kind == MessageType.ACK else ZERO_IP, yiaddr=ip or ZERO_IP,
        siaddr=boot.next_server if isinstance(boot, BootOffer) else ZERO_IP, giaddr=packet.giaddr,
        chaddr=packet.chaddr, sname=sname, file=file, options=MappingProxyType(options),
    )
    verb = "OFFER" if kind == MessageType.OFFER else "ACK"
    what = f"{verb} {ip}" if ip is not None else f"{verb} (INFORM)"
    if isinstance(boot, BootOffer):
        what += f", boot {boot.decision} {boot.boot_file}"
    elif isinstance(boot, Ignore):
        what += f", no boot: {boot.detail or boot.reason}"
    return DhcpAnswer(reply=reply, change=change, mac=mac, ip=ip, boot=boot, summary=what)


_ARCH = int(Option.ARCH)
_GUID = int(Option.GUID)
_ZERO4 = bytes(4)
_REPLY_HEAD = struct.Struct("!BBBBIHH4s4s4s4s16s")  # the header up to chaddr: what a reply copies or sets


@dataclass(frozen=True, slots=True)
class _ReplyTemplate:
    """A pool's reply of one kind to a client that is not PXE firmware: everything past chaddr is the
    same for every client of the pool (sname and file empty, the options, END, padding)."""

    options: Mapping[int, bytes]
    tail: bytes
    verb: str


_TEMPLATES: dict[tuple[int, int, bool, int, str], tuple[AddressPolicy, _ReplyTemplate]] = {}


def _reply_template(policy: AddressPolicy, kind: MessageType, with_lease: bool, server_ip: IPv4Address,
                    hostname: str) -> _ReplyTemplate:
    """Built once per policy object (a reload makes a new one), kind, server address and hostname."""
    key = (id(policy), kind, with_lease, int(server_ip), hostname)  # an int: IPv4Address hashes through hex()
    cached = _TEMPLATES.get(key)
    if cached is not None and cached[0] is policy:
        return cached[1]
    before, after = _base_options(policy, kind, with_lease, server_ip)
    options = {**before, Option.HOSTNAME: hostname.encode(), **after} if hostname else {**before, **after}
    tail = bytes(64 + 128) + MAGIC_COOKIE + encode_options(options) + bytes((Option.END,))
    template = _ReplyTemplate(options=MappingProxyType(options), tail=tail.ljust(MIN_PACKET - _REPLY_HEAD.size, b"\0"),
                              verb="OFFER" if kind == MessageType.OFFER else "ACK")
    if len(_TEMPLATES) >= 4096:  # one per reserved hostname and kind: bounded all the same
        _TEMPLATES.clear()
    _TEMPLATES[key] = (policy, template)
    return template


# --- PXE replies: decide once per kind of client, answer many ------------------------------------------
# A PXE client's OFFER or ACK re-ran classify_client, decide_boot and boot_file_fields and encoded the packet
# in full: twice the work of a plain client's reply (issue 16). The reply depends on the request only through
# what `_pxe_key` holds; past that it copies xid, flags, ciaddr (ACK), giaddr and chaddr, and sets yiaddr and
# the GUID (option 97), which `_PxeTemplate.answer` patches. The unit tests hold the patched reply byte for
# byte (and field for field) equal to `_answer_pxe`'s.


@dataclass(frozen=True, slots=True, kw_only=True)
class _PxeTemplate:
    policy: AddressPolicy  # the policies it was decided under: an entry of a replaced policy is never used
    pxe_policy: PxePolicy
    options: Mapping[int, bytes]  # the reply's options, the GUID's value being the first client's
    siaddr: IPv4Address
    siaddr_packed: bytes
    sname: bytes
    file: bytes
    head: bytes  # the encoded reply past chaddr up to option 97's value (all of it without a GUID)
    tail: bytes  # after option 97's value
    guid_length: int | None  # None: the reply carries no GUID of the client's
    offer: BootOffer
    summary: str  # after "OFFER <ip>"

    def answer(self, packet: DhcpPacket, kind: MessageType, ip: IPv4Address | None, mac: MacAddress,
               change: LeaseChange | None) -> DhcpAnswer:
        yiaddr = ip or ZERO_IP
        yiaddr_packed = yiaddr.packed  # IPv4Address.packed is Python code: each read once
        ciaddr = packet.ciaddr if kind == MessageType.ACK else ZERO_IP
        giaddr = packet.giaddr
        offer, options, body = self.offer, self.options, self.head
        if self.guid_length is not None:
            # the key holds the GUID's length: the offer's GUID is the client's own (classify_client checked it)
            guid = packet.options[_GUID]
            offer = BootOffer(next_server=offer.next_server, boot_file=offer.boot_file,  # not replace(): 2x slower
                              vendor_class=offer.vendor_class, vendor_options=offer.vendor_options,
                              ipxe_options=offer.ipxe_options, guid=guid, decision=offer.decision)
            options = MappingProxyType({**options, _GUID: guid})
            body = body + guid + self.tail
        reply = DhcpPacket(op=BOOTREPLY, htype=packet.htype, hlen=packet.hlen, xid=packet.xid, flags=packet.flags,
                           ciaddr=ciaddr, yiaddr=yiaddr, siaddr=self.siaddr, giaddr=giaddr,
                           chaddr=packet.chaddr, sname=self.sname, file=self.file, options=options)
        wire = _REPLY_HEAD.pack(BOOTREPLY, packet.htype, packet.hlen, 0, packet.xid, 0, packet.flags,
                                _ZERO4 if ciaddr is ZERO_IP else ciaddr.packed, yiaddr_packed, self.siaddr_packed,
                                _ZERO4 if giaddr is ZERO_IP else giaddr.packed, packet.chaddr[:16]) + body
        verb = "OFFER" if kind == MessageType.OFFER else "ACK"
        what = f"{verb} {socket.inet_ntoa(yiaddr_packed)}" if ip is not None else f"{verb} (INFORM)"
        return DhcpAnswer(reply=reply, change=change, mac=mac, ip=ip, boot=offer, summary=what + self.summary,
                          wire=(reply, wire))


_PXE_TEMPLATES: dict[tuple[object, ...], _PxeTemplate] = {}


def forget_templates() -> None:
    """Drop the reply templates (a reload: the entries of replaced policies are never used, only kept)."""
    _PXE_TEMPLATES.clear()
    _TEMPLATES.clear()


def _pxe_key(packet: DhcpPacket, kind: MessageType, with_lease: bool, server_ip: IPv4Address, hostname: str,
             mac: MacAddress, policy: AddressPolicy, pxe_policy: PxePolicy) -> tuple[object, ...]:
    """Everything `_answer_pxe` reads but the fields a template patches: the reply's kind, the pool and the
    PXE policy (by identity: rebuilt on every reload, and a template holds both, so an id is never reused
    while its entry lives), the server address, the reservation's hostname, the machine's entry and claim
    (decide_boot's per-MAC facts; the entry by identity, it lives in the held PXE policy), and the options
    classify_client and decide_boot read: architecture (93), user class (77), iPXE's 175, PXE's 43, the
    HTTPClient vendor class (60), whether the PRL (55) asks for the boot file (67), and the GUID's shape.
    (Option numbers as literals: this runs per packet.)"""
    options = packet.options
    get = options.get
    guid = get(97)
    vendor_class = get(60)
    machine = pxe_policy.machines.get(mac)
    return (
        kind, with_lease, int(server_ip), hostname, id(policy), id(pxe_policy),
        None if machine is None else id(machine), pxe_policy.is_claimed(mac),
        get(93), get(77), 175 in options, get(43), vendor_class is not None and vendor_class.startswith(b"HTTPClient"),
        67 in get(55, b""), None if guid is None else (len(guid), guid[:1]),
    )


def _compile_pxe(answer: DhcpAnswer, policy: AddressPolicy, pxe_policy: PxePolicy) -> _PxeTemplate:
    reply, offer = answer.reply, answer.boot
    assert reply is not None and isinstance(offer, BootOffer)
    body = encode_packet(reply)[_REPLY_HEAD.size:]
    head, tail, guid_length = body, b"", None
    if offer.guid is not None:
        # where option 97 carries the client's GUID (the options are this client's: found, not guessed)
        marker = bytes((_GUID, len(offer.guid))) + offer.guid
        at = body.index(marker, 64 + 128 + 4) + 2
        head, tail, guid_length = body[:at], body[at + len(offer.guid):], len(offer.guid)
    ip_text = str(answer.ip) if answer.ip is not None else None
    summary = answer.summary
    prefix = summary.split(",", 1)[0]
    assert ip_text is None or prefix.endswith(ip_text)
    return _PxeTemplate(policy=policy, pxe_policy=pxe_policy, options=reply.options, siaddr=reply.siaddr,
                        siaddr_packed=reply.siaddr.packed,
                        sname=reply.sname, file=reply.file, head=head, tail=tail, guid_length=guid_length,
                        offer=offer, summary=summary[len(prefix):])


_BASE_OPTIONS: dict[tuple[int, int, bool, IPv4Address], tuple[AddressPolicy, dict[int, bytes], dict[int, bytes]]] = {}


def _base_options(policy: AddressPolicy, kind: MessageType, with_lease: bool,
                  server_ip: IPv4Address) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """The options every client of `policy` gets in this kind of reply, those before the hostname and those
    after it (in the order they are sent). Built once per policy (a reload makes a new policy object)."""
    key = (id(policy), kind, with_lease, server_ip)
    cached = _BASE_OPTIONS.get(key)
    if cached is not None and cached[0] is policy:
        return cached[1], cached[2]
    before: dict[int, bytes] = {Option.MESSAGE_TYPE: bytes((kind,)), Option.SERVER_ID: server_ip.packed}
    if with_lease:  # not for INFORM (RFC 2131 §4.3.5: no lease time, no yiaddr)
        before[Option.LEASE_TIME] = policy.lease_seconds.to_bytes(4, "big")
        before[Option.RENEWAL_TIME] = (policy.lease_seconds // 2).to_bytes(4, "big")
        before[Option.REBINDING_TIME] = (policy.lease_seconds * 7 // 8).to_bytes(4, "big")
    before[Option.SUBNET_MASK] = policy.subnet.netmask.packed
    if policy.router is not None:
        before[Option.ROUTER] = policy.router.packed
    if policy.dns_servers:
        before[Option.DNS] = b"".join(a.packed for a in policy.dns_servers)
    after: dict[int, bytes] = {}
    if policy.domain:
        after[Option.DOMAIN] = policy.domain.encode()
        after[Option.DOMAIN_SEARCH] = _search_list(policy.domain)
    after.update(policy.extra_options)
    if len(_BASE_OPTIONS) >= 256:
        _BASE_OPTIONS.clear()
    _BASE_OPTIONS[key] = (policy, before, after)
    return before, after


def _search_list(domain: str) -> bytes:
    """RFC 3397: the domain search list as DNS labels (one domain: no compression needed)."""
    return b"".join(bytes((len(label),)) + label.encode() for label in domain.split(".")) + b"\0"


def _nak(packet: DhcpPacket, server_ip: IPv4Address) -> DhcpPacket:
    options = {Option.MESSAGE_TYPE: bytes((MessageType.NAK,)), Option.SERVER_ID: server_ip.packed}
    # RFC 2131 §4.3.2: a NAK is broadcast when the client has no address to be reached at.
    return DhcpPacket(op=BOOTREPLY, htype=packet.htype, hlen=packet.hlen, xid=packet.xid, flags=packet.flags | 0x8000,
                      giaddr=packet.giaddr, chaddr=packet.chaddr, options=MappingProxyType(options))
