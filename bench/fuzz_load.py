"""The fuzz campaign's load, run inside the client namespace (never on a real interface): one target per run.

    python -m bench.fuzz_load --target T --packets N --seed S --iface IF --server IP --good-ip IP --work DIR

Targets: dhcp67, dhcp4011, tftp69, tftp-transfer (packets to the port of a transfer in progress), dns-udp,
dns-tcp, http, grpc. Every packet is a mutation of a valid seed packet of the target's protocol (bit flips,
truncations, insertions, deletions, length fields that lie, option soup, splices) or random bytes, chosen
by a `random.Random(seed)`: the same seed sends the same packets. Every `--every` packets a good client
(from `--good-ip`, so per-client limits that the fuzzer fills are not its) makes one request that must be
answered exactly right; one attempt, no retry. Every `--sync` packets the fuzzer waits for an answer to a
valid request on its own socket, so what it sends reaches bootd instead of overflowing a socket buffer.

Prints one JSON object: target, sent, good, good_ok, failures (the first few, described), seconds and
per-target detail (HTTP status counts, sync answers missed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import select
import selectors
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import CLASS, EDNS0, QTYPE, RR, A, DNSRecord

MAGIC = b"\x63\x82\x53\x63"
GUID = b"\x00" + bytes(range(16))
GOOD_MAC = bytes.fromhex("5254000000aa")
ZONE_NAME, ZONE_IP = "node1.example.com", "192.0.2.21"
SMALL_FILE = "small.bin"  # in the TFTP root; its sha256 is in <work>/small.sha256
BOOT_IPXE = (b"#!ipxe\nchain ipxe?uuid=${uuid}&mac=${mac:hexhyp}&domain=${domain}&hostname=${hostname}"
             b"&serial=${serial}&arch=${buildarch:uristring}\n")
PROFILE_IDS = ["p"]


# --- mutations ----------------------------------------------------------------------------------------

INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


def bit_flips(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def interesting_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if out:
            out[rng.randrange(len(out))] = rng.choice(INTERESTING)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.choice((1, 2, 4, 16, 255, 1000))) + data[at:]


def delete(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 64):]


def random_bytes(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 2, 3, 4, 12, 64, 236, 240, 300, 512, 1400)))


def splice(rng: random.Random, data: bytes, other: bytes) -> bytes:
    return data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]


def dhcp_length_lie(rng: random.Random, data: bytes) -> bytes:
    """Change the length byte of one option (past the cookie) to a lie: too long, zero, 255."""
    out = bytearray(data)
    offsets, i = [], 240
    while i + 1 < len(out) and out[i] != 255:
        if out[i] == 0:
            i += 1
            continue
        offsets.append(i + 1)
        i += 2 + out[i + 1]
    if offsets:
        out[rng.choice(offsets)] = rng.choice((0, 1, 2, 255, rng.randrange(256)))
    return bytes(out)


def dhcp_option_soup(rng: random.Random, data: bytes) -> bytes:
    codes = (0, 1, 3, 12, 43, 50, 51, 52, 53, 54, 55, 57, 60, 61, 66, 67, 77, 82, 93, 94, 97, 175, 255, 250)
    soup = bytearray()
    for _ in range(rng.randint(1, 40)):
        code = rng.choice(codes) if rng.random() < 0.8 else rng.randrange(256)
        value = rng.randbytes(rng.choice((0, 1, 2, 3, 4, 16, 17, 255)))
        length = len(value) if rng.random() < 0.9 else rng.randrange(256)
        soup += bytes((code, length & 0xFF)) + value
    head = data[:240] if len(data) >= 240 else data
    return bytes(head) + bytes(soup) + (b"\xff" if rng.random() < 0.5 else b"")


def dns_length_lie(rng: random.Random, data: bytes) -> bytes:
    """Counts in the header that lie, a label longer than what follows, or a compression pointer loop."""
    out = bytearray(data)
    choice = rng.randrange(3)
    if choice == 0 and len(out) >= 12:
        at = rng.choice((4, 6, 8, 10))
        out[at:at + 2] = struct.pack("!H", rng.choice((0, 2, 255, 0xFFFF)))
    elif choice == 1 and len(out) > 12:
        out[12] = rng.choice((63, 64, 191, 255))
    elif len(out) > 13:
        out[12:14] = b"\xc0\x0c"  # a name that points at itself
    return bytes(out)


def tftp_option_soup(rng: random.Random, data: bytes) -> bytes:
    names = (b"blksize", b"tsize", b"timeout", b"windowsize", b"multicast", b"BLKSIZE", rng.randbytes(5))
    values = (b"0", b"1", b"7", b"8", b"65464", b"65535", b"99999999999999999999", b"-1", b"", b"abc", b"\xff\xfe")
    out = bytearray(data)
    for _ in range(rng.randint(1, 20)):
        out += rng.choice(names) + b"\0" + rng.choice(values) + (b"\0" if rng.random() < 0.9 else b"")
    return bytes(out)


GENERIC = [bit_flips, interesting_bytes, truncate, insert, delete, random_bytes]


def mutate(rng: random.Random, seeds: list[bytes], special: list) -> bytes:
    """One packet: a seed through one to three mutations (generic or the protocol's own), or a splice."""
    data = rng.choice(seeds)
    roll = rng.random()
    if roll < 0.05:
        return data  # valid packets too: the fuzzer's mix includes real requests
    if roll < 0.12:
        return splice(rng, data, rng.choice(seeds))
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        mutation = rng.choice(GENERIC + special * 2)
        data = mutation(rng, data)
    return data


# --- seeds --------------------------------------------------------------------------------------------

def dhcp_packet(kind: int, arch: int | None, xid: int, mac: bytes, *, ipxe: bool = False,
                ciaddr: bytes = bytes(4), extra: bytes = b"") -> bytes:
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 4, 0x8000, ciaddr, bytes(4), bytes(4),
                         bytes(4), mac.ljust(16, b"\0"), b"", b"")

    def option(code: int, value: bytes) -> bytes:
        return bytes((code, len(value))) + value

    options = option(53, bytes((kind,))) + option(57, struct.pack("!H", 1472))
    options += option(55, bytes([1, 3, 6, 43, 60, 66, 67, 97, 128, 129, 175]))
    if arch is not None:
        options += option(97, GUID) + option(94, b"\x01\x02\x01") + option(93, struct.pack("!H", arch))
        options += option(60, f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode())
    if ipxe:
        options += option(77, b"iPXE") + option(175, b"\x13\x01\x01")
    if kind == 3:
        options += option(43, b"\x47\x04\x80\x00\x00\x00\xff")  # the PXE boot item a BIOS asks 4011 for
    return header + MAGIC + options + extra + b"\xff"


