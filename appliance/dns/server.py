"""The DNS transport: UDP and TCP on port 53, answers from the zone, forwarding when configured.

Hot path (research/bench.md §3): the reply to a query depends only on the bytes after its ID (flags,
question as asked, EDNS), so answers are kept by those bytes and a repeated query costs a dictionary
lookup and an ID patch. The zone's answers for plain queries are put there when the zone is built; any
other query is parsed with dnslib (a codec only: its server is threaded), answered, and remembered.
UDP uses a drain reader, not a DatagramProtocol (2-4x cheaper per packet). Nothing on the path logs or
publishes: counters only.

TCP (RFC 7766): length-prefixed messages, several per connection; a connection idle for IDLE_SECONDS is
closed, a length over 65535 cannot be sent, and each connection is its own task, so a slow client
stalls nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from dnslib import EDNS0, QTYPE, RCODE, DNSError, DNSRecord

from appliance.dns.zone import Forward, Zone, answer, refused

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 20_000
IDLE_SECONDS = 10.0
UDP_DEFAULT = 512  # RFC 1035; EDNS0 raises it
UDP_MAX = 4096  # the most we answer over UDP even when a client offers more
EDNS_SIZE = 1232  # what we advertise (DNS flag day 2020)
FORWARD_TIMEOUT = 2.0
_DRAIN_BATCH = 64


@dataclass(slots=True)
class DnsStats:
    queries: int = 0
    cache_hits: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # by rcode
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    forwarded: int = 0
    internal_errors: int = 0

    def as_json(self) -> dict[str, object]:
        return {"queries": self.queries, "cache_hits": self.cache_hits, "answered": dict(self.answered),
                "dropped": dict(self.dropped), "truncated": self.truncated, "forwarded": self.forwarded,
                "internal_errors": self.internal_errors}


LATER = object()  # `respond`'s answer for a forwarded query: the reply comes when upstream answers


@dataclass(slots=True)
class _Pending:
    reply_to: object  # (address, port) for UDP, or an asyncio.Queue for a TCP connection
    query: DNSRecord
    deadline: float


class DnsServer:
    def __init__(self, *, zone: Zone, address: str = "", port: int = 53,
                 forward: tuple[tuple[str, int], ...] = ()) -> None:
        self.address, self.port = address, port
        self.forward = forward
        self.stats = DnsStats()
        self.zone = zone
        self._answers: OrderedDict[bytes, bytes] = OrderedDict()  # query bytes after the ID -> reply after the ID
        self._upstream_cache: dict[tuple[str, int, int], tuple[float, DNSRecord]] = {}
        self._pending: dict[int, _Pending] = {}
        self._udp: socket.socket | None = None
        self._upstream: socket.socket | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.update(zone)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            udp.bind((self.address, self.port))
            udp.setblocking(False)
        except OSError:
            udp.close()
            raise
        self._udp = udp
        self.port = udp.getsockname()[1]  # port 0 in the config: the same free port for TCP
        self._tcp = await asyncio.start_server(self._serve_tcp, self.address or None, self.port, reuse_address=True)
        self._loop.add_reader(udp.fileno(), self._drain_udp)
        if self.forward:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            upstream.setblocking(False)
            upstream.bind(("", 0))
            self._upstream = upstream
            self._loop.add_reader(upstream.fileno(), self._drain_upstream)
            self._sweeper = self._loop.call_later(1.0, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for sock in (self._udp, self._upstream):
            if sock is not None and self._loop is not None:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._connections):
                task.cancel()
            await self._tcp.wait_closed()

    def update(self, zone: Zone) -> None:
        """A new zone (reload, a new DHCP lease): forget every remembered answer, precompute the plain ones."""
        self.zone = zone
        self._answers.clear()
        for key, reply in precomputed_answers(zone, forwarding=bool(self.forward)):
            self._answers[key] = reply

    # --- UDP --------------------------------------------------------------------------------------

    def _drain_udp(self) -> None:
        sock = self._udp
        assert sock is not None
        get = self._answers.get
        recvfrom, sendto = sock.recvfrom, sock.sendto
        queries = hits = 0
        try:
            for _ in range(_DRAIN_BATCH):
                try:
                    data, client = recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    logger.debug("dns receive error: %s", exc)
                    return
                queries += 1
                cached = get(data[2:])
                if cached is not None:  # the hot path: a dictionary lookup and an ID patch
                    hits += 1
                    try:
                        sendto(data[:2] + cached, client)
                    except OSError:
                        self.stats.dropped["send-failed"] += 1
                    continue
                try:
                    reply = self.respond(data, udp=True, reply_to=client)
                    if isinstance(reply, bytes):
                        sendto(reply, client)
                except OSError:
                    self.stats.dropped["send-failed"] += 1
                except Exception:  # our bug: logged with its traceback, counted; the next query is answered
                    self.stats.internal_errors += 1
                    logger.exception("dns: internal error on a query from %s", client)
        finally:
            self.stats.queries += queries
            self.stats.cache_hits += hits

    # --- the slow path: parse, answer, remember ---------------------------------------------------

    def respond(self, data: bytes, *, udp: bool, reply_to: object) -> bytes | object | None:
        """The wire reply to `data`; None when dropped; LATER when forwarded (delivered to `reply_to`)."""
        data = bytes(data)
        if len(data) < 12:
            self.stats.dropped["short"] += 1
            return None
        if data[2] & 0x80:  # QR set: a response, never answer it (no reflection loops)
            self.stats.dropped["response"] += 1
            return None
        try:
            query = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, struct.error, UnicodeDecodeError) as exc:
            self.stats.dropped["malformed"] += 1
            logger.debug("dns: malformed query: %s", exc)
            return self._formerr(data)
        if query.header.opcode != 0:
            return self._finish(data, refused(query, RCODE.NOTIMP), query, udp, remember=False)
        if len(query.questions) != 1:
            return self._finish(data, refused(query, RCODE.FORMERR), query, udp, remember=False)
        result = answer(self.zone, query, forwarding=bool(self.forward))
        if result is Forward.UPSTREAM:
            return self._forward(query, reply_to)
        return self._finish(data, result, query, udp, remember=True)

    def _finish(self, data: bytes, reply: DNSRecord, query: DNSRecord, udp: bool, *, remember: bool) -> bytes:
        edns = next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)
        if edns is not None:
            reply.add_ar(EDNS0(udp_len=EDNS_SIZE))
        wire = bytes(reply.pack())
        if udp:
            limit = max(UDP_DEFAULT, min(edns.rclass, UDP_MAX)) if edns is not None else UDP_DEFAULT
            if len(wire) > limit:
                self.stats.truncated += 1
                short = reply.truncate()
                if edns is not None:
                    short.add_ar(EDNS0(udp_len=EDNS_SIZE))
                wire = bytes(short.pack())
        self.stats.answered[RCODE.get(reply.header.rcode)] += 1
        if remember and udp:
            if len(self._answers) >= CACHE_ENTRIES:
                self._answers.popitem(last=False)
            self._answers[data[2:]] = wire[2:]
        return wire

    def _formerr(self, data: bytes) -> bytes:
        """FORMERR with the query's ID and no sections (we could not read the question)."""
        flags = 0x8000 | (data[2] & 0x79) << 8 | RCODE.FORMERR
        self.stats.answered["FORMERR"] += 1
        return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)

    # --- TCP --------------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), IDLE_SECONDS))[0]
                    data = await asyncio.wait_for(reader.readexactly(length), IDLE_SECONDS)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return  # closed, idle or too slow: end the connection
                self.stats.queries += 1
                try:
                    reply_box: asyncio.Queue[bytes] = asyncio.Queue(1)
                    reply = self.respond(data, udp=False, reply_to=reply_box)
                    if reply is LATER:
                        reply = await asyncio.wait_for(reply_box.get(), FORWARD_TIMEOUT + 1)
                except TimeoutError:
                    reply = None
                except Exception:
                    self.stats.internal_errors += 1
                    logger.exception("dns: internal error on a TCP query from %s", peer)
                    return
                if not isinstance(reply, bytes):
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        finally:
            self._connections.discard(task)
            writer.close()

    # --- forwarding -------------------------------------------------------------------------------

    def _forward(self, query: DNSRecord, reply_to: object) -> bytes | object:
        question = query.q
        key = (str(question.qname).lower(), question.qtype, question.qclass)
        cached = self._upstream_cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            reply = DNSRecord.parse(cached[1].pack())
            reply.header.id = query.header.id
            reply.questions = [question]  # echoed as asked
            return bytes(reply.pack())
        if self._upstream is None or len(self._pending) > 10_000:
            return bytes(refused(query, RCODE.SERVFAIL).pack())
        upstream_id = random.getrandbits(16)
        while upstream_id in self._pending:
            upstream_id = random.getrandbits(16)
        outgoing = DNSRecord(q=question)
        outgoing.header.id, outgoing.header.rd = upstream_id, 1
        self._pending[upstream_id] = _Pending(reply_to, query, time.monotonic() + FORWARD_TIMEOUT)
        self.stats.forwarded += 1
        try:
            self._upstream.sendto(outgoing.pack(), self.forward[0])
        except OSError as exc:
            del self._pending[upstream_id]
            logger.warning("dns: cannot reach the upstream %s: %s", self.forward[0], exc)
            return bytes(refused(query, RCODE.SERVFAIL).pack())
        return LATER

    def _drain_upstream(self) -> None:
        assert self._upstream is not None
        for _ in range(_DRAIN_BATCH):
            try:
                data, source = self._upstream.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if source not in self.forward:
                continue
            try:
                response = DNSRecord.parse(data)
            except (DNSError, ValueError, IndexError, struct.error, UnicodeDecodeError):
                continue
            pending = self._pending.pop(response.header.id, None)
            if pending is None:
                continue
            question = pending.query.q
            ttls = [rr.ttl for rr in response.rr] or [60]
            self._upstream_cache[(str(question.qname).lower(), question.qtype, question.qclass)] = (
                time.monotonic() + min(ttls), response)
            if len(self._upstream_cache) > CACHE_ENTRIES:
                self._upstream_cache.clear()
            response.header.id = pending.query.header.id
            response.header.ra = 1
            response.header.aa = 0
            response.questions = [question]
            self._deliver(pending, bytes(response.pack()))

    def _deliver(self, pending: _Pending, wire: bytes) -> None:
        if isinstance(pending.reply_to, asyncio.Queue):
            pending.reply_to.put_nowait(wire)
        elif self._udp is not None:
            if len(wire) > UDP_DEFAULT:
                wire = bytes(DNSRecord.parse(wire).truncate().pack())
            try:
                self._udp.sendto(wire, pending.reply_to)
            except OSError:
                self.stats.dropped["send-failed"] += 1

    def _sweep(self) -> None:
        now = time.monotonic()
        for upstream_id, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[upstream_id]
                self._deliver(pending, bytes(refused(pending.query, RCODE.SERVFAIL).pack()))
        assert self._loop is not None
        self._sweeper = self._loop.call_later(1.0, self._sweep)


def precomputed_answers(zone: Zone, *, forwarding: bool) -> Iterable[tuple[bytes, bytes]]:
    """(query bytes after the ID, reply bytes after the ID) for plain queries (RD on or off, no EDNS, the
    name in lower case) of every name and type in the zone, NXDOMAIN-free: misses are learned as they come."""
    for name, types in zone.records.items():
        for qtype in types:
            for rd in (1, 0):
                query = DNSRecord.question(name + ".", QTYPE.get(qtype))
                query.header.rd = rd
                reply = answer(zone, query, forwarding=forwarding)
                if isinstance(reply, DNSRecord):
                    wire = reply.pack()
                    if len(wire) <= UDP_DEFAULT:
                        yield bytes(query.pack()[2:]), bytes(wire[2:])
