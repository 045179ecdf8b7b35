"""TFTP (RFC 1350) with options (RFC 2347 OACK, 2348 blksize, 2349 timeout and tsize, 7440 windowsize):
packets, option negotiation and one read transfer, as pure code. Time is an argument; nothing here reads a
clock or a socket.

Invariants:
- `parse_request` raises `MalformedPacket(reason)` for bytes that are not a request we can read; every
  other outcome of negotiation is a value: `Accept` or `Refuse(error code, message)`.
- The OACK names only options the client asked for (RFC 2347), with a value the client can take: blksize
  and windowsize no larger than asked, timeout and tsize as asked/known.
- A transfer retransmits only when its timer fires, never because of a duplicate ACK (RFC 1123 §4.2.3.1,
  the Sorcerer's Apprentice); an ACK for a block not sent yet is ignored and counted.
- Block numbers are 16-bit and wrap to 0 after 65535, as dnsmasq, tftpy and iPXE do.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Protocol
from dataclasses import dataclass, field
from enum import IntEnum

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
MAX_REQUEST = 512  # RFC 2347: a request with options still fits in 512 octets
BLKSIZE_MIN, BLKSIZE_MAX = 8, 65464  # RFC 2348
TIMEOUT_MIN, TIMEOUT_MAX = 1, 255  # RFC 2349
WINDOWSIZE_MIN, WINDOWSIZE_MAX = 1, 65535  # RFC 7440
DEFAULT_BLKSIZE = 512
_HEADER = struct.Struct("!HH")


class ErrorCode(IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8  # RFC 2347


class MalformedPacket(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    opcode: int  # RRQ or WRQ
    filename: str
    mode: str  # lower-case: octet, netascii (mail is refused)
    options: Mapping[str, str] = field(default_factory=dict)  # option names lower-cased, in request order


def parse_request(data: bytes) -> Request:
    if len(data) < 4:
        raise MalformedPacket("short")
    if len(data) > MAX_REQUEST:
        raise MalformedPacket("request-too-long")
    opcode = int.from_bytes(data[:2], "big")
    if opcode not in (RRQ, WRQ):
        raise MalformedPacket("not-a-request")
    if not data.endswith(b"\0"):
        raise MalformedPacket("no-nul-terminator")
    fields = data[2:-1].split(b"\0")
    if len(fields) < 2 or len(fields) % 2:
        raise MalformedPacket("bad-fields")
    try:
        filename = fields[0].decode("ascii")
        mode = fields[1].decode("ascii").lower()
        texts = [f.decode("ascii") for f in fields[2:]]
    except UnicodeDecodeError:
        raise MalformedPacket("not-ascii") from None
    options: dict[str, str] = {}
    for name, value in zip(texts[0::2], texts[1::2]):
        options.setdefault(name.lower(), value)  # a repeated option: the first wins
    return Request(opcode=opcode, filename=filename, mode=mode, options=options)


def encode_data(block: int, payload: bytes | memoryview) -> bytes:
    return _HEADER.pack(DATA, block & 0xFFFF) + bytes(payload)


def data_header(block: int) -> bytes:
    return _HEADER.pack(DATA, block & 0xFFFF)


def encode_ack(block: int) -> bytes:
    return _HEADER.pack(ACK, block & 0xFFFF)


def encode_error(code: ErrorCode, message: str) -> bytes:
    return _HEADER.pack(ERROR, code) + message.encode("ascii", "replace")[:200] + b"\0"


def encode_oack(options: Mapping[str, str]) -> bytes:
    return struct.pack("!H", OACK) + b"".join(f"{k}\0{v}\0".encode("ascii") for k, v in options.items())


def encode_request(opcode: int, filename: str, mode: str = "octet", options: Mapping[str, str] | None = None) -> bytes:
    body = f"{filename}\0{mode}\0" + "".join(f"{k}\0{v}\0" for k, v in (options or {}).items())
    return struct.pack("!H", opcode) + body.encode("ascii")


def printable(text: bytes, limit: int = 100) -> str:
    """A client's error message as the log may show it: ASCII letters, digits, punctuation and spaces only
    (a newline in it would forge a log line), at most `limit` characters."""
    return "".join(chr(b) if 32 <= b < 127 else "?" for b in text[:limit])


def parse_reply(data: bytes) -> tuple[int, int, bytes]:
    """(opcode, block or error code, payload) of a DATA, ACK, ERROR or OACK packet."""
    if len(data) < 2:
        raise MalformedPacket("short")
    opcode = int.from_bytes(data[:2], "big")
    if opcode == OACK:
        return opcode, 0, data[2:]
    if len(data) < 4 or opcode not in (DATA, ACK, ERROR):
        raise MalformedPacket("bad-opcode" if len(data) >= 4 else "short")
    return opcode, int.from_bytes(data[2:4], "big"), data[4:]


# --- negotiation ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What the server allows; `max_blksize` comes from the path MTU of the ingress interface."""

    max_blksize: int = 1468
    max_windowsize: int = 64
    default_timeout: float = 1.0
    # A client may ask for up to 255 s (RFC 2349); with the retries and backoff that holds a transfer slot for
    # 25 minutes, so ~100 spoofed requests would fill the server. Larger requests are left out of the OACK
    # (RFC 2347 lets a server ignore an option) and the default applies.
    max_timeout: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    blksize: int
    windowsize: int
    timeout: float
    oack: Mapping[str, str] | None  # None: no option accepted, DATA 1 goes first