def dhcp_seeds(rng: random.Random) -> list[bytes]:
    mac = b"\x52\x54\x00" + rng.randbytes(3)
    return [dhcp_packet(1, 0, 1, mac), dhcp_packet(1, 7, 2, mac), dhcp_packet(1, 16, 3, mac),
            dhcp_packet(1, 0, 4, mac, ipxe=True), dhcp_packet(3, 0, 5, mac, ciaddr=bytes((192, 0, 2, 2))),
            dhcp_packet(3, 7, 6, mac, ciaddr=bytes((192, 0, 2, 2))), dhcp_packet(8, None, 7, mac),
            dhcp_packet(1, None, 8, mac), dhcp_packet(4, 0, 9, mac), dhcp_packet(7, 0, 10, mac)]


def fresh_dhcp(rng: random.Random, packet: bytes) -> bytes:
    """A new xid and MAC for each fuzz packet (when the header survived), as many machines would send."""
    if len(packet) >= 34:
        return packet[:4] + rng.randbytes(4) + packet[8:28] + b"\x52\x54\x00" + rng.randbytes(3) + packet[34:]
    return packet


def tftp_rrq(name: bytes, **options: bytes) -> bytes:
    return b"\x00\x01" + name + b"\0octet\0" + b"".join(k.encode() + b"\0" + v + b"\0" for k, v in options.items())


def tftp_seeds() -> list[bytes]:
    return [tftp_rrq(b"undionly.kpxe"), tftp_rrq(b"ipxe.efi", blksize=b"1408", tsize=b"0", windowsize=b"4"),
            tftp_rrq(SMALL_FILE.encode(), blksize=b"512", timeout=b"1"), tftp_rrq(b"../etc/passwd"),
            tftp_rrq(b"missing", blksize=b"65464", timeout=b"255", windowsize=b"64"),
            b"\x00\x02undionly.kpxe\0octet\0", b"\x00\x04\x00\x01", b"\x00\x05\x00\x01oops\0",
            b"\x00\x06blksize\x001024\0", b"\x00\x03\x00\x01" + bytes(512)]


def transfer_seeds() -> list[bytes]:
    return [b"\x00\x04\x00\x01", b"\x00\x04\x00\x00", b"\x00\x04\xff\xff", b"\x00\x04\x00\x02",
            b"\x00\x05\x00\x00stop\0", b"\x00\x03\x00\x01data", tftp_rrq(b"undionly.kpxe"), b"\x00\x06tsize\x000\0",
            b"\x00\x04\x00", b"\x00\x09\x00\x01"]


