"""recvmmsg(2) and sendmmsg(2) through ctypes (Python's socket module has neither): the message arrays the
DNS server (dns/batch.py) and the DHCP server (dhcp/server.py) read and answer UDP batches with.

A `MessageArray` is BATCH message headers over fixed buffers: one data slot, one address slot and (when asked)
one control slot per message, each header pointing at its own. The caller reads and writes the slots through
memoryviews, and the kernel's per-message lengths through `words` (uint32 view) and `qwords` (uint64 view) of
the headers, at the indexes below: no ctypes attribute access per packet. Linux only: `functions()` is None
where recvmmsg cannot be loaded, and the callers keep their one-datagram-per-call loops.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct

BATCH = 64
NAME = 28  # sizeof(struct sockaddr_in6): room for either family
MSG_DONTWAIT = 0x40


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint32)]


MMSG = ctypes.sizeof(_MMsgHdr)
STEP = MMSG // 4  # uint32 words per message header
QSTEP = MMSG // 8  # uint64 words per message header
LEN = _MMsgHdr.msg_len.offset // 4  # msg_len, as a uint32 index within one header
NAMELEN = (_MMsgHdr.msg_hdr.offset + _MsgHdr.msg_namelen.offset) // 4
CONTROLLEN = (_MMsgHdr.msg_hdr.offset + _MsgHdr.msg_controllen.offset) // 8  # a uint64 index (size_t)
assert ctypes.sizeof(ctypes.c_size_t) == 8 and MMSG % 8 == 0, "a 64-bit Linux ABI"

_functions: tuple[object, object] | None | bool = False  # not loaded yet


def functions() -> tuple[object, object] | None:
    """libc's (recvmmsg, sendmmsg) with their argument types, or None where they are missing."""
    global _functions
    if _functions is False:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
        except (OSError, AttributeError):
            _functions = None
        else:
            recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
            sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
            _functions = (recvmmsg, sendmmsg)
    return _functions  # type: ignore[return-value]


def _uint(array: ctypes.Array, code: str) -> memoryview:
    return memoryview(array).cast("B").cast(code)


class MessageArray:
    """BATCH headers, each over a `slot`-byte data buffer, an address buffer (its own, or `names_of`'s: a
    send array answering a receive array in place) and `control` bytes of ancillary data (0: none)."""

    def __init__(self, slot: int, *, control: int = 0, names_of: MessageArray | None = None) -> None:
        self.slot, self.control_size = slot, control
        # the data slots on an anonymous mapping: its pages stay unallocated until a datagram lands in them
        # (a ctypes array is zeroed at creation, so all 256 KiB of each array was resident from the start:
        # about 2 MB of an idle bootd's RSS with DHCP and DNS on; issue 16's idle target)
        self._data_map = mmap.mmap(-1, BATCH * slot)
        self._data = (ctypes.c_char * (BATCH * slot)).from_buffer(self._data_map)
        self._names = names_of._names if names_of is not None else (ctypes.c_char * (BATCH * NAME))()
        self._control = (ctypes.c_char * max(1, BATCH * control))()
        self._iov = (_IoVec * BATCH)()
        self.headers = (_MMsgHdr * BATCH)()
        dbase, nbase, cbase = (ctypes.addressof(b) for b in (self._data, self._names, self._control))
        for i in range(BATCH):
            self._iov[i].iov_base, self._iov[i].iov_len = dbase + i * slot, slot
            hdr = self.headers[i].msg_hdr
            hdr.msg_name, hdr.msg_namelen = nbase + i * NAME, NAME
            hdr.msg_iov, hdr.msg_iovlen = ctypes.pointer(self._iov[i]), 1
            if control:
                hdr.msg_control, hdr.msg_controllen = cbase + i * control, control
        self.data = memoryview(self._data).cast("B")
        self.names = memoryview(self._names).cast("B")
        self.controls = memoryview(self._control).cast("B")
        self.words = _uint(self.headers, "I")
        self.qwords = _uint(self.headers, "Q")
        self.lengths = _uint(self._iov, "Q")  # (iov_base, iov_len) pairs: a message's length at 2 * i + 1
        self._filled = 0  # messages the last receive filled

    def receive(self, recvmmsg, fd: int) -> int:
        """Up to BATCH datagrams without waiting; 0 when nothing is queued. OSError for another error."""
        # the kernel wrote the address and control lengths of the messages it filled last time: give those
        # their whole room back (only those: at one datagram per wakeup, 64 resets would cost more than it)
        words, qwords, control = self.words, self.qwords, self.control_size
        for i in range(self._filled):
            words[i * STEP + NAMELEN] = NAME
            if control:
                qwords[i * QSTEP + CONTROLLEN] = control
        self._filled = 0
        count = recvmmsg(fd, self.headers, BATCH, MSG_DONTWAIT, None)
        if count < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, "recvmmsg")
        self._filled = count
        return count

    def send(self, sendmmsg, fd: int, start: int, count: int) -> int:
        """sendmmsg of messages start..start+count-1: how many the kernel took (at least 1), or -errno for the
        first message when it refused that one."""
        done = sendmmsg(fd, ctypes.byref(self.headers, start * MMSG), count, 0)
        return done if done >= 0 else -ctypes.get_errno()

    def address(self, i: int) -> tuple:
        """The sender of message `i` as socket.recvfrom gives it."""
        name = bytes(self.names[i * NAME : (i + 1) * NAME])
        family = struct.unpack_from("=H", name)[0]
        port = struct.unpack_from("!H", name, 2)[0]
        if family == socket.AF_INET6:
            flowinfo, = struct.unpack_from("!I", name, 4)
            scope, = struct.unpack_from("=I", name, 24)
            return socket.inet_ntop(socket.AF_INET6, name[8:24]), port, flowinfo, scope
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port


def sockaddr_in(address: str, port: int) -> bytes:
    """struct sockaddr_in for an IPv4 address and port (16 bytes)."""
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(address) + bytes(8)
