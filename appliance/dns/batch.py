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

import socket
from collections.abc import Callable, Mapping

from appliance.mmsg import BATCH, LEN, NAME, NAMELEN, STEP, MessageArray, functions

__all__ = ["BATCH", "SLOT", "UdpBatch"]

SLOT = 4096  # bytes per message: the largest query we read (as recvfrom(4096) did), the largest cached answer


class UdpBatch:
    """Answers a batch of queries from `answers` (query bytes after the ID -> answer bytes after the ID)."""

    def __init__(self, sock: socket.socket, calls: tuple) -> None:
        self._fd = sock.fileno()
        self._recvmmsg, self._sendmmsg = calls
        self._in = MessageArray(SLOT)
        self._out = MessageArray(SLOT, names_of=self._in)  # each answer goes to its query's sender, in place

    @classmethod
    def open(cls, sock: socket.socket) -> UdpBatch | None:
        calls = functions()
        return None if calls is None else cls(sock, calls)

    def serve(self, answers: Mapping[bytes, bytes], missed: Callable[[bytes, tuple], None]) -> tuple[int, int]:
        """Read up to BATCH queries, send the cached answers in one call; every other query goes to
        `missed(query, client address)`. (queries read, cache hits); (0, 0) when nothing was queued.
        OSError for a receive error other than "nothing queued"."""
        received, sending = self._in, self._out
        count = received.receive(self._recvmmsg, self._fd)
        if not count:
            return 0, 0
        rwords, swords = received.words, sending.words
        rview, sview, names, get = received.data, sending.data, received.names, answers.get
        slens = sending.lengths
        out = 0  # answers in the send array, which holds them in order: slot `out` names its query's sender
        hits = 0
        for i in range(count):
            size = rwords[i * STEP + LEN]
            start = i * SLOT
            cached = get(rview[start + 2 : start + size].tobytes()) if size >= 12 else None
            if cached is None or len(cached) > SLOT - 2:
                if out:  # keep the order of sends simple: flush what is ready before the slow path
                    self._send(out)
                    out = 0
                missed(rview[start : start + size].tobytes(), received.address(i))
                continue
            hits += 1
            target = out * SLOT
            sview[target : target + 2] = rview[start : start + 2]
            sview[target + 2 : target + 2 + len(cached)] = cached
            slens[out * 2 + 1] = 2 + len(cached)
            if out != i:
                names[out * NAME : (out + 1) * NAME] = names[i * NAME : (i + 1) * NAME]
            swords[out * STEP + NAMELEN] = rwords[i * STEP + NAMELEN]
            out += 1
        if out:
            self._send(out)
        return count, hits

    def _send(self, count: int) -> None:
        """sendmmsg of the first `count` answers; a datagram the kernel refuses (a full socket buffer) is
        dropped, as sendto's would be: UDP, and the client asks again."""
        sent = 0
        while sent < count:
            done = self._out.send(self._sendmmsg, self._fd, sent, count - sent)
            if done <= 0:
                return
            sent += done