def dns_seeds() -> list[bytes]:
    queries = [DNSRecord.question(ZONE_NAME, "A"), DNSRecord.question("NODE1.Example.COM", "AAAA"),
               DNSRecord.question("_etcd-server-ssl._tcp.example.com", "SRV"),
               DNSRecord.question("21.2.0.192.in-addr.arpa", "PTR"), DNSRecord.question("example.com", "SOA"),
               DNSRecord.question("example.com", "ANY"), DNSRecord.question("missing.example.com", "A"),
               DNSRecord.question("elsewhere.test", "A"), DNSRecord.question("matchbox.example.com", "TXT")]
    edns = DNSRecord.question(ZONE_NAME, "A")
    edns.add_ar(EDNS0(udp_len=4096))
    queries.append(edns)
    update = DNSRecord.question("example.com", "SOA")
    update.header.opcode = 5
    update.add_answer(RR("x.example.com", QTYPE.A, CLASS.IN, 60, A("192.0.2.99")))
    queries.append(update)
    return [q.pack() for q in queries]


def http_seeds() -> list[bytes]:
    host = b"Host: 192.0.2.1:8080\r\n"
    return [b"GET /boot.ipxe HTTP/1.1\r\n" + host + b"\r\n",
            b"GET /ipxe?uuid=a1b2&mac=52-54-00-00-00-01&arch=x86_64 HTTP/1.1\r\n" + host + b"\r\n",
            b"GET /bootd.ipxe HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n",
            b"GET /assets/k HTTP/1.1\r\n" + host + b"Range: bytes=0-99\r\n\r\n",
            b"GET /ignition?mac=52:54:00:00:00:01&os=installed HTTP/1.1\r\n" + host + b"\r\n",
            b"GET /api/v1/machines HTTP/1.1\r\n" + host + b"\r\n",
            b"POST /api/v1/machines/52:54:00:00:00:01/report HTTP/1.1\r\n" + host
            + b"Content-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"stage\": \"installed\", \"a\":1}",
            b"HEAD /assets/k HTTP/1.1\r\n" + host + b"If-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n"]


def http_specials(rng: random.Random) -> bytes:
    """Requests aimed at the parser's and the handlers' edges: huge headers, bad ranges, bad UTF-8 labels."""
    host = b"Host: 192.0.2.1:8080\r\n"
    kind = rng.randrange(8)
    if kind == 0:
        return b"GET /boot.ipxe HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * rng.choice((8190, 9000, 65536, 1 << 20)) \
            + b"\r\n\r\n"
    if kind == 1:
        return b"GET /boot.ipxe HTTP/1.1\r\n" + host + b"".join(b"X-%d: v\r\n" % i for i in range(rng.choice((101, 1000, 20000)))) + b"\r\n"
    if kind == 2:
        ranges = (b"bytes=-0", b"bytes=999999999999-", b"bytes=5-2", b"bytes=a-b", b"bytes=" + b"0-0," * 2000,
                  b"bytes=-99999999999999999999", b"items=0-1", b"bytes=0-1,\xff", b"bytes=1-1, 1-1", b"bytes =0-")
        return b"GET /assets/k HTTP/1.1\r\n" + host + b"Range: " + rng.choice(ranges) + b"\r\n" \
            + (b"If-Range: \"nonsense\"\r\n" if rng.random() < 0.3 else b"") + b"\r\n"
    if kind == 3:
        labels = (b"%ff%fe", b"%c3%28", b"%ed%a0%80", b"\xff\xfe", b"%00", b"%", b"%zz", b"a" * 5000, "é".encode())
        path = rng.choice((b"/ipxe", b"/ignition", b"/metadata", b"/generic", b"/grub", b"/boot.ipxe", b"/bootd.ipxe"))
        query = b"&".join(rng.choice((b"mac", b"uuid", b"os", rng.choice(labels))) + b"=" + rng.choice(labels)
                          for _ in range(rng.randint(1, 6)))
        return b"GET " + path + b"?" + query + b" HTTP/1.1\r\n" + host + b"\r\n"
    if kind == 4:
        mac = rng.choice((b"52:54:00:00:00:01", b"%ff", b"zz", b"52-54-00-00-00-01", b"\xc3\x28"))
        body = rng.choice((b"{", b"[]", b"\xff\xfe", b"{\"stage\": \"\xff\"}", b"{\"a\": " * 1000, b"null",
                           b"{\"stage\": 1e999}", b"x" * 70000, b"[" * 10000))
        length = rng.choice((len(body), 0, len(body) + 10, 1 << 40))
        return b"POST /api/v1/machines/" + mac + b"/report HTTP/1.1\r\n" + host + \
            b"Content-Length: %d\r\n\r\n" % length + body
    if kind == 5:
        return rng.choice((b"GET / HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                           b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n",
                           b"GET /boot.ipxe HTTP/1.1\r\nTransfer-Encoding: chunked\r\n" + host + b"\r\nzz\r\n",
                           b"GET /boot.ipxe HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n" + host + b"\r\n"))
    if kind == 6:
        return b"GET /assets/" + rng.choice((b"..%2f..%2fetc/passwd", b"%2e%2e/%2e%2e/x", b"\xff", b"k/../../x",
                                             b"%00", b"a" * 4096)) + b" HTTP/1.1\r\n" + host + b"\r\n"
    return rng.randbytes(rng.choice((1, 16, 1000, 8192)))


