"""A mix of requests with random MACs, paths and names for every bootd service, as fast as one client can:
the metrics test's stand-in for a crowd (tests/integration/test_metrics.py runs it inside a client namespace).

    python -m tests.metrics_load --server 192.0.2.1 --iface IF --count N [--seed S] [--http-port 8080]

Of `count` requests: 30% DHCP DISCOVERs to 67 and 5% PXE REQUESTs to 4011 (random MACs), 20% TFTP read
requests (random file names), 25% DNS queries (random names), 20% HTTP GETs (random paths, MACs and query
strings, on several keep-alive connections, pipelined). Every one of them gets an answer from bootd (an
OFFER or ACK, a TFTP ERROR, NXDOMAIN or REFUSED, an HTTP response), so each kind runs closed-loop: at most
WINDOW unanswered at once, nothing overflows a socket buffer, and what bootd read is exactly what was sent.
Prints JSON: sent and answered per service, lost (answers that never came within --wait s), seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

WINDOW = 32  # unanswered datagrams per UDP service
HTTP_CONNECTIONS = 4
HTTP_BATCH = 32  # pipelined requests per connection at once
SHARES = (("dhcp", 0.30), ("proxy-dhcp", 0.05), ("tftp", 0.20), ("dns", 0.25), ("http", 0.20))
HTTP_ROUTES = ("/{word}", "/{word}/{word}.{word}", "/assets/{word}/{word}", "/firmware/{word}",
               "/api/v1/machines/{mac}", "/boot.ipxe?mac={mac}", "/ipxe?mac={mac}&{word}={word}",
               "/ignition?mac={mac}", "/metadata?mac={mac}", "/generic?mac={mac}&uuid={word}",
               "/ui/{word}", "/api/v1/{word}?{word}={word}")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_"


def random_mac(rng: random.Random) -> bytes:
    return bytes([0x52, 0x54]) + rng.randbytes(4)


def word(rng: random.Random) -> str:
    return "".join(rng.choices(_ALPHABET, k=rng.randint(1, 24)))


def dhcp_packet(mac: bytes, xid: int, *, request: bool, ciaddr: bytes = bytes(4)) -> bytes:
    """A PXE client's DISCOVER (BIOS, arch 0) or its REQUEST to 4011 (UEFI x64, arch 7), RFC 2131 layout."""
    arch = 7 if request else 0
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0 if request else 0x8000, ciaddr,
                         bytes(4), bytes(4), bytes(4), mac + bytes(10), b"", b"")
    vendor = f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
    options = (bytes([53, 1, 3 if request else 1]) + bytes([60, len(vendor)]) + vendor
               + bytes([93, 2]) + arch.to_bytes(2, "big") + bytes([94, 3, 1, 2, 1]) + bytes([97, 17, 0]) + mac * 2
               + mac[:4] + bytes([55, 7, 1, 3, 6, 43, 60, 66, 67, 255]))
    return header + b"\x63\x82\x53\x63" + options


def dns_query(name: str, query_id: int) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)


def tftp_request(rng: random.Random) -> bytes:
    return b"\0\1" + "/".join(word(rng) for _ in range(rng.randint(1, 3))).encode() + b"\0octet\0"


def random_query(rng: random.Random, domain: str) -> bytes:
    """A random name in the zone (most are not there: NXDOMAIN) or outside it (REFUSED: no forwarding)."""
    name = word(rng).strip("-_") or "x"
    return dns_query(f"{name}.{domain}" if rng.random() < 0.8 else f"{name}.{word(rng).strip('-_') or 'y'}",
                     rng.getrandbits(16))


@dataclass
class UdpKind:
    """One UDP service, closed-loop: a socket, what is left to send, what is out."""

    name: str
    sock: socket.socket
    to: tuple[str, int]
    make: object  # () -> bytes
    left: int
    sent: int = 0
    answered: int = 0

    def fill(self) -> None:
        while self.left and self.sent - self.answered < WINDOW:
            self.sock.sendto(self.make(), self.to)
            self.sent += 1
            self.left -= 1

    def read(self) -> None:
        while True:
            try:
                self.sock.recv(65535)
            except BlockingIOError:
                return
            self.answered += 1


@dataclass
class HttpConnection:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    out: int = 0  # requests sent and not yet answered on this connection