@dataclass(frozen=True, slots=True)
class Refuse:
    code: ErrorCode
    message: str
    reason: str  # a short countable slug


def negotiate(request: Request, size: int, limits: Limits) -> Accept | Refuse:
    """RFC 2347-2349 and 7440 for a read of `size` bytes."""
    if request.opcode == WRQ:
        return Refuse(ErrorCode.ACCESS_VIOLATION, "writes are not accepted", "write-refused")
    if request.mode not in ("octet", "netascii"):
        return Refuse(ErrorCode.ILLEGAL_OPERATION, f"unsupported mode {request.mode!r}", "bad-mode")
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, limits.default_timeout
    oack: dict[str, str] = {}
    for name, text in request.options.items():
        if name not in ("blksize", "windowsize", "timeout", "tsize"):
            continue  # RFC 2347: unknown options are left out of the OACK
        if not text.isdigit():
            return Refuse(ErrorCode.OPTION_REFUSED, f"{name} {text!r} is not a number", f"bad-{name}")
        value = int(text)
        if name == "blksize":
            if value < BLKSIZE_MIN:
                return Refuse(ErrorCode.OPTION_REFUSED, f"blksize {value} is below {BLKSIZE_MIN}", "bad-blksize")
            blksize = min(value, BLKSIZE_MAX, limits.max_blksize)
            oack[name] = str(blksize)
        elif name == "windowsize":
            if not WINDOWSIZE_MIN <= value <= WINDOWSIZE_MAX:
                return Refuse(ErrorCode.OPTION_REFUSED, f"windowsize {value} is out of range", "bad-windowsize")
            windowsize = min(value, limits.max_windowsize)
            oack[name] = str(windowsize)
        elif name == "timeout":
            if not TIMEOUT_MIN <= value <= TIMEOUT_MAX:
                return Refuse(ErrorCode.OPTION_REFUSED, f"timeout {value} is out of range", "bad-timeout")
            if value <= limits.max_timeout:
                timeout = float(value)
                oack[name] = str(value)
        else:  # tsize: the client sends 0 in a read request, the OACK carries the size
            oack[name] = str(size)
    return Accept(blksize=blksize, windowsize=windowsize, timeout=timeout, oack=oack or None)


def to_netascii(content: bytes) -> bytes:
    """RFC 764 via 1350: CR -> CR NUL, LF -> CR LF."""
    return content.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