def tls_client_hello(rng: random.Random) -> bytes:
    """A ClientHello-shaped record (its fields random), for the gRPC port's TLS parser."""
    body = b"\x03\x03" + rng.randbytes(32) + b"\x00" + b"\x00\x04\x13\x01\x13\x02" + b"\x01\x00"
    ext = rng.randbytes(rng.choice((0, 10, 100)))
    hello = b"\x01" + len(body + ext).to_bytes(3, "big") + body + ext
    return b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello


# --- the good client ----------------------------------------------------------------------------------

class Failure(Exception):
    pass


def dhcp_options(packet: bytes) -> dict[int, bytes]:
    options, i = {}, 240
    if packet[236:240] != MAGIC:
        raise Failure("no magic cookie")
    while i < len(packet) and packet[i] != 255:
        if packet[i] == 0:
            i += 1
            continue
        options[packet[i]] = packet[i + 2:i + 2 + packet[i + 1]]
        i += 2 + packet[i + 1]
    return options


def boot_file(packet: bytes, options: dict[int, bytes]) -> str:
    name = packet[108:236].rstrip(b"\0") or options.get(67, b"").rstrip(b"\0")
    return name.decode(errors="replace")


def recv_until(sock: socket.socket, match, timeout: float):
    """Read datagrams until `match(data, addr)` returns something (returned) or the timeout runs out."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            data, addr = sock.recvfrom(65536)
        except BlockingIOError:
            continue
        found = match(data, addr)
        if found is not None:
            return found
    return None


@dataclass
class Context:
    args: argparse.Namespace
    rng: random.Random
    sent: int = 0
    good: int = 0
    good_ok: int = 0
    failures: list[str] = field(default_factory=list)
    detail: Counter = field(default_factory=Counter)

    def check(self, what, *a) -> None:
        self.good += 1
        try:
            what(self, *a)
        except Exception as exc:  # whatever went wrong, the good request failed: say how
            if len(self.failures) < 20:
                self.failures.append(f"after {self.sent} packets: {type(exc).__name__}: {exc}")
        else:
            self.good_ok += 1


def dhcp_socket(iface: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    return sock


def good_offer(ctx: Context, sock: socket.socket) -> None:
    """A BIOS PXE DISCOVER: an OFFER with its xid, our MAC, bootd's id and undionly.kpxe."""
    xid = ctx.rng.getrandbits(32)
    sock.sendto(dhcp_packet(1, 0, xid, GOOD_MAC), ("255.255.255.255", 67))

    def match(data: bytes, addr) -> bytes | None:
        return data if len(data) >= 240 and data[0] == 2 and data[4:8] == xid.to_bytes(4, "big") else None

    reply = recv_until(sock, match, ctx.args.timeout)
    if reply is None:
        raise Failure("no OFFER")
    options = dhcp_options(reply)
    if options.get(53) != b"\x02" or reply[28:34] != GOOD_MAC or options.get(54) != socket.inet_aton(ctx.args.server):
        raise Failure(f"not bootd's OFFER to us: {reply.hex()}")
    if boot_file(reply, options) != "undionly.kpxe":
        raise Failure(f"boot file {boot_file(reply, options)!r}")


def good_ack(ctx: Context, sock: socket.socket) -> None:
    """A UEFI x64 REQUEST on 4011: an ACK with its xid and ipxe.efi."""
    xid = ctx.rng.getrandbits(32)
    sock.sendto(dhcp_packet(3, 7, xid, GOOD_MAC, ciaddr=socket.inet_aton(ctx.args.good_ip)), (ctx.args.server, 4011))

    def match(data: bytes, addr) -> bytes | None:
        return data if len(data) >= 240 and data[4:8] == xid.to_bytes(4, "big") else None

    reply = recv_until(sock, match, ctx.args.timeout)
    if reply is None:
        raise Failure("no ACK on 4011")
    options = dhcp_options(reply)
    if options.get(53) != b"\x05" or boot_file(reply, options) != "ipxe.efi":
        raise Failure(f"not an ACK for ipxe.efi: type {options.get(53)!r}, file {boot_file(reply, options)!r}")


