"""The zone built from the config, and each answer rule (AA/RA, NOERROR, NODATA, NXDOMAIN, REFUSED, case,
EDNS, truncation, malformed input), through DnsServer.respond with no sockets; the forwarder's decisions
(forward.py) and its config."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSRecord

import appliance.dns.server as dns_server
from appliance.config import ConfigInvalid, parse_config
from appliance.dns.forward import (MAX_NEGATIVE_TTL, MAX_TTL, UPSTREAM_EDNS_SIZE, AnswerCache, Question, Rejected,
                                   attempt_order, cache_lifetime, cap_ttls, check_response, upstream_query)
from appliance.dns.server import IDLE_SECONDS, MAX_TCP_CONNECTIONS, DnsServer
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


# --- forwarding decisions (forward.py): which upstream answer to believe, and for how long -------------------

ASKED = Question("www.outside.test", QTYPE.A, 1)


def upstream_answer(name: str = "www.outside.test", qtype: str = "A", *, query_id: int = 0x1234, qr: int = 1,
                    ttl: int = 60) -> DNSRecord:
    reply = DNSRecord(DNSHeader(id=query_id, qr=qr, rd=1, ra=1), q=DNSRecord.question(name, qtype).q)
    reply.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.1"), ttl=ttl))
    return reply


def negative(rcode: int = RCODE.NXDOMAIN, *, soa_ttl: int = 86400, minimum: int = 3600) -> DNSRecord:
    reply = DNSRecord(DNSHeader(id=0x1234, qr=1, rcode=rcode), q=DNSRecord.question("gone.outside.test").q)
    reply.add_auth(RR("outside.test", QTYPE.SOA, ttl=soa_ttl,
                      rdata=SOA("ns.outside.test", "hostmaster.outside.test", (1, 3600, 600, 86400, minimum))))
    return reply


@pytest.mark.parametrize("data, verdict", [
    pytest.param(upstream_answer().pack(), None, id="the-answer"),
    pytest.param(upstream_answer("WWW.Outside.TEST").pack(), None, id="name-in-another-case"),
    pytest.param(upstream_answer(query_id=0x1235).pack(), "wrong-id", id="wrong-id"),
    pytest.param(upstream_answer("evil.test").pack(), "wrong-question", id="wrong-name"),
    pytest.param(upstream_answer(qtype="AAAA").pack(), "wrong-question", id="wrong-type"),
    pytest.param(upstream_answer(qr=0).pack(), "not-a-response", id="a-query"),
    pytest.param(bytes.fromhex("1234 8180 0000 0000 0000 0000"), "wrong-question", id="no-question"),
    pytest.param(bytes.fromhex("1234 8180 0001 0000 0000 0000 03777777"), "malformed", id="cut-short"),
    pytest.param(b"\x12", "malformed", id="runt"),
])
def test_only_the_answer_to_the_question_asked_is_believed(data, verdict):
    result = check_response(bytes(data), query_id=0x1234, asked=ASKED)
    if verdict is None:
        assert isinstance(result, DNSRecord) and values(result) == ["192.0.2.1"]
    else:
        assert result == Rejected(verdict)


def test_another_class_is_another_question():
    chaos = upstream_answer()
    chaos.q.qclass = 3
    assert check_response(bytes(chaos.pack()), query_id=0x1234, asked=ASKED) == Rejected("wrong-question")


@pytest.mark.parametrize("response, ttls, lifetime", [
    pytest.param(upstream_answer(ttl=7 * 86400), [MAX_TTL], MAX_TTL, id="a-week-becomes-an-hour"),
    pytest.param(upstream_answer(ttl=30), [30], 30, id="short-stays-short"),
    pytest.param(negative(), [MAX_NEGATIVE_TTL], MAX_NEGATIVE_TTL, id="nxdomain-capped"),
    pytest.param(negative(RCODE.NOERROR), [MAX_NEGATIVE_TTL], MAX_NEGATIVE_TTL, id="nodata-capped"),
    pytest.param(negative(minimum=20), [20], 20, id="nxdomain-by-soa-minimum"),
    pytest.param(negative(soa_ttl=10), [10], 10, id="nxdomain-by-soa-ttl"),
    pytest.param(negative(RCODE.SERVFAIL), [MAX_TTL], None, id="servfail-not-kept"),
])
def test_ttls_are_capped_and_negative_answers_kept_by_their_soa(response, ttls, lifetime):
    capped = cap_ttls(response)
    assert [rr.ttl for rr in (*capped.rr, *capped.auth)] == ttls
    assert cache_lifetime(capped) == lifetime


def test_not_kept_truncated_or_negative_without_soa_and_upstream_opt_left_out():
    truncated = upstream_answer()
    truncated.header.tc = 1
    assert cache_lifetime(cap_ttls(truncated)) is None
    nxdomain = DNSRecord(DNSHeader(id=1, qr=1, rcode=RCODE.NXDOMAIN), q=DNSRecord.question("gone.test").q)
    assert cache_lifetime(cap_ttls(nxdomain)) is None
    with_opt = upstream_answer()
    with_opt.add_ar(EDNS0(udp_len=4096))
    assert cap_ttls(with_opt).ar == []


def test_upstream_query_asks_as_the_client_asked_with_recursion_and_edns():
    query = DNSRecord.parse(upstream_query(DNSRecord.question("Www.Outside.Test", "AAAA").q, 0xBEEF))
    assert (query.header.id, query.header.rd, query.header.qr) == (0xBEEF, 1, 0)
    assert str(query.q.qname) == "Www.Outside.Test." and query.q.qtype == QTYPE.AAAA
    assert [rr.rclass for rr in query.ar if rr.rtype == QTYPE.OPT] == [UPSTREAM_EDNS_SIZE]


def test_the_upstream_that_answered_well_is_asked_first():
    upstreams = (("192.0.2.1", 53), ("192.0.2.2", 53), ("::1", 53))
    assert attempt_order(upstreams, 0) == [0, 1, 2]
    assert attempt_order(upstreams, 2) == [2, 0, 1]


def test_the_answer_cache_ages_expires_and_stays_bounded():
    cache = AnswerCache(entries=3)
    cache.put(ASKED, cap_ttls(upstream_answer(ttl=100)), now=1000.0)
    assert [rr.ttl for rr in cache.get(ASKED, now=1040.0).rr] == [60]  # served with the time left
    assert cache.get(ASKED, now=1100.0) is None and len(cache) == 0  # expired: gone
    for i in range(5):
        cache.put(Question(f"n{i}.test", QTYPE.A, 1), cap_ttls(upstream_answer(f"n{i}.test")), now=0.0)
    assert len(cache) == 3 and cache.get(Question("n0.test", QTYPE.A, 1), now=1.0) is None
    small = AnswerCache(max_bytes=200)
    for i in range(5):
        small.put(Question(f"n{i}.test", QTYPE.A, 1), cap_ttls(upstream_answer(f"n{i}.test")), now=0.0)
    assert 0 < small.size <= 200 and small.get(Question("n4.test", QTYPE.A, 1), now=1.0) is not None
    cache.put(Question("nx.test", QTYPE.A, 1), cap_ttls(negative(RCODE.SERVFAIL)), now=0.0)
    assert cache.get(Question("nx.test", QTYPE.A, 1), now=1.0) is None  # never kept


# --- the config of the forwarder and of TCP ------------------------------------------------------------------

@pytest.mark.parametrize("text, upstream", [
    pytest.param("192.0.2.53", ("192.0.2.53", 53), id="ipv4"),
    pytest.param("192.0.2.53:5353", ("192.0.2.53", 5353), id="ipv4-port"),
    pytest.param("fd00::53", ("fd00::53", 53), id="ipv6"),
    pytest.param("[fd00::53]", ("fd00::53", 53), id="ipv6-brackets"),
    pytest.param("[fd00::53]:5353", ("fd00::53", 5353), id="ipv6-port"),
])
def test_forward_upstreams_in_the_config(text, upstream):
    config = parse_config(f'domain: example.com\ndns:\n  forward: ["{text}"]\n', Path("/etc/bootd/bootd.yaml"))
    assert config.dns.forward == (upstream,)


@pytest.mark.parametrize("line, field", [
    pytest.param('  forward: ["[fd00::53]:99999"]', "dns.forward[0]", id="port-out-of-range"),
    pytest.param('  forward: ["[fd00::53"]', "dns.forward[0]", id="unclosed-bracket"),
    pytest.param('  forward: ["fd00::53:53:zz"]', "dns.forward[0]", id="not-an-address"),
    pytest.param("  max_tcp_connections: 0", "dns.max_tcp_connections", id="no-tcp-connections"),
    pytest.param("  tcp_idle_timeout: 0", "dns.tcp_idle_timeout", id="no-idle-time"),
])
def test_bad_forward_and_tcp_settings_name_file_line_and_field(line, field):
    with pytest.raises(ConfigInvalid) as info:
        parse_config(f"domain: example.com\ndns:\n{line}\n", Path("/etc/bootd/bootd.yaml"))
    assert [(e.file, e.line, e.field) for e in info.value.errors] == [("bootd.yaml", 3, field)]


def test_tcp_settings_from_the_config():
    config = parse_config("domain: example.com\ndns:\n  max_tcp_connections: 32\n  tcp_idle_timeout: 30\n",
                          Path("/etc/bootd/bootd.yaml"))
    assert (config.dns.max_tcp_connections, config.dns.tcp_idle_timeout) == (32, 30)
    defaults = parse_config("domain: example.com\ndns: {}\n", Path("/etc/bootd/bootd.yaml")).dns
    assert (defaults.max_tcp_connections, defaults.tcp_idle_timeout) == (MAX_TCP_CONNECTIONS, IDLE_SECONDS)



# --- binding port 0: UDP's port, then the same for TCP ----------------------------------------------------

async def test_port_0_tries_another_udp_port_when_tcp_cannot_have_the_same(server, monkeypatch):
    """The kernel's free UDP port may be held for TCP by another socket (seen: a test's bootd failed to start
    with 'address already in use'); with port 0, another UDP port is taken, and both sockets really serve."""
    real, asked = asyncio.start_server, []

    async def first_port_taken(*args, **kw):
        asked.append(args[2])
        if len(asked) == 1:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return await real(*args, **kw)

    monkeypatch.setattr(dns_server.asyncio, "start_server", first_port_taken)
    dns = DnsServer(zone=server.zone, address="127.0.0.1", port=0)
    await dns.start()
    try:
        assert len(asked) == 2 and dns.port == asked[1]
        query = DNSRecord.question("k8s.example.com")
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.setblocking(False)
            await loop.sock_connect(udp, ("127.0.0.1", dns.port))
            await loop.sock_sendall(udp, query.pack())
            reply = DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(udp, 4096), 30))
        assert reply.header.id == query.header.id and reply.header.rcode == RCODE.NOERROR
        _reader, writer = await asyncio.open_connection("127.0.0.1", dns.port)  # TCP listens on the same port
        writer.close()
    finally:
        await dns.close()


async def test_a_configured_port_taken_for_tcp_is_an_error_not_another_port(server, monkeypatch):
    real, asked = asyncio.start_server, []

    async def counted(*args, **kw):
        asked.append(args[2])
        return await real(*args, **kw)

    monkeypatch.setattr(dns_server.asyncio, "start_server", counted)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        dns = DnsServer(zone=server.zone, address="127.0.0.1", port=port)
        with pytest.raises(OSError):
            await dns.start()
    assert len(asked) <= 1  # tried once (or UDP was refused first), never moved to another port
