"""Forwarding decisions: which upstream answer to believe, how long to keep it, whom to ask next.

Invariants (issue 13, finding 2: the forwarder could be poisoned):
- An upstream answer is believed only if it is a response (QR) to a standard query with the ID we sent and
  exactly the question we asked (name compared case-insensitively, type, class). The transport adds the rest:
  a fresh connected UDP socket per upstream query (the kernel drops datagrams from any other address, and the
  source port is chosen by the OS for each query) and IDs from `secrets`.
- Nothing from upstream is kept longer than MAX_TTL, and a negative answer (NXDOMAIN, NODATA) no longer than
  MAX_NEGATIVE_TTL; a negative answer without an SOA, or a truncated answer, is not kept at all (RFC 2308 §5).
- SERVFAIL, REFUSED, NOTIMP and FORMERR from an upstream mean "ask the next one"; NOERROR and NXDOMAIN are answers.

Pure: no sockets and no clock (`now` is an argument), so every rule is a table-driven unit test.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, DNSError, DNSQuestion, DNSRecord

MAX_TTL = 3600  # an hour: what a poisoned or mistaken upstream answer can cost at most
MAX_NEGATIVE_TTL = 300  # five minutes for NXDOMAIN/NODATA (RFC 2308 §5 suggests 1-3 h; a lab changes faster)
UPSTREAM_EDNS_SIZE = 1232  # what we offer upstream (DNS flag day 2020), so answers rarely come truncated
CACHE_ENTRIES = 10_000
CACHE_BYTES = 8 << 20  # the answers' wire size together

TRY_NEXT_RCODES = frozenset({RCODE.SERVFAIL, RCODE.REFUSED, RCODE.NOTIMP, RCODE.FORMERR})


@dataclass(frozen=True, slots=True)
class Question:
    """A question as compared and cached: the name in lower case, without the final dot."""

    name: str
    qtype: int
    qclass: int

    @classmethod
    def of(cls, question: DNSQuestion) -> Question:
        return cls(str(question.qname).rstrip(".").lower(), question.qtype, question.qclass)


@dataclass(frozen=True, slots=True)
class Rejected:
    """An upstream datagram that is not the answer we wait for; `reason` is a counter's name."""

    reason: str


def upstream_query(question: DNSQuestion, query_id: int) -> bytes:
    """The query sent upstream: the client's question as asked, recursion desired, EDNS0."""
    query = DNSRecord(q=question)
    query.header.id, query.header.rd = query_id, 1
    query.add_ar(EDNS0(udp_len=UPSTREAM_EDNS_SIZE))
    return bytes(query.pack())


def check_response(data: bytes, *, query_id: int, asked: Question) -> DNSRecord | Rejected:
    """The parsed answer if `data` answers exactly what we asked with the ID we chose, else why not."""
    if len(data) < 12:
        return Rejected("malformed")
    if struct.unpack_from("!H", data)[0] != query_id:
        return Rejected("wrong-id")
    try:
        response = DNSRecord.parse(data)
    except (DNSError, ValueError, IndexError, struct.error, UnicodeDecodeError):
        return Rejected("malformed")
    if not response.header.qr or response.header.opcode != 0:
        return Rejected("not-a-response")
    if len(response.questions) != 1 or Question.of(response.q) != asked:
        return Rejected("wrong-question")
    return response


def try_next(response: DNSRecord) -> bool:
    """Whether this upstream failed to answer (ask the next one) rather than answered."""
    return response.header.rcode in TRY_NEXT_RCODES


def is_negative(response: DNSRecord) -> bool:
    return response.header.rcode == RCODE.NXDOMAIN or (response.header.rcode == RCODE.NOERROR and not response.rr)


def cap_ttls(response: DNSRecord) -> DNSRecord:
    """`response` with every TTL capped (MAX_TTL; the SOA of a negative answer at MAX_NEGATIVE_TTL and at its
    own MINIMUM field, RFC 2308 §5) and upstream's OPT record left out (ours is added per client).
    A new record: the argument is not changed."""
    capped = DNSRecord.parse(response.pack())
    negative = is_negative(capped)
    for rr in (*capped.rr, *capped.auth, *capped.ar):
        rr.ttl = min(rr.ttl, MAX_TTL)
        if negative and rr.rtype == QTYPE.SOA:
            rr.ttl = min(rr.ttl, MAX_NEGATIVE_TTL, rr.rdata.times[-1])
    capped.ar = [rr for rr in capped.ar if rr.rtype != QTYPE.OPT]
    return capped


def cache_lifetime(capped: DNSRecord) -> int | None:
    """Seconds an answer (TTLs already capped) may be kept, or None when it must not be kept."""
    if capped.header.tc or capped.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
        return None
    if not is_negative(capped):
        return min(rr.ttl for rr in capped.rr)
    soa = [rr.ttl for rr in capped.auth if rr.rtype == QTYPE.SOA]
    return min(soa) if soa else None  # no SOA: nothing says how long "does not exist" holds


def aged(wire: bytes, remaining: int) -> DNSRecord:
    """A kept answer as it is served `remaining` seconds before it expires: no TTL above that."""
    record = DNSRecord.parse(wire)
    for rr in (*record.rr, *record.auth, *record.ar):
        rr.ttl = min(rr.ttl, remaining)
    return record


def attempt_order(upstreams: tuple[tuple[str, int], ...], preferred: int) -> list[int]:
    """Indexes of the upstreams in the order to ask them: the last one that answered well first, then the
    others as configured."""
    return [preferred] + [i for i in range(len(upstreams)) if i != preferred]


class AnswerCache:
    """Upstream answers by question, least recently used out first, bounded in entries and bytes."""

    def __init__(self, *, entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES) -> None:
        self.entries, self.max_bytes = entries, max_bytes
        self._kept: OrderedDict[Question, tuple[float, bytes]] = OrderedDict()  # question -> (expires, wire)
        self.size = 0

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, question: Question, now: float) -> DNSRecord | None:
        kept = self._kept.get(question)
        if kept is None:
            return None
        expires, wire = kept
        remaining = int(expires - now)
        if remaining <= 0:
            self._drop(question)
            return None
        self._kept.move_to_end(question)
        return aged(wire, remaining)

    def put(self, question: Question, capped: DNSRecord, now: float) -> None:
        lifetime = cache_lifetime(capped)
        if not lifetime:
            return
        wire = bytes(capped.pack())
        if len(wire) > self.max_bytes:
            return
        self._drop(question)
        self._kept[question] = (now + lifetime, wire)
        self.size += len(wire)
        while len(self._kept) > self.entries or self.size > self.max_bytes:
            self._drop(next(iter(self._kept)))

    def _drop(self, question: Question) -> None:
        kept = self._kept.pop(question, None)
        if kept is not None:
            self.size -= len(kept[1])