def tftp_fetch(server: str, bind_ip: str, name: str, timeout: float, blksize: int = 1408) -> bytes:
    """A whole file over TFTP (options blksize, tsize), ACKing each block; Failure on anything else."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind_ip, 0))
    try:
        sock.sendto(tftp_rrq(name.encode(), blksize=str(blksize).encode(), tsize=b"0"), (server, 69))
        data, expected, peer, size = bytearray(), 1, None, 512
        while True:
            ready, _, _ = select.select([sock], [], [], timeout)
            if not ready:
                raise Failure(f"TFTP: nothing after block {expected - 1}")
            packet, addr = sock.recvfrom(65536)
            if peer is None:
                peer = addr
            elif addr != peer:
                continue
            opcode = packet[:2]
            if opcode == b"\x00\x06":
                options = packet[2:].split(b"\0")
                values = dict(zip(options[0::2], options[1::2]))
                size = int(values.get(b"blksize", b"512"))
                sock.sendto(b"\x00\x04\x00\x00", peer)
                continue
            if opcode == b"\x00\x05":
                raise Failure(f"TFTP error {packet[2:4].hex()} {packet[4:-1]!r}")
            if opcode != b"\x00\x03":
                raise Failure(f"TFTP opcode {opcode.hex()}")
            block = int.from_bytes(packet[2:4], "big")
            if block == expected & 0xFFFF:
                data += packet[4:]
                expected += 1
            sock.sendto(b"\x00\x04" + packet[2:4], peer)
            if block == (expected - 1) & 0xFFFF and len(packet) - 4 < size:
                return bytes(data)
    finally:
        sock.close()


def good_tftp(ctx: Context) -> None:
    data = tftp_fetch(ctx.args.server, ctx.args.good_ip, SMALL_FILE, ctx.args.timeout)
    if hashlib.sha256(data).hexdigest() != ctx.args.small_sha256:
        raise Failure(f"TFTP: {len(data)} bytes with the wrong sha256")


def dns_answer_ok(reply: bytes, query: DNSRecord) -> None:
    answer = DNSRecord.parse(reply)
    if answer.header.id != query.header.id or answer.header.rcode != 0 or not answer.header.aa:
        raise Failure(f"DNS header {answer.header}")
    addresses = [str(rr.rdata) for rr in answer.rr if rr.rtype == QTYPE.A]
    if addresses != [ZONE_IP]:
        raise Failure(f"DNS A {addresses}")


def good_dns_udp(ctx: Context) -> None:
    query = DNSRecord.question(ZONE_NAME, "A")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ctx.args.good_ip, 0))
    try:
        sock.sendto(query.pack(), (ctx.args.server, 53))
        ready, _, _ = select.select([sock], [], [], ctx.args.timeout)
        if not ready:
            raise Failure("no DNS answer over UDP")
        dns_answer_ok(sock.recv(65536), query)
    finally:
        sock.close()


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise Failure(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def good_dns_tcp(ctx: Context) -> None:
    query = DNSRecord.question(ZONE_NAME, "A")
    with socket.create_connection((ctx.args.server, 53), timeout=ctx.args.timeout,
                                  source_address=(ctx.args.good_ip, 0)) as sock:
        payload = query.pack()
        sock.sendall(len(payload).to_bytes(2, "big") + payload)
        length = int.from_bytes(read_exact(sock, 2), "big")
        dns_answer_ok(read_exact(sock, length), query)


def http_get(server: str, bind_ip: str, path: str, timeout: float) -> tuple[int, bytes]:
    with socket.create_connection((server, 8080), timeout=timeout, source_address=(bind_ip, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {server}:8080\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise Failure(f"HTTP: {raw[:80]!r}")
    return int(head[9:12]), body


def good_http(ctx: Context) -> None:
    status, body = http_get(ctx.args.server, ctx.args.good_ip, "/boot.ipxe", ctx.args.timeout)
    if status != 200 or body != BOOT_IPXE:
        raise Failure(f"HTTP /boot.ipxe: {status} {body[:80]!r}")


def good_grpc(ctx: Context) -> None:
    import grpc

    from appliance.api.pb import messages_pb2, rpc_pb2_grpc

    tls = Path(ctx.args.work) / "tls"
    credentials = grpc.ssl_channel_credentials((tls / "ca.crt").read_bytes(), (tls / "client.key").read_bytes(),
                                               (tls / "client.crt").read_bytes())
    with grpc.secure_channel(f"{ctx.args.server}:8081", credentials) as channel:
        try:
            reply = rpc_pb2_grpc.ProfilesStub(channel).ProfileList(messages_pb2.ProfileListRequest(),
                                                                   timeout=ctx.args.timeout)
        except grpc.RpcError as exc:
            raise Failure(f"gRPC ProfileList: {exc.code()} {exc.details()}") from None
    if sorted(p.id for p in reply.profiles) != PROFILE_IDS:
        raise Failure(f"gRPC ProfileList: {[p.id for p in reply.profiles]}")


# --- the targets --------------------------------------------------------------------------------------

def run_udp(ctx: Context, sock: socket.socket, to: tuple[str, int], seeds: list[bytes], special: list,
            sync, good, freshen=None) -> None:
    """Mutated datagrams to `to`; `sync(sock)` after every --sync packets, `good()` after every --every."""
    args, rng = ctx.args, ctx.rng
    while ctx.sent < args.packets:
        packet = mutate(rng, seeds, special)
        if freshen is not None:
            packet = freshen(rng, packet)
        try:
            sock.sendto(packet, to)
        except OSError:
            ctx.detail["send-errors"] += 1
        ctx.sent += 1
        drain(sock)
        if ctx.sent % args.sync == 0 and not sync():
            ctx.detail["sync-missed"] += 1
        if ctx.sent % args.every == 0:
            ctx.check(good)


def drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(65536)
            n += 1
        except (BlockingIOError, InterruptedError):
            return n


def target_dhcp67(ctx: Context) -> None:
    sock = dhcp_socket(ctx.args.iface, 68)

    def sync() -> bool:
        xid = ctx.rng.getrandbits(32).to_bytes(4, "big")
        sock.sendto(dhcp_packet(1, 0, int.from_bytes(xid, "big"), b"\x52\x54\x00\xff\xff\xfe"),
                    ("255.255.255.255", 67))
        return recv_until(sock, lambda d, a: True if d[4:8] == xid else None, ctx.args.timeout) is not None

    run_udp(ctx, sock, ("255.255.255.255", 67), dhcp_seeds(ctx.rng), [dhcp_length_lie, dhcp_option_soup],
            sync, lambda c: good_offer(c, sock), fresh_dhcp)


def target_dhcp4011(ctx: Context) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ctx.args.fuzz_ip, 0))
    sock.setblocking(False)
    good_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    good_sock.bind((ctx.args.good_ip, 0))
    good_sock.setblocking(False)

    def sync() -> bool:
        xid = ctx.rng.getrandbits(32).to_bytes(4, "big")
        sock.sendto(dhcp_packet(3, 0, int.from_bytes(xid, "big"), b"\x52\x54\x00\xff\xff\xfe"), (ctx.args.server, 4011))
        return recv_until(sock, lambda d, a: True if d[4:8] == xid else None, ctx.args.timeout) is not None

    run_udp(ctx, sock, (ctx.args.server, 4011), dhcp_seeds(ctx.rng), [dhcp_length_lie, dhcp_option_soup],
            sync, lambda c: good_ack(c, good_sock), fresh_dhcp)


def target_tftp69(ctx: Context) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ctx.args.fuzz_ip, 0))
    sock.setblocking(False)

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # not the fuzz socket: its RRQ may be under way
    probe.bind((ctx.args.fuzz_ip, 0))

    def sync() -> bool:
        probe.sendto(tftp_rrq(b"fuzz-sync-missing"), (ctx.args.server, 69))
        return recv_until(probe, lambda d, a: True, ctx.args.timeout) is not None

    run_udp(ctx, sock, (ctx.args.server, 69), tftp_seeds(), [tftp_option_soup], sync, good_tftp)


def target_tftp_transfer(ctx: Context) -> None:
    """Transfers from the fuzz address, each fed mutated ACK/DATA/ERROR/RRQ packets on its transfer port,
    then ended with an ERROR; the next starts."""
    args, rng = ctx.args, ctx.rng
    seeds = transfer_seeds()
    while ctx.sent < args.packets:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((args.fuzz_ip, 0))
        try:
            sock.sendto(tftp_rrq(rng.choice((SMALL_FILE.encode(), b"undionly.kpxe")),
                                 **rng.choice(({}, {"blksize": b"1024"}, {"windowsize": b"4", "blksize": b"512"}))),
                        (args.server, 69))
            ready, _, _ = select.select([sock], [], [], args.timeout)
            if not ready:
                ctx.detail["sync-missed"] += 1
                continue
            first, peer = sock.recvfrom(65536)
            if first[:2] == b"\x00\x05":
                ctx.detail["start-refused"] += 1
                time.sleep(0.05)
                continue
            sock.setblocking(False)
            for _ in range(rng.randint(1, 100)):
                if ctx.sent >= args.packets:
                    break
                sock.sendto(mutate(rng, seeds, []), peer)
                ctx.sent += 1
                drain(sock)
                if ctx.sent % args.every == 0:
                    ctx.check(good_tftp)
            sock.sendto(b"\x00\x05\x00\x00fuzz done\0", peer)
            ctx.detail["transfers"] += 1
        finally:
            sock.close()


def target_dns_udp(ctx: Context) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ctx.args.fuzz_ip, 0))
    sock.setblocking(False)

    def sync() -> bool:
        query = DNSRecord.question(ZONE_NAME, "A")
        sock.sendto(query.pack(), (ctx.args.server, 53))
        key = query.pack()[:2]
        return recv_until(sock, lambda d, a: True if d[:2] == key else None, ctx.args.timeout) is not None

    run_udp(ctx, sock, (ctx.args.server, 53), dns_seeds(), [dns_length_lie], sync, good_dns_udp)


def target_dns_tcp(ctx: Context) -> None:
    """Mutated messages behind a 2-byte length (itself a lie at times) over TCP connections, reconnecting
    when bootd closes one; a valid query every --sync messages is read back (pacing)."""
    args, rng = ctx.args, ctx.rng
    seeds = dns_seeds()
    sock: socket.socket | None = None
    while ctx.sent < args.packets:
        if sock is None:
            sock = socket.create_connection((args.server, 53), timeout=args.timeout, source_address=(args.fuzz_ip, 0))
            ctx.detail["connections"] += 1
        message = mutate(rng, seeds, [dns_length_lie])
        length = len(message) if rng.random() < 0.9 else rng.choice((0, 1, 11, 12, 0xFFFF, len(message) + 1))
        try:
            sock.sendall(length.to_bytes(2, "big") + message[:0xFFFF])
            ctx.sent += 1
            if ctx.sent % args.sync == 0 or length != len(message):
                query = DNSRecord.question(ZONE_NAME, "A")
                sock.sendall(len(query.pack()).to_bytes(2, "big") + query.pack())
                if length != len(message):
                    raise Failure("after a length that lies, the stream is out of step: start again")
                while True:  # answers come in order; ours is the last
                    size = int.from_bytes(read_exact(sock, 2), "big")
                    if read_exact(sock, size)[:2] == query.pack()[:2]:
                        break
        except (OSError, Failure):
            end_gracefully(sock, args.timeout)
            sock = None
        if ctx.sent % args.every == 0:
            ctx.check(good_dns_tcp)
    if sock is not None:
        end_gracefully(sock, args.timeout)


def end_gracefully(sock: socket.socket, timeout: float) -> None:
    """Half-close and read to the end: closing with bootd's answers unread would send a reset, and bootd
    would lose the messages it had not read yet (they would never have been parsed)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(timeout)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


