"""The zone built from the config, and each answer rule (AA/RA, NOERROR, NODATA, NXDOMAIN, REFUSED, case,
EDNS, truncation, malformed input), through DnsServer.respond with no sockets."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from appliance.config import parse_config
from appliance.dns.server import DnsServer
from appliance.dns.zone import ExtraRecord, build_zone

CONFIG = """\
domain: example.com
names: {provisioner: matchbox, controllers: k8s, workers: tectonic}
machines:
  - {name: node1, mac: "52:54:00:a1:9c:ae", ip: 10.77.0.21, role: controller}
  - {name: node2, mac: "52:54:00:b2:2f:86", ip: 10.77.0.22, role: worker}
  - {name: node3, mac: "52:54:00:c3:61:77", ip: 10.77.0.23, role: worker}
  - {name: node4, mac: "52:54:00:c3:61:78", ip: "fd77::24", role: worker}
  - {name: node5, mac: "52:54:00:c3:61:79", role: worker}
"""
SERVER = ipaddress.ip_address("10.77.0.1")
EXTRA = [ExtraRecord(name="etcd", rtype="CNAME", value="k8s"),
         ExtraRecord(name="_etcd-server-ssl._tcp", rtype="SRV", value="0 0 2380 node1"),
         ExtraRecord(name="@", rtype="TXT", value="bootd lab")]


@pytest.fixture
def server() -> DnsServer:
    config = parse_config(CONFIG, Path("/etc/bootd/bootd.yaml"))
    zone = build_zone(config, [SERVER], extra=EXTRA, leases={"node5": ipaddress.ip_address("10.77.0.150")})
    return DnsServer(zone=zone)


def ask(server: DnsServer, name: str, qtype: str = "A", *, rd: bool = True, edns: int | None = None,
        udp: bool = True) -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    query.header.rd = int(rd)
    if edns is not None:
        query.add_ar(EDNS0(udp_len=edns))
    wire = server.respond(query.pack(), udp=udp, reply_to=None)
    reply = DNSRecord.parse(wire)
    assert reply.header.id == query.header.id and reply.header.qr == 1
    return reply


def values(reply: DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr)


@pytest.mark.parametrize("name, qtype, expected", [
    ("node1.example.com", "A", ["10.77.0.21"]),
    ("matchbox.example.com", "A", ["10.77.0.1"]),
    ("k8s.example.com", "A", ["10.77.0.21"]),
    ("tectonic.example.com", "A", ["10.77.0.150", "10.77.0.22", "10.77.0.23"]),
    ("tectonic.example.com", "AAAA", ["fd77::24"]),
    ("node4.example.com", "AAAA", ["fd77::24"]),
    ("node5.example.com", "A", ["10.77.0.150"]),  # follows its DHCP lease
    ("21.0.77.10.in-addr.arpa", "PTR", ["node1.example.com."]),
    ("1.0.77.10.in-addr.arpa", "PTR", ["matchbox.example.com."]),
    ("4.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.7.7.d.f.ip6.arpa", "PTR", ["node4.example.com."]),
    ("example.com", "NS", ["matchbox.example.com."]),
    ("etcd.example.com", "A", ["10.77.0.21", "k8s.example.com."]),  # CNAME, followed inside the zone
    ("_etcd-server-ssl._tcp.example.com", "SRV", ["0 0 2380 node1.example.com."]),
    ("example.com", "TXT", ['"bootd lab"']),
])
def test_records(server, name, qtype, expected):
    reply = ask(server, name, qtype)
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1 and reply.header.ra == 0
    assert values(reply) == expected


def test_soa_at_the_apex_and_glue_with_ns(server):
    reply = ask(server, "example.com", "SOA")
    assert reply.rr[0].rtype == QTYPE.SOA and str(reply.rr[0].rdata.mname) == "matchbox.example.com."
    ns = ask(server, "example.com", "NS")
    assert [str(rr.rdata) for rr in ns.ar] == ["10.77.0.1"]


@pytest.mark.parametrize("name, qtype, rcode, has_soa", [
    pytest.param("node1.example.com", "AAAA", RCODE.NOERROR, True, id="nodata-other-type"),
    pytest.param("_tcp.example.com", "A", RCODE.NOERROR, True, id="empty-non-terminal-is-nodata"),
    pytest.param("nope.example.com", "A", RCODE.NXDOMAIN, True, id="nxdomain-in-zone"),
    pytest.param("99.0.77.10.in-addr.arpa", "PTR", RCODE.NXDOMAIN, True, id="nxdomain-in-reverse-zone"),
    pytest.param("www.google.com", "A", RCODE.REFUSED, False, id="refused-outside"),
    pytest.param("1.1.168.192.in-addr.arpa", "PTR", RCODE.REFUSED, False, id="refused-other-reverse"),
])
def test_negative_answers(server, name, qtype, rcode, has_soa):
    reply = ask(server, name, qtype)
    assert reply.header.rcode == rcode and not reply.rr
    assert any(rr.rtype == QTYPE.SOA for rr in reply.auth) is has_soa
    assert reply.header.aa == (0 if rcode == RCODE.REFUSED else 1)


def test_names_match_case_insensitively_and_the_question_is_echoed_as_asked(server):
    reply = ask(server, "NoDe1.ExAmPlE.cOm", "A")
    assert values(reply) == ["10.77.0.21"] and str(reply.q.qname) == "NoDe1.ExAmPlE.cOm."


def test_recursion_desired_is_echoed_never_granted(server):
    assert ask(server, "node1.example.com", rd=False).header.rd == 0
    reply = ask(server, "node1.example.com", rd=True)
    assert reply.header.rd == 1 and reply.header.ra == 0


def big_server() -> DnsServer:
    config = parse_config("domain: example.com\n", Path("/etc/bootd/bootd.yaml"))
    many = [ExtraRecord(name="many", rtype="A", value=f"10.1.0.{i}") for i in range(1, 61)]
    return DnsServer(zone=build_zone(config, [SERVER], extra=many))


def test_truncation_over_udp_and_the_full_answer_over_tcp():
    server = big_server()
    small = ask(server, "many.example.com")
    assert small.header.tc == 1 and not small.rr
    assert len(ask(server, "many.example.com", edns=4096).rr) == 60  # EDNS0 size honoured
    edns_small = ask(server, "many.example.com", edns=600)
    assert edns_small.header.tc == 1 and any(rr.rtype == QTYPE.OPT for rr in edns_small.ar)
    assert len(ask(server, "many.example.com", udp=False).rr) == 60


@pytest.mark.parametrize("data, rcode", [
    pytest.param(bytes.fromhex("1234 0100 0001 0000 0000 0000 03777777"), RCODE.FORMERR, id="truncated-question"),
    pytest.param(bytes.fromhex("1234 0100 0001 0000 0000 0000 c00c 0001 0001"), RCODE.FORMERR, id="pointer-loop"),
    pytest.param(bytes.fromhex("1234 0100 0000 0000 0000 0000"), RCODE.FORMERR, id="no-question"),
    pytest.param(bytes.fromhex("1234 0100 0002 0000 0000 0000 0161 00 0001 0001 0162 00 0001 0001"), RCODE.FORMERR,
                 id="two-questions"),
    pytest.param(bytes.fromhex("1234 2800 0001 0000 0000 0000 0161 00 0001 0001"), RCODE.NOTIMP, id="update-opcode"),
    pytest.param(bytes.fromhex("1234 0100 0001 0000 0000 0000 056e6f646531 076578616d706c65 03636f6d 00 0001 0003"),
                 RCODE.REFUSED, id="chaos-class"),
])
def test_bad_queries(server, data, rcode):
    reply = server.respond(data, udp=True, reply_to=None)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == rcode


def test_responses_and_runts_are_dropped(server):
    assert server.respond(b"\x12\x34\x81\x80" + bytes(8), udp=True, reply_to=None) is None
    assert server.respond(b"\x12", udp=True, reply_to=None) is None


def test_precomputed_answers_cover_the_zone(server):
    query = DNSRecord.question("node2.example.com", "A")
    assert bytes(query.pack()[2:]) in server._answers
