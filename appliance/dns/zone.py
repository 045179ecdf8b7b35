"""The cluster's zone, built from bootd.yaml as a pure function, and the answer to a query.

Records (config -> zone):
- `<provisioner>.<domain>`: bootd's own addresses; it is also the zone's NS (with glue).
- `<controllers>.<domain>` / `<workers>.<domain>`: every controller's / worker's address.
- `<machine>.<domain>`: each machine's address (its reservation, or its DHCP lease in authoritative mode).
- PTR for every address, in reverse zones: the /24 (IPv4) or /64 (IPv6) around each address unless
  `dns.reverse` names them.
- SOA and NS at each zone apex; extra records from `dns.records` (A, AAAA, CNAME, TXT, SRV, MX, PTR).

Answers (RFC 1034/2308/8020, as an authoritative server): AA set, RA clear (set when forwarding);
records -> NOERROR; a name that exists without that type -> NOERROR, no answer, SOA in authority (NODATA);
no such name inside a zone -> NXDOMAIN with the SOA; a name outside every zone -> REFUSED, or forwarded
when `dns.forward` is set. Names match case-insensitively; the question is echoed as asked. An empty
non-terminal (`_tcp.example.com` under an SRV) exists: NODATA, not NXDOMAIN.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from dnslib import AAAA, NS, PTR, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSRecord

from appliance.config import Config, Role
from appliance.dns.records import record_data

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SOA_TIMERS = (3600, 600, 86400, 60)  # refresh, retry, expire, minimum (= the negative-answer TTL, RFC 2308)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtraRecord:
    name: str  # relative to the domain, "@" for the apex, or a full name ending in "."
    rtype: str
    value: str


@dataclass(frozen=True, slots=True)
class Zone:
    origins: tuple[str, ...]  # apexes, longest first: the domain and the reverse zones
    records: Mapping[str, Mapping[int, tuple[RR, ...]]]  # lower-case name -> qtype -> records
    names: frozenset[str]  # every name that exists, empty non-terminals included
    serial: int
    ttl: int

    def origin_of(self, name: str) -> str | None:
        for origin in self.origins:
            if name == origin or name.endswith("." + origin):
                return origin
        return None

    def soa(self, origin: str) -> RR:
        return self.records[origin][QTYPE.SOA][0]


class Forward(Enum):
    """The query is for a name outside the zones and forwarding is on: ask upstream."""

    UPSTREAM = "upstream"


def build_zone(config: Config, server_addresses: Iterable[IPAddress], *, extra: Iterable[ExtraRecord] = (),
               leases: Mapping[str, IPAddress] | None = None, reverse: Iterable[ipaddress.IPv4Network
                                                                          | ipaddress.IPv6Network] = (),
               ttl: int = 60, serial: int = 1) -> Zone:
    """The zone for `config`. `leases`: machine name -> address for machines without a reserved IP."""
    domain = (config.domain or "local").lower()
    records: dict[str, dict[int, list[RR]]] = {}
    addresses: dict[IPAddress, str] = {}  # address -> the name its PTR points at

    def add(name: str, rtype: int, rdata, record_ttl: int = ttl) -> None:
        records.setdefault(name, {}).setdefault(rtype, []).append(RR(name + ".", rtype, rdata=rdata, ttl=record_ttl))

    def add_address(name: str, address: IPAddress, ptr: bool = True) -> None:
        add(name, QTYPE.A if address.version == 4 else QTYPE.AAAA,
            A(str(address)) if address.version == 4 else AAAA(str(address)))
        if ptr:
            addresses.setdefault(address, name)

    servers = list(dict.fromkeys(server_addresses))
    ns_name = f"{config.names.provisioner or 'ns'}.{domain}"
    for address in servers:
        add_address(ns_name, address)
    role_names = {Role.CONTROLLER: config.names.controllers, Role.WORKER: config.names.workers}
    for machine in config.machines:
        address = machine.ip or (leases or {}).get(machine.name)
        if address is None:
            continue
        add_address(f"{machine.name}.{domain}", address)
        if machine.role is not None and role_names.get(machine.role):
            add_address(f"{role_names[machine.role]}.{domain}", address, ptr=False)
    for record in extra:
        name = record.name.rstrip(".").lower() if record.name.endswith(".") else (
            domain if record.name == "@" else f"{record.name.lower()}.{domain}")
        rtype, rdata = record_data(record.rtype, record.value, domain)
        add(name, rtype, rdata)
        if rtype in (QTYPE.A, QTYPE.AAAA):
            addresses.setdefault(ipaddress.ip_address(record.value), name)
    reverse_zones = list(reverse) or sorted({_default_reverse(a) for a in addresses}, key=str)
    reverse_origins = [_reverse_origin(network) for network in reverse_zones]
    for address, name in addresses.items():
        if any(address in network for network in reverse_zones):
            add(address.reverse_pointer.lower(), QTYPE.PTR, PTR(name + "."))
    origins = [domain, *reverse_origins]
    for origin in origins:
        add(origin, QTYPE.SOA, SOA(ns_name + ".", f"hostmaster.{domain}.", (serial, *SOA_TIMERS)))
        add(origin, QTYPE.NS, NS(ns_name + "."))
    names = set()
    for name in records:
        origin = next((o for o in origins if name == o or name.endswith("." + o)), None)
        names.add(name)
        while origin and name != origin and "." in name:  # empty non-terminals up to the apex
            name = name.split(".", 1)[1]
            names.add(name)
    return Zone(
        origins=tuple(sorted(origins, key=len, reverse=True)),
        records={n: {t: tuple(rrs) for t, rrs in types.items()} for n, types in records.items()},
        names=frozenset(names), serial=serial, ttl=ttl,
    )


def _default_reverse(address: IPAddress) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{address}/{24 if address.version == 4 else 64}", strict=False)


def _reverse_origin(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """in-addr.arpa / ip6.arpa name of a network cut at an octet / nibble boundary."""
    step = 8 if network.version == 4 else 4
    labels = network.prefixlen // step
    pointer = network.network_address.reverse_pointer.split(".")
    host_labels = (32 if network.version == 4 else 128) // step - labels
    return ".".join(pointer[host_labels:]).lower()


# --- answering ----------------------------------------------------------------------------------------------

def answer(zone: Zone, query: DNSRecord, *, forwarding: bool = False) -> DNSRecord | Forward:
    """The reply to one parsed query (question count and opcode are checked by the caller)."""
    question = query.q
    name = str(question.qname).rstrip(".").lower()
    header = DNSHeader(id=query.header.id, qr=1, aa=1, ra=int(forwarding), rd=query.header.rd)
    reply = DNSRecord(header, q=question)
    if question.qclass not in (1, 255):  # IN (and ANY)
        reply.header.aa, reply.header.rcode = 0, RCODE.REFUSED
        return reply
    origin = zone.origin_of(name)
    if origin is None:
        if forwarding:
            return Forward.UPSTREAM
        reply.header.aa, reply.header.rcode = 0, RCODE.REFUSED
        return reply
    at_name = zone.records.get(name)
    if name not in zone.names:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(zone.soa(origin))
        return reply
    qtype = question.qtype
    found: list[RR] = []
    if at_name:
        if qtype == QTYPE.ANY:
            found = [rr for rrs in at_name.values() for rr in rrs]
        elif qtype in at_name:
            found = list(at_name[qtype])
        elif QTYPE.CNAME in at_name:
            found = list(at_name[QTYPE.CNAME])
            target = str(found[0].rdata.label).rstrip(".").lower()
            found += list(zone.records.get(target, {}).get(qtype, ()))  # in-zone target: follow one step
    if not found:
        reply.add_auth(zone.soa(origin))  # NODATA (RFC 2308)
        return reply
    for rr in found:
        reply.add_answer(rr)
    if qtype == QTYPE.NS or (qtype == QTYPE.SOA and name == origin):
        for rr in found:
            if rr.rtype == QTYPE.NS:
                for glue in zone.records.get(str(rr.rdata.label).rstrip(".").lower(), {}).get(QTYPE.A, ()):
                    reply.add_ar(glue)
    return reply


def refused(query: DNSRecord, rcode: int) -> DNSRecord:
    return DNSRecord(DNSHeader(id=query.header.id, qr=1, aa=0, ra=0, rd=query.header.rd, rcode=rcode),
                     q=query.q if query.questions else None)