class RequestPool:
    """Requests on connections of their own, up to `width` at once: each waits (up to `wait` seconds) for the
    status line or the close; a request cut short by its mutation gets no answer, and that is fine."""

    def __init__(self, ctx: Context, server: str, port: int, width: int = 128, wait: float = 1.0) -> None:
        self.ctx, self.to, self.width, self.wait = ctx, (server, port), width, wait
        self.selector = selectors.DefaultSelector()

    def submit(self, request: bytes) -> None:
        while len(self.selector.get_map()) >= self.width:
            self.poll()
        sock = socket.socket()
        sock.bind((self.ctx.args.fuzz_ip, 0))
        sock.settimeout(self.ctx.args.timeout)
        try:
            sock.connect(self.to)
            sock.setblocking(False)
            try:
                sent = sock.send(request)  # what the buffer takes; a huge request is cut there
                if sent < len(request):
                    self.ctx.detail["request-cut-at-send-buffer"] += 1
            except BlockingIOError:
                self.ctx.detail["request-cut-at-send-buffer"] += 1
        except OSError as exc:
            self.ctx.detail[f"error {exc.errno}"] += 1
            sock.close()
            return
        self.selector.register(sock, selectors.EVENT_READ, time.monotonic() + self.wait)

    def poll(self) -> None:
        now = time.monotonic()
        for key, _ in self.selector.select(0.05):
            sock = key.fileobj
            try:
                head = sock.recv(12)
                self.ctx.detail[f"status {head[9:12].decode(errors='replace')}" if head else "closed by bootd"] += 1
            except OSError:
                self.ctx.detail["reset by bootd"] += 1
            self.selector.unregister(sock)
            sock.close()
        for key in list(self.selector.get_map().values()):
            if key.data < now:
                self.ctx.detail["no answer (incomplete request)"] += 1
                self.selector.unregister(key.fileobj)
                key.fileobj.close()

    def finish(self) -> None:
        while self.selector.get_map():
            self.poll()


