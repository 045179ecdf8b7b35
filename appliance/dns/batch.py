"""UDP in batches: recvmmsg(2) and sendmmsg(2) through ctypes (Python's socket module has neither).

Why (issue 16: DNS at 1.1x dnsmasq's queries/s with the server held to 40% of a core): a held server finds
dozens of queries queued at each wakeup; one recvmmsg takes up to BATCH of them and one sendmmsg sends
the answers, where recvfrom/sendto cost two syscalls, an address tuple (and its parsing back) per query.
The messages stay in two fixed buffers: a query's bytes after its ID are the answer cache's key, and its
answer is written into the send buffer behind the query's own ID; each answer goes back to the address
its query came from (the same sockaddr buffer).

Only the cached path uses the buffers: a query that misses is copied out (`query`, `client`) and answered
by the caller with `sendto`. Linux only; `UdpBatch.open` returns None where recvmmsg cannot be loaded,
and the caller keeps its recvfrom loop.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Callable, Mapping

BATCH = 64
SLOT = 4096  # bytes per message: the largest query we read (as recvfrom(4096) did), the largest cached answer
_NAME = 28  # sizeof(struct sockaddr_in6): room for either family
MSG_DONTWAIT = 0x40


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint32)]


_MMSG = ctypes.sizeof(_MMsgHdr)
_LEN = _MMsgHdr.msg_len.offset // 4  # as uint32 indexes into one mmsghdr
_NAMELEN = _MMsgHdr.msg_hdr.offset // 4 + _MsgHdr.msg_namelen.offset // 4


def _uint32s(array: ctypes.Array) -> memoryview:
    return memoryview(array).cast("B").cast("I")


class UdpBatch:
    """Answers a batch of queries from `answers` (query bytes after the ID -> answer bytes after the ID)."""

    def __init__(self, sock: socket.socket, libc: ctypes.CDLL) -> None:
        self._fd = sock.fileno()
        self._recvmmsg = libc.recvmmsg
        self._sendmmsg = libc.sendmmsg
        self._recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
        self._sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
        self._rbuf = (ctypes.c_char * (BATCH * SLOT))()
        self._sbuf = (ctypes.c_char * (BATCH * SLOT))()
        self._names = (ctypes.c_char * (BATCH * _NAME))()
        self._riov = (_IoVec * BATCH)()
        self._siov = (_IoVec * BATCH)()
        self._rmsgs = (_MMsgHdr * BATCH)()
        self._smsgs = (_MMsgHdr * BATCH)()
        rbase, sbase, nbase = (ctypes.addressof(b) for b in (self._rbuf, self._sbuf, self._names))
        for i in range(BATCH):
            self._riov[i].iov_base, self._riov[i].iov_len = rbase + i * SLOT, SLOT
            self._siov[i].iov_base = sbase + i * SLOT
            for msgs, iov in ((self._rmsgs, self._riov), (self._smsgs, self._siov)):
                hdr = msgs[i].msg_hdr
                hdr.msg_name, hdr.msg_namelen = nbase + i * _NAME, _NAME
                hdr.msg_iov, hdr.msg_iovlen = ctypes.pointer(iov[i]), 1
        self._rview = memoryview(self._rbuf).cast("B")
        self._sview = memoryview(self._sbuf).cast("B")
        self._nview = memoryview(self._names).cast("B")
        self._rwords = _uint32s(self._rmsgs)
        self._swords = _uint32s(self._smsgs)
        self._slens = memoryview(self._siov).cast("B").cast("Q")  # (iov_base, iov_len) pairs

    @classmethod
    def open(cls, sock: socket.socket) -> UdpBatch | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.recvmmsg, libc.sendmmsg  # noqa: B018 (present?)
        except (OSError, AttributeError):
            return None
        return cls(sock, libc)

    def serve(self, answers: Mapping[bytes, bytes], missed: Callable[[bytes, tuple], None]) -> tuple[int, int]:
        """Read up to BATCH queries, send the cached answers in one call; every other query goes to
        `missed(query, client address)`. (queries read, cache hits); (0, 0) when nothing was queued.
        OSError for a receive error other than "nothing queued"."""
        rwords, swords = self._rwords, self._swords
        for i in range(BATCH):  # the kernel wrote each name length: room for any address again
            rwords[i * (_MMSG // 4) + _NAMELEN] = _NAME
        count = self._recvmmsg(self._fd, self._rmsgs, BATCH, MSG_DONTWAIT, None)
        if count < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0, 0
            raise OSError(err, "recvmmsg")
        rview, sview, get = self._rview, self._sview, answers.get
        slens = self._slens
        step = _MMSG // 4
        out = 0  # answers in the send array, which holds them in order: slot `out` names its query's sender
        hits = 0
        for i in range(count):
            size = rwords[i * step + _LEN]
            start = i * SLOT
            cached = get(rview[start + 2 : start + size].tobytes()) if size >= 12 else None
            if cached is None or len(cached) > SLOT - 2:
                if out:  # keep the order of sends simple: flush what is ready before the slow path
                    self._send(out)
                    out = 0
                missed(rview[start : start + size].tobytes(), self._address(i))
                continue
            hits += 1
            target = out * SLOT
            sview[target : target + 2] = rview[start : start + 2]
            sview[target + 2 : target + 2 + len(cached)] = cached
            slens[out * 2 + 1] = 2 + len(cached)
            if out != i:
                self._nview[out * _NAME : (out + 1) * _NAME] = self._nview[i * _NAME : (i + 1) * _NAME]
            swords[out * step + _NAMELEN] = rwords[i * step + _NAMELEN]
            out += 1
        if out:
            self._send(out)
        return count, hits

    def _send(self, count: int) -> None:
        """sendmmsg of the first `count` answers; a datagram the kernel refuses (a full socket buffer) is
        dropped, as sendto's would be: UDP, and the client asks again."""
        sent = 0
        while sent < count:
            done = self._sendmmsg(self._fd, ctypes.byref(self._smsgs, sent * _MMSG), count - sent, 0)
            if done <= 0:
                return
            sent += done

    def _address(self, i: int) -> tuple:
        """The sender of message `i` as socket.recvfrom gives it."""
        name = bytes(self._nview[i * _NAME : (i + 1) * _NAME])
        family = struct.unpack_from("=H", name)[0]
        port = struct.unpack_from("!H", name, 2)[0]
        if family == socket.AF_INET6:
            flowinfo, = struct.unpack_from("!I", name, 4)
            scope, = struct.unpack_from("=I", name, 24)
            return socket.inet_ntop(socket.AF_INET6, name[8:24]), port, flowinfo, scope
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port
