"""The TFTP transport: requests on UDP 69, each transfer on a connected socket of its own (its TID, RFC
1350), one sweep timer for every retransmission, events for every start, finish and failure.

Why this shape (research/bench.md §4): asyncio datagram transports and a timer per block measured
1.2-4.7x slower than plain non-blocking sockets with `add_reader` and one periodic sweep. When a send
hits EAGAIN the rest of the window waits for the socket to be writable instead of being dropped.

Per block (issue 16: 64 lock-step transfers at most dnsmasq's CPU): the transfer sockets are in an epoll
set of their own, and only that set's fd is in asyncio's loop. One wakeup serves every transfer whose ACK
came (no asyncio handle, selector key or callback per socket), asks the set again before going back to
the loop (under load more ACKs have come meanwhile), and reads one datagram per ready socket: level-
triggered, a socket with more queued is ready again, so no recv ends in EAGAIN. A block is its 4-byte
header and a slice of the cached file joined in one copy; a lock-step block goes out with one send,
and a window of several goes in one sendmsg with UDP GSO (the kernel cuts it into the DATA datagrams: one
syscall, route lookup and socket lock per window instead of per block; split at 64 segments / 64 KB, per
packet again for good once the kernel or device refuses it).

Limits: at most `max_transfers` at once and `max_per_client` per client IP (others get ERROR 0), a
repeated request from a client port that already has a transfer is ignored (firmware resends its RRQ
before the first answer), writes are refused, names outside the roots are refused and logged.
A packet from another port to a transfer's socket never reaches it: the socket is connected, so the
kernel drops it (RFC 1350 would answer ERROR 5; bootd stays silent).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
import struct
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from appliance.events import EventKind, PeerPublisher
from appliance.tftp.files import FileBlocks, FileRefused, TftpFiles
from appliance.tftp.protocol import (
    WRQ, Accept, ErrorCode, Limits, MalformedPacket, Outcome, ReadTransfer, Refuse, encode_error, negotiate,
    parse_request, to_netascii,
)

logger = logging.getLogger(__name__)

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=I4s4s")
SWEEP_SECONDS = 0.05  # the retransmit clock's resolution; timeouts are whole seconds or more
_DRAIN_BATCH = 64
_READY_MAX = 256  # events taken from the transfers' epoll set at once
_READY_ROUNDS = 4  # times the set is asked again in one wakeup while it has something ready
_IN, _OUT, _ERR = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR | select.EPOLLHUP
# UDP GSO (Linux >= 4.18): one sendmsg carries back-to-back DATA packets that the kernel cuts into datagrams of
# `gso_size` bytes (the last may be shorter). The kernel takes at most 64 segments and one IP packet's worth of
# payload per call, so a longer window goes in several calls.
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65507  # 65535 - 20 (IPv4) - 8 (UDP)


@dataclass(slots=True)
class TftpStats:
    requests: int = 0
    started: int = 0
    completed: int = 0
    failed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    internal_errors: int = 0
    # of the transfers that ended: file bytes the clients acknowledged, DATA packets sent, of them sent again
    bytes_sent: int = 0
    data_packets: int = 0
    retransmitted: int = 0

    def as_json(self) -> dict[str, object]:
        return {"requests": self.requests, "started": self.started, "completed": self.completed,
                "failed": self.failed, "refused": dict(self.refused), "dropped": dict(self.dropped),
                "internal_errors": self.internal_errors, "bytes_sent": self.bytes_sent,
                "data_packets": self.data_packets, "retransmitted": self.retransmitted}


@dataclass(slots=True, eq=False)
class Session:
    client: tuple[str, int]
    filename: str
    sock: socket.socket
    transfer: ReadTransfer
    started: float
    backlog: deque[bytes] = field(default_factory=deque)  # packets waiting for the socket to drain
    writing: bool = False
    # UDP GSO for windows of more than one block: the sendmsg ancillary data, the DATA packet size and how
    # many packets one call may carry; None for lock-step transfers (one packet per send) or without GSO
    gso: list[tuple[int, int, bytes]] | None = None
    gso_size: int = 0
    gso_segments: int = 0


class TftpServer:
    def __init__(self, *, files: TftpFiles, publisher: PeerPublisher, address: str = "", port: int = 69,
                 max_transfers: int = 100, max_per_client: int = 8, retries: int = 5, timeout: float = 1.0,
                 max_blksize: int = 65464, max_windowsize: int = 64, stats: TftpStats | None = None,
                 gso: bool = True) -> None:
        self.files = files
        self.publisher = publisher
        self.address, self.port = address, port
        self.max_transfers, self.max_per_client = max_transfers, max_per_client
        self.retries, self.timeout = retries, timeout
        self.max_blksize, self.max_windowsize = max_blksize, max_windowsize
        self.stats = stats if stats is not None else TftpStats()  # a server bound again at reload keeps counting
        self.sessions: dict[tuple[str, int], Session] = {}
        self._per_client: Counter[str] = Counter()
        self._mtu: dict[int, int] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._ready: select.epoll | None = None  # every transfer socket, by fd in _by_fd
        self._by_fd: dict[int, Session] = {}
        self.gso = gso  # False after the kernel or a device refused it once: per-packet sends from then on

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind((self.address, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._ready = select.epoll()
        self._loop.add_reader(sock.fileno(), self._drain_requests)
        self._loop.add_reader(self._ready.fileno(), self._drain_sessions)
        self._sweeper = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    @property
    def bound_port(self) -> int:
        assert self._sock is not None
        return self._sock.getsockname()[1]

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self.sessions.values()):
            self._close(session)
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._ready is not None and self._loop is not None:
            self._loop.remove_reader(self._ready.fileno())
            self._ready.close()
            self._ready = None

    # --- requests on port 69 ----------------------------------------------------------------------

    def _drain_requests(self) -> None:
        assert self._sock is not None
        for _ in range(_DRAIN_BATCH):
            try:
                data, ancdata, _flags, client = self._sock.recvmsg(1024, socket.CMSG_SPACE(_PKTINFO.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("tftp receive error: %s", exc)
                return
            ifindex, local_ip = 0, self.address or "0.0.0.0"
            for level, kind, info in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(info) >= _PKTINFO.size:
                    ifindex, spec_dst, _ = _PKTINFO.unpack_from(info)
                    local_ip = socket.inet_ntoa(spec_dst)
            try:
                self.handle_request(data, client, ifindex, local_ip)
            except Exception:  # our bug: logged once with its traceback, counted; the next request is served
                self.stats.internal_errors += 1
                logger.exception("tftp: internal error on a request from %s", client)

    def handle_request(self, data: bytes, client: tuple[str, int], ifindex: int, local_ip: str) -> None:
        self.stats.requests += 1
        try:
            request = parse_request(data)
        except MalformedPacket as exc:
            self.stats.dropped[exc.reason] += 1
            logger.debug("tftp: malformed request from %s: %s", client, exc.reason)
            if exc.reason in ("not-a-request", "no-nul-terminator", "bad-fields", "not-ascii"):
                self._send_error(client, ErrorCode.ILLEGAL_OPERATION, f"malformed request ({exc.reason})")
            return
        if client in self.sessions:
            self.stats.dropped["duplicate-request"] += 1  # the client resent its RRQ: the transfer is under way
            return
        if self._per_client[client[0]] >= self.max_per_client or not self._make_room():
            self._refuse(client, request.filename, Refuse(ErrorCode.NOT_DEFINED, "server busy, try again", "busy"))
            return
        try:
            content = self.files.read(request.filename)
        except FileRefused as exc:
            logger.warning("tftp: %s asked for %r: refused: %s", client[0], request.filename[:200], exc)
            self._refuse(client, request.filename, Refuse(ErrorCode.ACCESS_VIOLATION, "access violation", "refused-path"))
            return
        if content is None and request.opcode != WRQ:  # a write is refused by negotiate, whatever the name
            self._refuse(client, request.filename, Refuse(ErrorCode.FILE_NOT_FOUND, "file not found", "not-found"))
            return
        if isinstance(content, FileBlocks) and request.mode == "netascii":
            content.close()
            self._refuse(client, request.filename, Refuse(ErrorCode.ILLEGAL_OPERATION, "netascii is served for "
                                                          "files up to 8 MiB only", "bad-mode"))
            return
        if request.mode == "netascii" and isinstance(content, bytes):
            content = to_netascii(content)
        decision = negotiate(request, len(content or b""), Limits(
            max_blksize=min(self.max_blksize, self._mtu_of(ifindex) - 32),  # RFC 2348 + no IP fragments
            max_windowsize=self.max_windowsize, default_timeout=self.timeout))
        if isinstance(decision, Refuse):
            if isinstance(content, FileBlocks):
                content.close()
            self._refuse(client, request.filename, decision)
            return
        assert content is not None
        self._begin(client, request.filename, content, decision, local_ip)

    def _make_room(self) -> bool:
        """Whether a new transfer fits; when every slot is taken, the oldest transfer whose client has not
        answered within its first timeout gives its slot up. A spoofed source never answers, so requests
        from spoofed sources cannot hold the server full against clients that are really there; a real
        client answers within a round trip, far inside the first timeout, and is never pushed out."""
        if len(self.sessions) < self.max_transfers:
            return True
        assert self._loop is not None
        now = self._loop.time()
        silent = [session for session in self.sessions.values()
                  if not session.transfer.heard and now - session.started >= session.transfer.timeout]
        if not silent:
            return False
        oldest = min(silent, key=lambda session: session.started)
        oldest.transfer.evict("the server was full and the client had not answered since its request")
        self._finish(oldest)
        return True

    def _begin(self, client: tuple[str, int], filename: str, content: bytes | FileBlocks, accept: Accept,
               local_ip: str) -> None:
        assert self._loop is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((local_ip if local_ip != "0.0.0.0" else "", 0))  # a new TID, on the address asked
            sock.connect(client)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if isinstance(content, FileBlocks):
                content.close()
            self.stats.failed += 1
            logger.warning("tftp: cannot open a transfer socket for %s: %s", client, exc)
            return
        now = self._loop.time()
        session = Session(client, filename, sock, ReadTransfer(content, accept, retries=self.retries), now)
        size = 4 + accept.blksize
        segments = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // size)
        if self.gso and accept.windowsize > 1 and segments > 1:
            session.gso = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
            session.gso_size, session.gso_segments = size, segments
        self.sessions[client] = session
        self._per_client[client[0]] += 1
        self.stats.started += 1
        assert self._ready is not None
        self._ready.register(sock.fileno(), _IN)
        self._by_fd[sock.fileno()] = session
        self._send(session, session.transfer.start(now))
        options = f", options {dict(accept.oack)}" if accept.oack else ""
        self.publisher.publish(client[0], None, kind=EventKind.TFTP,
                               detail=f"start {filename} ({len(content)} bytes, blksize {accept.blksize}, "
                                      f"windowsize {accept.windowsize}{options})")

    # --- transfers --------------------------------------------------------------------------------

    def _drain_sessions(self) -> None:
        """Every transfer with something to read (or room to write, after an EAGAIN): see the docstring."""
        assert self._loop is not None and self._ready is not None
        poll, by_fd, serve = self._ready.poll, self._by_fd, self._serve_one
        for _ in range(_READY_ROUNDS):
            events = poll(0, _READY_MAX)
            if not events:
                return
            now = self._loop.time()
            for fd, mask in events:
                session = by_fd.get(fd)
                if session is None:  # finished earlier in this batch
                    continue
                if mask == _IN:  # the common case (an ACK) first
                    serve(session, now)
                    continue
                if mask & _OUT:
                    self._writable(session)
                if mask & (_IN | _ERR):
                    self._serve_one(session, now)

    def _serve_one(self, session: Session, now: float) -> None:
        """One datagram from the client (an ACK, mostly) and what the transfer sends for it."""
        transfer = session.transfer
        try:
            try:
                data = session.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable: the client went away
                transfer.peer_gone(exc.strerror or str(exc))
            else:
                packets = transfer.receive(data, now)
                if packets:
                    self._send(session, packets)
        except Exception:
            self.stats.internal_errors += 1
            logger.exception("tftp: internal error in the transfer to %s", session.client)
            transfer.outcome = Outcome.ABORTED
        if transfer.outcome is not Outcome.RUNNING:
            self._finish(session)

    def _sweep(self) -> None:
        assert self._loop is not None
        # One timer drives every retransmission: it must outlive any bug in one transfer's handling.
        self._sweeper = self._loop.call_later(SWEEP_SECONDS, self._sweep)
        now = self._loop.time()
        for session in list(self.sessions.values()):
            transfer = session.transfer
            if transfer.deadline is not None and transfer.deadline <= now:
                try:
                    self._send(session, transfer.on_timeout(now))
                except Exception:
                    self.stats.internal_errors += 1
                    logger.exception("tftp: internal error retransmitting to %s", session.client)
                    transfer.outcome = Outcome.ABORTED
                if transfer.outcome is not Outcome.RUNNING:
                    self._finish(session)

    def _send(self, session: Session, packets: list[bytes]) -> None:
        if session.backlog:  # still waiting for room: these go after what waits
            session.backlog.extend(packets)
            return
        start = 0
        if session.gso is not None and len(packets) > 1 and self.gso:
            start = self._send_gso(session, packets)
            if start >= len(packets):
                return
        send = session.sock.send
        for i in range(start, len(packets)):
            packet = packets[i]
            try:
                send(packet)
            except (BlockingIOError, InterruptedError):
                session.backlog.extend(packets[i:])
                self._wait_writable(session)
                return
            except OSError as exc:
                self._send_failed(session, exc)
                return

    def _send_gso(self, session: Session, packets: list[bytes]) -> int:
        """Sends `packets` (whole DATA packets of `gso_size` bytes, the last maybe shorter: a window) in as
        few calls as the kernel takes; returns how many went out, or len(packets) when the rest waits in the
        backlog or the transfer failed. When the kernel or the device refuses GSO (EIO: no checksum offload,
        EINVAL: no such option, a path MTU below the segment), the server sends per packet from then on."""
        if len(packets[0]) != session.gso_size:  # not a window of blocks (cannot happen: a guard)
            return 0
        sendmsg, gso, step = session.sock.sendmsg, session.gso, session.gso_segments
        count = len(packets)
        for i in range(0, count, step):
            chunk = packets[i : i + step]
            try:
                sendmsg([b"".join(chunk)] if len(chunk) > 1 else chunk, gso)
            except (BlockingIOError, InterruptedError):
                session.backlog.extend(packets[i:])
                self._wait_writable(session)
                return count
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self.gso = False
                    logger.info("tftp: UDP segmentation offload refused (%s): one send per packet from now on",
                                exc.strerror or exc)
                    return i
                self._send_failed(session, exc)
                return count
        return count

    def _flush(self, session: Session) -> None:
        backlog, sock = session.backlog, session.sock
        while backlog:
            try:
                sock.send(backlog[0])
            except (BlockingIOError, InterruptedError):
                self._wait_writable(session)
                return
            except OSError as exc:
                self._send_failed(session, exc)
                return
            backlog.popleft()

    def _send_failed(self, session: Session, exc: OSError) -> None:
        session.backlog.clear()
        session.transfer.outcome = Outcome.ABORTED
        session.transfer.error = exc.strerror or str(exc)

    def _wait_writable(self, session: Session) -> None:
        if not session.writing and self._ready is not None:
            session.writing = True
            self._ready.modify(session.sock.fileno(), _IN | _OUT)

    def _writable(self, session: Session) -> None:
        if session.writing and self._ready is not None:
            self._ready.modify(session.sock.fileno(), _IN)
            session.writing = False
        self._flush(session)
        if session.transfer.outcome is not Outcome.RUNNING:
            self._finish(session)

    def _finish(self, session: Session) -> None:
        if self.sessions.get(session.client) is not session:
            return
        transfer = session.transfer
        seconds = (self._loop.time() if self._loop else 0.0) - session.started
        stats = transfer.stats
        self.stats.bytes_sent += len(transfer.content) if transfer.outcome is Outcome.DONE else transfer.bytes_sent
        self.stats.data_packets += stats.data_sent
        self.stats.retransmitted += stats.retransmitted
        figures = (f"blksize {transfer.blksize}, windowsize {transfer.windowsize}, {stats.data_sent} DATA, "
                   f"{stats.retransmitted} retransmitted")
        if transfer.outcome is Outcome.DONE:
            self.stats.completed += 1
            missing = " (the last ACK never came)" if transfer.last_ack_missing else ""
            detail, ok = f"sent {session.filename}: {len(transfer.content)} bytes in {seconds:.2f} s, {figures}{missing}", True
        elif transfer.outcome in (Outcome.ABORTED, Outcome.REFUSED) and transfer.acked == 0:
            # OVMF asks for tsize, reads the OACK, then answers ERROR 8 and asks again: a normal end.
            self.stats.completed += 1
            detail, ok = f"{session.filename}: ended by the client after the first answer ({transfer.error})", True
        else:
            self.stats.failed += 1
            why = {Outcome.TIMED_OUT: f"no answer after {self.retries} retries",
                   Outcome.REFUSED: f"the client refused the options ({transfer.error})",
                   Outcome.ABORTED: f"aborted by the client ({transfer.error})",
                   Outcome.EVICTED: f"dropped: {transfer.error}"}.get(transfer.outcome, "failed")
            detail, ok = (f"{session.filename}: {why}; {transfer.acked} of {transfer.blocks} blocks acknowledged "
                          f"({transfer.bytes_sent} bytes), {figures}"), False
        self._close(session)
        step_of = self.files.step_of  # GRUB's kernel and initrd are those steps of the machine's boot
        kind = step_of(session.filename, session.client[0]) if step_of is not None else EventKind.TFTP
        self.publisher.publish(session.client[0], None, kind=kind, detail=detail, ok=ok)

    def _close(self, session: Session) -> None:
        if self.sessions.pop(session.client, None) is None:
            return
        self._per_client[session.client[0]] -= 1
        if self._per_client[session.client[0]] <= 0:
            del self._per_client[session.client[0]]
        fd = session.sock.fileno()
        if self._by_fd.get(fd) is session:
            del self._by_fd[fd]
            if self._ready is not None:
                self._ready.unregister(fd)
        session.sock.close()
        if isinstance(session.transfer.content, FileBlocks):
            session.transfer.content.close()

    # --- helpers ----------------------------------------------------------------------------------

    def _refuse(self, client: tuple[str, int], filename: str, refusal: Refuse) -> None:
        self.stats.refused[refusal.reason] += 1
        self._send_error(client, refusal.code, refusal.message)
        if refusal.reason != "busy":
            self.publisher.publish(client[0], None, kind=EventKind.TFTP, ok=False,
                                   detail=f"refused {filename[:200]!r}: {refusal.message}")

    def _send_error(self, client: tuple[str, int], code: ErrorCode, message: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(encode_error(code, message), client)
        except OSError as exc:
            logger.debug("tftp: cannot send an error to %s: %s", client, exc)

    def _mtu_of(self, ifindex: int) -> int:
        mtu = self._mtu.get(ifindex)
        if mtu is None:
            try:
                name = socket.if_indextoname(ifindex)
                mtu = int(Path(f"/sys/class/net/{name}/mtu").read_text())
            except (OSError, ValueError):
                mtu = 1500  # unknown interface: assume Ethernet
            self._mtu[ifindex] = mtu
        return mtu