def target_http(ctx: Context) -> None:
    """Idle connections held throughout (--idle), slow senders, and mutated or edge-case requests, each on a
    connection of its own; every status is counted (5xx: a handler failed)."""
    args, rng = ctx.args, ctx.rng
    idle = []
    t0 = time.monotonic()
    for i in range(args.idle):
        try:
            s = socket.socket()
            s.setblocking(False)
            s.bind((args.fuzz_ip, 0))
            s.connect_ex((args.server, 8080))
            idle.append(s)
        except OSError as exc:
            ctx.detail[f"idle-open-error {exc.errno}"] += 1
            break
        if i % 1000 == 999:
            time.sleep(0.05)
    ctx.detail["idle-opened"] = len(idle)
    ctx.detail["idle-open-seconds"] = round(time.monotonic() - t0, 1)
    ctx.check(good_http)  # with every idle connection open
    slow = []
    seeds = http_seeds()
    pool = RequestPool(ctx, args.server, 8080)
    while ctx.sent < args.packets:
        if ctx.sent % 500 == 0 and len(slow) < args.slow:
            s = socket.create_connection((args.server, 8080), timeout=args.timeout, source_address=(args.fuzz_ip, 0))
            s.setblocking(False)
            slow.append([s, b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"])
        for item in slow:  # a byte each turn
            if item[1]:
                try:
                    item[0].send(item[1][:1])
                    item[1] = item[1][1:]
                except OSError:
                    ctx.detail["slow-closed-by-bootd"] += 1
                    item[1] = b""
        request = http_specials(rng) if rng.random() < 0.4 else mutate(rng, seeds, [])
        pool.submit(request)
        ctx.sent += 1
        if ctx.sent % args.every == 0:
            pool.finish()
            ctx.check(good_http)
    pool.finish()
    ctx.check(good_http)
    for s in idle:
        s.close()
    for item in slow:
        item[0].close()


def target_grpc(ctx: Context) -> None:
    """Garbage at the gRPC port: random bytes, mutated ClientHellos, an HTTP/2 preface in clear text; each on
    a connection that is then closed. A good ProfileList (TLS with a client certificate) every --every."""
    args, rng = ctx.args, ctx.rng
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    while ctx.sent < args.packets:
        seeds = [tls_client_hello(rng), preface, b"GET / HTTP/1.1\r\n\r\n"]
        try:
            with socket.create_connection((args.server, 8081), timeout=args.timeout,
                                          source_address=(args.fuzz_ip, 0)) as s:
                s.sendall(mutate(rng, seeds, []))
                if ctx.sent % args.sync == 0:  # pacing: bootd's answer (an alert, a close) or a short wait
                    s.settimeout(0.2)
                    try:
                        s.recv(4096)
                    except TimeoutError:
                        ctx.detail["waiting for more bytes"] += 1
        except OSError as exc:
            ctx.detail[f"error {exc.errno}"] += 1
        ctx.sent += 1
        if ctx.sent % args.every == 0:
            ctx.check(good_grpc)


TARGETS = {"dhcp67": target_dhcp67, "dhcp4011": target_dhcp4011, "tftp69": target_tftp69,
           "tftp-transfer": target_tftp_transfer, "dns-udp": target_dns_udp, "dns-tcp": target_dns_tcp,
           "http": target_http, "grpc": target_grpc}


def good_offer_alone(ctx: Context) -> None:
    sock = dhcp_socket(ctx.args.iface, 68)
    try:
        good_offer(ctx, sock)
    finally:
        sock.close()


def good_ack_alone(ctx: Context) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ctx.args.good_ip, 0))
    try:
        good_ack(ctx, sock)
    finally:
        sock.close()


