"""The DNS transport: UDP and TCP on port 53, answers from the zone, forwarding when configured.

Hot path (research/bench.md §3): the reply to a query depends only on the bytes after its ID (flags,
question as asked, EDNS), so answers are kept by those bytes and a repeated query costs a dictionary
lookup and an ID patch. The zone's answers for plain queries are put there when the zone is built; any
other query is parsed with dnslib (a codec only: its server is threaded), answered, and remembered.
UDP uses a drain reader, not a DatagramProtocol (2-4x cheaper per packet), reading and answering in
batches of up to 64 (recvmmsg/sendmmsg: batch.py) where Linux has them. Nothing on the path logs or
publishes: counters only.

TCP (RFC 7766): length-prefixed messages, several per connection, each connection its own task, so a slow
client stalls nothing else. Bounded (issue 13, finding 4): at most `max_tcp_connections` at once, and a new
one beyond that closes the least recently active one (so a fresh client is always answered); a connection
idle for `tcp_idle_timeout` is closed; per connection at most PIPELINE_LIMIT forwarded queries in flight,
and nothing more is read while the client does not read its answers (the read buffer is TCP_READ_LIMIT
bytes, writes wait for the transport's high-water mark).

Forwarding (names outside the zones, `dns.forward`; issue 13, finding 2): every upstream query goes out on
a new connected UDP socket (an OS-chosen source port; the kernel drops datagrams from any other address),
with an ID from `secrets`; forward.py decides which answer to believe and how long to keep it. Upstreams
are asked in turn (the last one that answered well first) on timeout, SERVFAIL or REFUSED; at most
MAX_UPSTREAM_QUERIES questions are out at once, each asked once however many clients wait for it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import socket
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from dnslib import EDNS0, QTYPE, RCODE, DNSError, DNSQuestion, DNSRecord

from appliance.dns.batch import BATCH, UdpBatch
from appliance.dns.forward import (AnswerCache, Question, Rejected, attempt_order, cap_ttls, check_response,
                                   try_next, upstream_query)
from appliance.dns.zone import Forward, Zone, answer, refused

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 20_000
IDLE_SECONDS = 10.0  # a TCP connection with no complete query for this long is closed (BIND: 30 s, unbound: 2 min)
MAX_TCP_CONNECTIONS = 256  # then the least recently active one is closed for each new one (BIND's tcp-clients: 150)
PIPELINE_LIMIT = 16  # forwarded queries in flight per TCP connection; then its next query is not read yet
TCP_READ_LIMIT = 32 * 1024  # asyncio pauses reading a connection past twice this (a 64 KiB message still fits)
UDP_DEFAULT = 512  # RFC 1035; EDNS0 raises it
UDP_MAX = 4096  # the most we answer over UDP even when a client offers more
EDNS_SIZE = 1232  # what we advertise (DNS flag day 2020)
ATTEMPT_SECONDS = 2.0  # each upstream gets this long to answer before the next is asked
MAX_UPSTREAM_QUERIES = 256  # questions out at once (one socket each); beyond, SERVFAIL at once
MAX_WAITING = 4096  # clients waiting for upstream answers, all questions together
_DRAIN_BATCH = 64
EPHEMERAL_TRIES = 16  # port 0: UDP ports tried until TCP can have the same one
_BATCHES = 4  # recvmmsg calls per wakeup at most while they come back full (then the loop serves the rest)


@dataclass(slots=True)
class DnsStats:
    queries: int = 0
    cache_hits: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # by rcode
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    forwarded: int = 0  # questions sent upstream (a cached or already pending question is not counted)
    forward_cache_hits: int = 0
    forward_busy: int = 0  # SERVFAIL at once: MAX_UPSTREAM_QUERIES or MAX_WAITING reached
    upstream_queries: int = 0  # datagrams sent upstream (one per attempt)
    upstream_failed: Counter[str] = field(default_factory=Counter)  # timeout, unreachable, SERVFAIL, REFUSED...
    upstream_rejected: Counter[str] = field(default_factory=Counter)  # wrong-id, wrong-question... (forward.py)
    tcp_connections: int = 0  # open now
    tcp_evicted: int = 0  # closed to make room for a new connection
    tcp_pipeline_peak: int = 0  # the most forwarded queries in flight on one connection so far
    internal_errors: int = 0

    def as_json(self) -> dict[str, object]:
        return {"queries": self.queries, "cache_hits": self.cache_hits, "answered": dict(self.answered),
                "dropped": dict(self.dropped), "truncated": self.truncated, "forwarded": self.forwarded,
                "forward_cache_hits": self.forward_cache_hits, "forward_busy": self.forward_busy,
                "upstream_queries": self.upstream_queries, "upstream_failed": dict(self.upstream_failed),
                "upstream_rejected": dict(self.upstream_rejected), "tcp_connections": self.tcp_connections,
                "tcp_evicted": self.tcp_evicted, "tcp_pipeline_peak": self.tcp_pipeline_peak,
                "internal_errors": self.internal_errors}


LATER = object()  # `respond`'s answer for a forwarded query: the reply comes when upstream answers

ReplyTo = tuple | asyncio.Future  # a UDP client's address, or the future a TCP connection waits on


@dataclass(slots=True)
class Waiter:
    """A client waiting for an upstream answer."""

    query: DNSRecord  # as the client sent it: its ID, RD, question as asked and EDNS shape the reply
    udp: bool
    reply_to: ReplyTo


class DnsServer:
    def __init__(self, *, zone: Zone, address: str = "", port: int = 53,
                 forward: tuple[tuple[str, int], ...] = (), max_tcp_connections: int = MAX_TCP_CONNECTIONS,
                 tcp_idle_timeout: float = IDLE_SECONDS, attempt_timeout: float = ATTEMPT_SECONDS,
                 max_upstream_queries: int = MAX_UPSTREAM_QUERIES, stats: DnsStats | None = None) -> None:
        self.address, self.port = address, port
        self.forward = forward
        self.max_tcp_connections, self.tcp_idle_timeout = max_tcp_connections, tcp_idle_timeout
        self.attempt_timeout, self.max_upstream_queries = attempt_timeout, max_upstream_queries
        self.stats = stats if stats is not None else DnsStats()  # a server bound again at reload keeps counting
        self.zone = zone
        self._answers: OrderedDict[bytes, bytes] = OrderedDict()  # query bytes after the ID -> reply after the ID
        self._udp: socket.socket | None = None
        self._batch: UdpBatch | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._forwarder: Forwarder | None = None
        # open TCP connections, least recently active first: the one to close when a new one needs room
        self._tcp_clients: OrderedDict[asyncio.Task[None], asyncio.StreamWriter] = OrderedDict()
        self._tcp_tasks: set[asyncio.Task[None]] = set()  # every connection's task until it ends
        self.update(zone)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Port 0 (tests, a second instance): the port the kernel gives UDP is then asked of TCP, where another
        # socket may hold it already; another free UDP port is tried then, never a port that was configured.
        tries = EPHEMERAL_TRIES if self.port == 0 else 1
        for attempt in range(tries):
            udp = self._bind_udp()
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.address or None, udp.getsockname()[1],
                                                       reuse_address=True, limit=TCP_READ_LIMIT)
            except OSError as exc:
                udp.close()
                if exc.errno == errno.EADDRINUSE and attempt + 1 < tries:
                    continue
                raise
            break
        self._udp = udp
        self._batch = UdpBatch.open(udp)
        self.port = udp.getsockname()[1]
        self._loop.add_reader(udp.fileno(), self._drain_udp)
        if self.forward:
            self._forwarder = Forwarder(self.forward, loop=self._loop, stats=self.stats, deliver=self._deliver,
                                        attempt_timeout=self.attempt_timeout, max_queries=self.max_upstream_queries)

    def _bind_udp(self) -> socket.socket:
        udp = socket.socket(socket.AF_INET6 if ":" in self.address else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            udp.bind((self.address, self.port))
            udp.setblocking(False)
        except OSError:
            udp.close()
            raise
        return udp

    async def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()  # no new connections
        if self._forwarder is not None:
            self._forwarder.close()  # clients still waiting get SERVFAIL
        for writer in self._tcp_clients.values():
            writer.transport.abort()  # each connection's task then ends by itself (cancelling one trips
            # Python 3.11's StreamReaderProtocol, which logs the CancelledError as an error)
        if self._tcp_tasks:
            await asyncio.wait(self._tcp_tasks)
        if self._udp is not None and self._loop is not None:
            self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
        if self._tcp is not None:
            await self._tcp.wait_closed()

    def update(self, zone: Zone) -> None:
        """A new zone (reload, a new DHCP lease): forget every remembered answer, precompute the plain ones."""
        self.zone = zone
        self._answers.clear()
        for key, reply in precomputed_answers(zone, forwarding=bool(self.forward)):
            self._answers[key] = reply

    # --- UDP --------------------------------------------------------------------------------------

    def _drain_udp(self) -> None:
        if self._batch is not None:
            self._drain_batches(self._batch)
            return
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

    def _drain_batches(self, batch: UdpBatch) -> None:
        queries = hits = 0
        try:
            for _ in range(_BATCHES):
                try:
                    read, answered = batch.serve(self._answers, self._answer_missed)
                except OSError as exc:
                    logger.debug("dns receive error: %s", exc)
                    return
                queries += read
                hits += answered
                if read < BATCH:
                    return
        finally:
            self.stats.queries += queries
            self.stats.cache_hits += hits

    def _answer_missed(self, data: bytes, client: tuple) -> None:
        """A query the answer cache does not hold, from a batch: answered (and remembered) one by one."""
        assert self._udp is not None
        try:
            reply = self.respond(data, udp=True, reply_to=client)
            if isinstance(reply, bytes):
                self._udp.sendto(reply, client)
        except OSError:
            self.stats.dropped["send-failed"] += 1
        except Exception:  # our bug: logged with its traceback, counted; the next query is answered
            self.stats.internal_errors += 1
            logger.exception("dns: internal error on a query from %s", client)

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
            return self._forward(query, udp, reply_to)
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
        assert task is not None and self._loop is not None
        self._tcp_tasks.add(task)
        self._admit(task, writer)
        peer = writer.get_extra_info("peername")
        in_flight: set[asyncio.Future[bytes]] = set()  # forwarded queries of this connection, answered out of order
        idle = self.tcp_idle_timeout
        try:
            while True:
                if len(in_flight) >= PIPELINE_LIMIT:  # read no more until one is answered (the forwarder ends each)
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    await asyncio.wait_for(writer.drain(), idle)  # a client that does not read is not read either
                    length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), idle))[0]
                    data = await asyncio.wait_for(reader.readexactly(length), idle)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break  # closed, idle or too slow: end the connection once the answers due are sent
                self._touch(task)
                self.stats.queries += 1
                reply_box: asyncio.Future[bytes] = self._loop.create_future()
                try:
                    reply = self.respond(data, udp=False, reply_to=reply_box)
                except Exception:
                    self.stats.internal_errors += 1
                    logger.exception("dns: internal error on a TCP query from %s", peer)
                    return
                if reply is LATER:
                    in_flight.add(reply_box)
                    self.stats.tcp_pipeline_peak = max(self.stats.tcp_pipeline_peak, len(in_flight))
                    reply_box.add_done_callback(partial(self._write_later, task, writer, in_flight))
                elif isinstance(reply, bytes):
                    writer.write(struct.pack("!H", len(reply)) + reply)
            if in_flight:  # a client may half-close after its queries: it still gets their answers
                await asyncio.wait(in_flight)
                await asyncio.wait_for(writer.drain(), idle)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            for box in in_flight:
                box.cancel()
            if self._tcp_clients.pop(task, None) is not None:
                self.stats.tcp_connections -= 1
            writer.close()
            self._tcp_tasks.discard(task)

    def _admit(self, task: asyncio.Task[None], writer: asyncio.StreamWriter) -> None:
        """Room for a new connection: beyond the cap, the least recently active one is closed at once."""
        while len(self._tcp_clients) >= self.max_tcp_connections:
            idlest, idlest_writer = self._tcp_clients.popitem(last=False)
            self.stats.tcp_connections -= 1
            self.stats.tcp_evicted += 1
            idlest_writer.transport.abort()  # its descriptor is released now, not after a flush; its task
            # then reads the end of the stream and ends
        self._tcp_clients[task] = writer
        self.stats.tcp_connections += 1

    def _touch(self, task: asyncio.Task[None]) -> None:
        if task in self._tcp_clients:
            self._tcp_clients.move_to_end(task)

    def _write_later(self, task: asyncio.Task[None], writer: asyncio.StreamWriter,
                     in_flight: set[asyncio.Future[bytes]], reply_box: asyncio.Future[bytes]) -> None:
        in_flight.discard(reply_box)
        if reply_box.cancelled() or writer.is_closing():
            return
        reply = reply_box.result()
        writer.write(struct.pack("!H", len(reply)) + reply)
        self._touch(task)

    # --- forwarding -------------------------------------------------------------------------------

    def _forward(self, query: DNSRecord, udp: bool, reply_to: object) -> bytes | object:
        forwarder = self._forwarder
        if forwarder is None:  # not started (unit tests call respond directly)
            return self._servfail(query, udp)
        kept = forwarder.cache.get(Question.of(query.q), forwarder.now())
        if kept is not None:
            self.stats.forward_cache_hits += 1
            return self._forwarded_reply(query, kept, udp)
        if not forwarder.ask(Waiter(query, udp, reply_to)):
            self.stats.forward_busy += 1
            return self._servfail(query, udp)
        return LATER

    def _forwarded_reply(self, query: DNSRecord, upstream: DNSRecord, udp: bool) -> bytes:
        """An upstream answer (TTLs capped, no OPT) as this client's reply: its ID, its question as asked, RD
        as it sent it, RA set, AA and AD clear (bootd neither owns the name nor validated it)."""
        upstream.header.id, upstream.header.rd = query.header.id, query.header.rd
        upstream.header.ra, upstream.header.aa, upstream.header.ad = 1, 0, 0
        upstream.questions = [query.q]
        return self._finish(b"", upstream, query, udp, remember=False)

    def _servfail(self, query: DNSRecord, udp: bool) -> bytes:
        reply = refused(query, RCODE.SERVFAIL)
        reply.header.ra = 1
        return self._finish(b"", reply, query, udp, remember=False)

    def _deliver(self, waiter: Waiter, upstream_wire: bytes | None) -> None:
        """The upstream answer (None: no upstream answered) to one waiting client."""
        if upstream_wire is None:
            wire = self._servfail(waiter.query, waiter.udp)
        else:
            wire = self._forwarded_reply(waiter.query, DNSRecord.parse(upstream_wire), waiter.udp)
        if isinstance(waiter.reply_to, asyncio.Future):
            if not waiter.reply_to.done():  # done: its connection was closed meanwhile
                waiter.reply_to.set_result(wire)
        elif self._udp is not None:
            try:
                self._udp.sendto(wire, waiter.reply_to)
            except OSError:
                self.stats.dropped["send-failed"] += 1


@dataclass(slots=True, eq=False)
class _Question:
    """One question out to the upstreams, and every client waiting for its answer."""

    question: Question
    asked: DNSQuestion  # as the first client wrote it
    waiters: list[Waiter]
    to_ask: list[int]  # indexes of the upstreams not asked yet, in order
    upstream: int = -1  # the one asked now
    query_id: int = 0
    sock: socket.socket | None = None
    timer: asyncio.TimerHandle | None = None


class Forwarder:
    """Asks the upstreams: a connected UDP socket per attempt, an ID from `secrets`, the next upstream on
    timeout, an unreachable port, SERVFAIL or REFUSED; every callback guarded, so one bug fails one question
    (SERVFAIL to its clients), never the forwarder."""

    def __init__(self, upstreams: tuple[tuple[str, int], ...], *, loop: asyncio.AbstractEventLoop, stats: DnsStats,
                 deliver: Callable[[Waiter, bytes | None], None], attempt_timeout: float = ATTEMPT_SECONDS,
                 max_queries: int = MAX_UPSTREAM_QUERIES, max_waiting: int = MAX_WAITING) -> None:
        self.upstreams = upstreams
        self.loop, self.stats, self.deliver = loop, stats, deliver
        self.attempt_timeout, self.max_queries, self.max_waiting = attempt_timeout, max_queries, max_waiting
        self.cache = AnswerCache()
        self.preferred = 0  # the upstream that last answered well: asked first
        self.waiting = 0
        self._out: dict[Question, _Question] = {}

    def now(self) -> float:
        return self.loop.time()

    def ask(self, waiter: Waiter) -> bool:
        """Start (or join) the question of `waiter`; False when the bounds are reached."""
        question = Question.of(waiter.query.q)
        if self.waiting >= self.max_waiting:
            return False
        out = self._out.get(question)
        if out is None:
            if len(self._out) >= self.max_queries:
                return False
            out = _Question(question, waiter.query.q, [], attempt_order(self.upstreams, self.preferred))
            self._out[question] = out
            self.stats.forwarded += 1
        out.waiters.append(waiter)
        self.waiting += 1
        if len(out.waiters) == 1:
            self._attempt(out)
        return True

    def close(self) -> None:
        for out in list(self._out.values()):
            self._finish(out, None)

    def _attempt(self, out: _Question) -> None:
        """Ask the next upstream, or, when none is left, tell the waiting clients SERVFAIL."""
        while out.to_ask:
            index = out.to_ask.pop(0)
            host, port = self.upstreams[index]
            query_id = secrets.randbits(16)
            try:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            except OSError as exc:  # out of descriptors: this question fails, the next may not
                self.stats.upstream_failed["no-socket"] += 1
                logger.debug("dns: no socket to ask upstream %s: %s", host, exc)
                break
            try:
                sock.setblocking(False)
                sock.connect((host, port))  # binds an OS-chosen port; only this peer's datagrams are received
                sock.send(upstream_query(out.asked, query_id))
            except OSError as exc:
                sock.close()
                self.stats.upstream_failed["unreachable"] += 1
                logger.debug("dns: upstream %s port %d unreachable: %s", host, port, exc)
                continue
            out.upstream, out.query_id, out.sock = index, query_id, sock
            self.stats.upstream_queries += 1
            self.loop.add_reader(sock.fileno(), self._guarded, self._read, out)
            out.timer = self.loop.call_later(self.attempt_timeout, self._guarded, self._timed_out, out)
            return
        self._finish(out, None)

    def _guarded(self, step: Callable[[_Question], None], out: _Question) -> None:
        try:
            step(out)
        except Exception:  # our bug: logged with its traceback; this question fails, the forwarder goes on
            self.stats.internal_errors += 1
            logger.exception("dns: internal error forwarding %s", out.question.name)
            self._finish(out, None)

    def _read(self, out: _Question) -> None:
        for _ in range(_DRAIN_BATCH):
            if out.sock is None:
                return
            try:
                data = out.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable, on a connected socket: nobody listens there
                self.stats.upstream_failed["unreachable"] += 1
                logger.debug("dns: upstream %s unreachable: %s", self.upstreams[out.upstream], exc)
                self._next(out)
                return
            verdict = check_response(data, query_id=out.query_id, asked=out.question)
            if isinstance(verdict, Rejected):
                self.stats.upstream_rejected[verdict.reason] += 1
                logger.debug("dns: dropped an answer from %s for %s: %s", self.upstreams[out.upstream],
                             out.question.name, verdict.reason)
                continue
            if try_next(verdict):
                self.stats.upstream_failed[RCODE.get(verdict.header.rcode)] += 1
                self._next(out)
                return
            self.preferred = out.upstream
            capped = cap_ttls(verdict)
            self.cache.put(out.question, capped, self.now())
            self._finish(out, bytes(capped.pack()))
            return

    def _timed_out(self, out: _Question) -> None:
        out.timer = None
        self.stats.upstream_failed["timeout"] += 1
        self._next(out)

    def _next(self, out: _Question) -> None:
        self._end_attempt(out)
        self._attempt(out)

    def _end_attempt(self, out: _Question) -> None:
        if out.sock is not None:
            self.loop.remove_reader(out.sock.fileno())
            out.sock.close()
            out.sock = None
        if out.timer is not None:
            out.timer.cancel()
            out.timer = None

    def _finish(self, out: _Question, wire: bytes | None) -> None:
        self._end_attempt(out)
        if self._out.get(out.question) is out:
            del self._out[out.question]
        waiters, out.waiters = out.waiters, []
        self.waiting -= len(waiters)
        for waiter in waiters:
            self.deliver(waiter, wire)


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