# --- one read transfer ------------------------------------------------------------------------------------

class Outcome(IntEnum):
    RUNNING = 0
    DONE = 1  # the last block was acknowledged
    ABORTED = 2  # the client sent ERROR (a tsize probe ends like this)
    TIMED_OUT = 3  # no progress after every retry
    REFUSED = 4  # the client refused the OACK
    EVICTED = 5  # its slot went to a new request while the client had never answered


MAX_BACKOFF = 8.0


@dataclass(slots=True)
class TransferStats:
    data_sent: int = 0
    retransmitted: int = 0
    duplicate_acks: int = 0
    future_acks: int = 0
    stray: int = 0


class Blocks(Protocol):
    """What a transfer reads from besides bytes: sized, sliced to bytes (files.FileBlocks reads a large
    file block by block as the transfer goes)."""

    def __len__(self) -> int: ...
    def __getitem__(self, part: slice) -> bytes: ...


class ReadTransfer:
    """Serves `content` to one client: feed it packets and timer ticks, send what it returns.

    aioquic's shape: `start(now)`, `receive(data, now)` and `on_timeout(now)` return datagrams to send;
    `deadline` says when `on_timeout` is due (None when finished).
    """

    def __init__(self, content: bytes | memoryview | Blocks, accept: Accept, *, retries: int = 5) -> None:
        self.content = memoryview(content) if isinstance(content, (bytes, bytearray, memoryview)) else content
        self.blksize = accept.blksize
        self.windowsize = accept.windowsize
        self.timeout = accept.timeout
        self.oack = accept.oack
        self.retries = retries
        self.blocks = len(self.content) // self.blksize + 1  # the last block is short, maybe empty
        self.acked = 0  # blocks acknowledged, counted from 1 (0 = none; with an OACK, ACK 0 is the OACK's)
        self.sent = 0  # highest block sent
        self.outcome = Outcome.RUNNING
        self.deadline: float | None = None
        self.stats = TransferStats()
        self._tries = 0
        self._oack_pending = accept.oack is not None
        self.error: str = ""
        self.last_ack_missing = False
        self.heard = False  # the client answered since its request: not a spoofed source
        # The ACK that takes the fast path in `receive`, as bytes (the last block sent, more to go, running,
        # past the OACK): one comparison instead of eight tests per ACK. None when no ACK may take it.
        self._expect: bytes | None = None

    # --- packets ----------------------------------------------------------------------------------

    def block(self, number: int) -> bytes:
        start = (number - 1) * self.blksize
        # bytes + a memoryview slice: one allocation and one copy (the slice itself copies nothing)
        return _HEADER.pack(DATA, number & 0xFFFF) + self.content[start : start + self.blksize]

    def _window(self, now: float) -> list[bytes]:
        """The window after the last acknowledged block: blocks acked+1 .. acked+windowsize."""
        first, last = self.acked + 1, min(self.acked + self.windowsize, self.blocks)
        out = [self.block(n) for n in range(first, last + 1)]
        self.stats.data_sent += len(out)
        self.stats.retransmitted += max(0, min(self.sent, last) - first + 1)  # blocks that went out before
        self.sent = sent = max(self.sent, last)
        self._expect = _HEADER.pack(ACK, sent & 0xFFFF) if sent < self.blocks else None
        self.deadline = now + self._current_timeout()
        return out

    def _current_timeout(self) -> float:
        return min(self.timeout * (2 ** self._tries), max(MAX_BACKOFF, self.timeout))

    # --- events -----------------------------------------------------------------------------------

    def start(self, now: float) -> list[bytes]:
        if self._oack_pending:
            self.deadline = now + self._current_timeout()
            return [encode_oack(self.oack or {})]
        return self._window(now)

    def receive(self, data: bytes, now: float) -> list[bytes]:
        # The common case first, with nothing but what it needs (it runs once per window, so per block
        # when lock-step): the ACK of the last block sent, past the OACK, more blocks to go.
        if data == self._expect:
            sent = self.sent
            self.heard = True
            self.acked = sent
            self._tries = 0
            last = min(sent + self.windowsize, self.blocks)
            self.stats.data_sent += last - sent
            self.sent = last
            self._expect = _HEADER.pack(ACK, last & 0xFFFF) if last < self.blocks else None
            self.deadline = now + self.timeout  # _current_timeout() with no tries
            blksize, content, pack = self.blksize, self.content, _HEADER.pack
            start = sent * blksize
            if last == sent + 1:
                return [pack(DATA, last & 0xFFFF) + content[start : start + blksize]]
            return [pack(DATA, n & 0xFFFF) + content[(n - 1) * blksize : n * blksize] for n in range(sent + 1, last + 1)]
        if self.outcome is not Outcome.RUNNING:
            return []
        try:
            opcode, number, payload = parse_reply(data)
        except MalformedPacket:
            self.stats.stray += 1
            return []
        if opcode == ERROR:
            self.error = printable(payload.split(b"\0", 1)[0])
            self._expect = None
            self.outcome = Outcome.REFUSED if self._oack_pending and number == ErrorCode.OPTION_REFUSED else Outcome.ABORTED
            self.deadline = None
            return []
        if opcode != ACK:
            self.stats.stray += 1
            return []
        self.heard = True
        if self._oack_pending:
            if number != 0:
                self.stats.future_acks += 1
                return []
            self._oack_pending = False
            self._tries = 0
            return self._window(now)
        acked = self._unwrap(number)
        if acked is None or acked <= self.acked:
            self.stats.duplicate_acks += 1  # never answered with data: retransmission is the timer's job
            return []
        if acked > self.sent:
            self.stats.future_acks += 1
            return []
        self.acked = acked
        self._tries = 0
        if self.acked >= self.blocks:
            self.outcome = Outcome.DONE
            self.deadline = None
            return []
        # RFC 7440 §4: the next window starts after the acknowledged block, also when the client acknowledged
        # only part of the last window (it saw a gap): the blocks after the gap go again.
        return self._window(now)

    def on_timeout(self, now: float) -> list[bytes]:
        if self.outcome is not Outcome.RUNNING or self.deadline is None or now < self.deadline:
            return []
        self._tries += 1
        if self._tries > self.retries:
            self._end_without_last_ack(Outcome.TIMED_OUT)
            return []
        if self._oack_pending:
            self.deadline = now + self._current_timeout()
            return [encode_oack(self.oack or {})]
        return self._window(now)

    def evict(self, reason: str) -> None:
        self.error = reason
        self._expect = None
        self.outcome = Outcome.EVICTED
        self.deadline = None

    def peer_gone(self, reason: str) -> None:
        """The client's port is closed (ICMP port unreachable)."""
        self.error = reason
        self._end_without_last_ack(Outcome.ABORTED)

    def _end_without_last_ack(self, otherwise: Outcome) -> None:
        # When every block went out and only the final block's ACK is missing, the file was delivered: many
        # clients never send that ACK (dnsmasq says so too), or it was lost after the client finished. A
        # window of several unacknowledged blocks is not known to have arrived: that is not "delivered".
        delivered = self.sent >= self.blocks and self.acked >= self.blocks - 1
        self.outcome = Outcome.DONE if delivered else otherwise
        self.last_ack_missing = delivered
        self.deadline = None
        self._expect = None

    def _unwrap(self, number: int) -> int | None:
        """The absolute block number a 16-bit ACK means: the one nearest above what was acked."""
        base = self.acked & ~0xFFFF
        candidate = base | number
        if candidate < self.acked - 0x8000:
            candidate += 0x10000
        elif candidate > self.acked + 0x8000:
            candidate -= 0x10000
        return candidate if candidate >= 0 else None

    @property
    def bytes_sent(self) -> int:
        return min(self.acked * self.blksize, len(self.content))