def target_good_loop(ctx: Context) -> None:
    """No fuzz: good DHCP (67 and 4011), TFTP, DNS (UDP and TCP) and HTTP requests in turn for --seconds
    (bench.fuzz --sighup reloads bootd meanwhile)."""
    kinds = [good_offer_alone, good_ack_alone, good_tftp, good_dns_udp, good_dns_tcp, good_http]
    deadline = time.monotonic() + ctx.args.seconds
    while time.monotonic() < deadline:
        for good in kinds:
            before = ctx.good_ok
            ctx.check(good)
            ctx.detail[f"{good.__name__} ok" if ctx.good_ok > before else f"{good.__name__} FAILED"] += 1


TARGETS["good-loop"] = target_good_loop


# The good request of each target, also made once before and once after its packets.
GOOD = {"dhcp67": good_offer_alone, "dhcp4011": good_ack_alone, "tftp69": good_tftp, "tftp-transfer": good_tftp,
        "dns-udp": good_dns_udp, "dns-tcp": good_dns_tcp, "http": good_http, "grpc": good_grpc,
        "good-loop": good_http}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", choices=sorted(TARGETS), required=True)
    parser.add_argument("--seconds", type=float, default=10.0, help="good-loop: how long")
    parser.add_argument("--packets", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--sync", type=int, default=100)
    parser.add_argument("--iface", required=True)
    parser.add_argument("--server", default="192.0.2.1")
    parser.add_argument("--fuzz-ip", default="192.0.2.2")
    parser.add_argument("--good-ip", default="192.0.2.3")
    parser.add_argument("--work", required=True)
    parser.add_argument("--small-sha256", required=True)
    parser.add_argument("--idle", type=int, default=0, help="HTTP connections opened and held, sending nothing")
    parser.add_argument("--slow", type=int, default=0, help="HTTP clients sending their request a byte at a time")
    parser.add_argument("--timeout", type=float, default=10.0, help="for each answer (only a failure waits it out)")
    args = parser.parse_args()
    if args.iface == "lo":
        sys.exit("refusing: give the client end of the campaign's veth pair")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = Context(args, random.Random(f"{args.seed}:{args.target}"))
    start = time.monotonic()
    ctx.check(GOOD[args.target])
    TARGETS[args.target](ctx)
    ctx.check(GOOD[args.target])
    print(json.dumps({"target": args.target, "sent": ctx.sent, "good": ctx.good, "good_ok": ctx.good_ok,
                      "failures": ctx.failures, "seconds": round(time.monotonic() - start, 1),
                      "detail": dict(sorted(ctx.detail.items()))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