class HttpLoad:
    def __init__(self, server: tuple[str, int], count: int, rng: random.Random, selector: selectors.BaseSelector):
        self.server, self.left, self.rng, self.selector = server, count, rng, selector
        self.sent = self.answered = 0
        self.codes: dict[int, int] = {}
        self.connections = []
        for _ in range(HTTP_CONNECTIONS if count else 0):
            sock = socket.create_connection(server, timeout=10)
            sock.setblocking(False)
            connection = HttpConnection(sock)
            self.connections.append(connection)
            selector.register(sock, selectors.EVENT_READ, connection)

    def path(self) -> str:
        rng = self.rng
        return re.sub(r"\{(word|mac)\}", lambda m: word(rng) if m[1] == "word" else random_mac(rng).hex(":"),
                      rng.choice(HTTP_ROUTES))

    def fill(self) -> None:
        for connection in self.connections:
            if connection.out or not self.left:
                continue
            batch = min(HTTP_BATCH, self.left)
            host = f"{self.server[0]}:{self.server[1]}"
            data = "".join(f"GET {self.path()} HTTP/1.1\r\nHost: {host}\r\n\r\n" for _ in range(batch)).encode()
            connection.sock.setblocking(True)
            connection.sock.sendall(data)
            connection.sock.setblocking(False)
            connection.out += batch
            self.sent += batch
            self.left -= batch

    def read(self, connection: HttpConnection) -> None:
        while True:
            try:
                data = connection.sock.recv(1 << 16)
            except BlockingIOError:
                break
            if not data:
                raise SystemExit("bootd closed an HTTP connection")
            connection.buffer += data
        buffer = connection.buffer
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value)
                elif key.strip().lower() == "transfer-encoding":
                    raise SystemExit(f"unexpected streamed answer: {head}")
            if len(buffer) < end + 4 + length:
                return
            del buffer[: end + 4 + length]
            code = int(head[0].split()[1])
            self.codes[code] = self.codes.get(code, 0) + 1
            connection.out -= 1
            self.answered += 1

    def close(self) -> None:
        for connection in self.connections:
            self.selector.unregister(connection.sock)
            connection.sock.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--iface", required=True, help="the client's interface (DHCP answers are broadcast on it)")
    parser.add_argument("--client-ip", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--domain", default="lab.test")
    parser.add_argument("--wait", type=float, default=10.0, help="seconds without any answer before giving up")
    args = parser.parse_args()
    # one generator per kind: what each kind sends depends on the seed only, not on how replies interleave
    rngs = {name: random.Random(f"{args.seed}-{name}") for name, _ in SHARES}
    quota = {name: int(args.count * share) for name, share in SHARES}
    quota["dhcp"] += args.count - sum(quota.values())
    selector = selectors.DefaultSelector()

    def udp(bind: tuple[str, int], *, broadcast: bool = False) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
        sock.bind(bind)
        sock.setblocking(False)
        return sock

    xid = iter(range(1, 1 << 31))
    client_ip = socket.inet_aton(args.client_ip)
    kinds = [
        UdpKind("dhcp", udp(("0.0.0.0", 68), broadcast=True), ("255.255.255.255", 67),
                lambda: dhcp_packet(random_mac(rngs["dhcp"]), next(xid), request=False), quota["dhcp"]),
        UdpKind("proxy-dhcp", udp((args.client_ip, 0)), (args.server, 4011),
                lambda: dhcp_packet(random_mac(rngs["proxy-dhcp"]), next(xid), request=True, ciaddr=client_ip),
                quota["proxy-dhcp"]),
        UdpKind("tftp", udp(("0.0.0.0", 0)), (args.server, 69),
                lambda: tftp_request(rngs["tftp"]), quota["tftp"]),
        UdpKind("dns", udp(("0.0.0.0", 0)), (args.server, 53),
                lambda: random_query(rngs["dns"], args.domain), quota["dns"]),
    ]
    for kind in kinds:
        selector.register(kind.sock, selectors.EVENT_READ, kind)
    http = HttpLoad((args.server, args.http_port), quota["http"], rngs["http"], selector)
    start = last_answer = time.monotonic()
    while True:
        for kind in kinds:
            kind.fill()
        http.fill()
        done = all(k.answered == k.sent and not k.left for k in kinds) and http.answered == http.sent and not http.left
        if done or time.monotonic() - last_answer > args.wait:
            break
        for key, _ in selector.select(timeout=0.5):
            last_answer = time.monotonic()
            if isinstance(key.data, HttpConnection):
                http.read(key.data)
            else:
                key.data.read()
    seconds = time.monotonic() - start
    http.close()
    sent = {k.name: k.sent for k in kinds} | {"http": http.sent}
    answered = {k.name: k.answered for k in kinds} | {"http": http.answered}
    json.dump({"sent": sent, "answered": answered, "lost": sum(sent.values()) - sum(answered.values()),
               "http_codes": http.codes, "seconds": round(seconds, 2)}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
