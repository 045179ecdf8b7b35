"""DHCP clients that behave as RFC 2131 clients do when several servers answer, run inside a test's client
namespace (never on a real interface). Raw packets, one socket, many clients in flight.

    python -m tests.dhcp_race --iface IF dora --count 2000 [--first N] [--window 64] [--secs 60]
    python -m tests.dhcp_race --iface IF renew MAC=IP [MAC=IP ...]      (REBINDING: broadcast, ciaddr, no server id)
    python -m tests.dhcp_race --iface IF discover --count 5 [--first N] [--secs 3]   (OFFERs only, no REQUEST)

`dora`: each client (MAC 02:01:xx:xx:xx:xx, numbered from --first) broadcasts a DISCOVER, takes the FIRST
OFFER that arrives (whichever server sent it), broadcasts one REQUEST naming that server (options 50, 54),
and is done at the ACK; a NAK sends it back to DISCOVER (RFC 2131 §4.4.1); no answer retransmits the same
message after 1, 2, 4, 8, 8... s (RFC 2131 §4.1 backs off the same way from 4 s; at most 8 times, then the
client gives up). Prints one JSON object:
`acked` {mac: [ip, server id, lease seconds]}, `naks`, `retransmits`, `given_up`, `seconds`, `dora_per_s`.
`renew`: one REQUEST per MAC for its address; prints `acked` (ACKs) and `naked` (NAKs) the same way.
`discover`: DISCOVERs only, for --secs; prints `offers` {mac: [ip, server id]}.
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
RETRY_SECONDS = 1.0  # the first retransmission's wait; doubled each time up to MAX_RETRY_SECONDS
MAX_RETRY_SECONDS = 8.0
MAX_TRIES = 8


def packet(kind: int, mac: bytes, xid: int, *, ciaddr: bytes = bytes(4), requested: bytes | None = None,
           server: bytes | None = None) -> bytes:
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, ciaddr, bytes(4), bytes(4),
                         bytes(4), mac.ljust(16, b"\0"), b"", b"")
    options = bytes((53, 1, kind)) + bytes((55, 4, 1, 3, 6, 51))
    if requested is not None:
        options += bytes((50, 4)) + requested
    if server is not None:
        options += bytes((54, 4)) + server
    return header + MAGIC + options + b"\xff"


def options_of(data: bytes) -> dict[int, bytes]:
    found, i = {}, 240
    while i < len(data) - 1 and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        found[data[i]] = data[i + 2 : i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return found


@dataclass
class Client:
    mac: bytes
    xid: int
    message: bytes
    sent_at: float
    tries: int = 1
    requesting: bool = False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", required=True)
    sub = parser.add_subparsers(dest="mode", required=True)
    dora = sub.add_parser("dora")
    dora.add_argument("--count", type=int, required=True)
    dora.add_argument("--first", type=int, default=0)
    dora.add_argument("--window", type=int, default=64)
    dora.add_argument("--secs", type=float, default=60)
    renew = sub.add_parser("renew")
    renew.add_argument("leases", nargs="+")
    renew.add_argument("--secs", type=float, default=5)
    discover = sub.add_parser("discover")
    discover.add_argument("--count", type=int, required=True)
    discover.add_argument("--first", type=int, default=0)
    discover.add_argument("--secs", type=float, default=3)
    args = parser.parse_args()
    if args.iface == "lo":
        sys.exit("refusing: give the client end of the test's veth pair")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("0.0.0.0", 68))
    sock.setblocking(False)
    rng = random.Random(7)
    out: dict[str, object] = {}
    start = time.monotonic()

    def send(data: bytes) -> None:
        sock.sendto(data, ("255.255.255.255", 67))

    def replies(timeout: float):
        ready, _, _ = select.select([sock], [], [], timeout)
        while ready:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                return
            if len(data) >= 244 and data[0] == 2 and data[236:240] == MAGIC:
                yield data

    def mac_of(n: int) -> bytes:
        return b"\x02\x01" + n.to_bytes(4, "big")

    if args.mode == "dora":
        waiting = [mac_of(args.first + i) for i in range(args.count)][::-1]
        flying: dict[tuple[int, bytes], Client] = {}
        acked: dict[str, list] = {}
        naks = retransmits = given_up = 0
        deadline = start + args.secs
        while (waiting or flying) and time.monotonic() < deadline:
            now = time.monotonic()
            while waiting and len(flying) < args.window:
                mac, xid = waiting.pop(), rng.getrandbits(32)
                client = Client(mac, xid, packet(DISCOVER, mac, xid), now)
                flying[xid, mac] = client
                send(client.message)
            for key, client in list(flying.items()):
                if now - client.sent_at > min(RETRY_SECONDS * 2 ** (client.tries - 1), MAX_RETRY_SECONDS):
                    if client.tries >= MAX_TRIES:
                        del flying[key]
                        given_up += 1
                        continue
                    client.tries += 1
                    client.sent_at = now
                    retransmits += 1
                    send(client.message)
            for data in replies(0.01):
                key = (int.from_bytes(data[4:8], "big"), bytes(data[28:34]))
                client = flying.get(key)
                if client is None:
                    continue
                opts = options_of(data)
                kind = opts.get(53, b"\0")[0]
                if kind == OFFER and not client.requesting:  # the first OFFER wins; later ones are ignored
                    client.requesting, client.tries, client.sent_at = True, 1, time.monotonic()
                    client.message = packet(REQUEST, client.mac, client.xid, requested=data[16:20], server=opts[54])
                    send(client.message)
                elif kind == ACK and client.requesting:
                    del flying[key]
                    acked[client.mac.hex(":")] = [socket.inet_ntoa(data[16:20]), socket.inet_ntoa(opts[54]),
                                                  int.from_bytes(opts.get(51, bytes(4)), "big")]
                elif kind == NAK and client.requesting:  # back to INIT with a new transaction
                    del flying[key]
                    naks += 1
                    xid = rng.getrandbits(32)
                    fresh = Client(client.mac, xid, packet(DISCOVER, client.mac, xid), time.monotonic())
                    flying[xid, client.mac] = fresh
                    send(fresh.message)
        seconds = time.monotonic() - start
        out = {"acked": acked, "naks": naks, "retransmits": retransmits, "given_up": given_up,
               "unfinished": len(flying) + len(waiting), "seconds": round(seconds, 3),
               "dora_per_s": round(len(acked) / seconds, 1)}
    elif args.mode == "renew":
        pending: dict[tuple[int, bytes], bytes] = {}
        for item in args.leases:
            mac_text, ip = item.split("=")
            mac, xid = bytes.fromhex(mac_text.replace(":", "")), rng.getrandbits(32)
            pending[xid, mac] = packet(REQUEST, mac, xid, ciaddr=socket.inet_aton(ip))
        acked, naked = {}, {}
        last_sent = 0.0
        deadline = start + args.secs
        while pending and time.monotonic() < deadline:
            if time.monotonic() - last_sent > RETRY_SECONDS:
                for message in pending.values():
                    send(message)
                last_sent = time.monotonic()
            for data in replies(0.05):
                key = (int.from_bytes(data[4:8], "big"), bytes(data[28:34]))
                if key not in pending:
                    continue
                opts = options_of(data)
                kind = opts.get(53, b"\0")[0]
                record = [socket.inet_ntoa(data[16:20]), socket.inet_ntoa(opts.get(54, bytes(4))),
                          int.from_bytes(opts.get(51, bytes(4)), "big")]
                if kind in (ACK, NAK):
                    (acked if kind == ACK else naked)[key[1].hex(":")] = record
                    del pending[key]
        out = {"acked": acked, "naked": naked}
    else:
        offers: dict[str, list] = {}
        sent: dict[tuple[int, bytes], bytes] = {}
        for i in range(args.count):
            mac, xid = mac_of(args.first + i), rng.getrandbits(32)
            sent[xid, mac] = packet(DISCOVER, mac, xid)
        last_sent = 0.0
        while time.monotonic() < start + args.secs:
            if time.monotonic() - last_sent > RETRY_SECONDS:
                for message in sent.values():
                    send(message)
                last_sent = time.monotonic()
            for data in replies(0.05):
                key = (int.from_bytes(data[4:8], "big"), bytes(data[28:34]))
                opts = options_of(data)
                if key in sent and opts.get(53, b"\0")[0] == OFFER:
                    offers[key[1].hex(":")] = [socket.inet_ntoa(data[16:20]), socket.inet_ntoa(opts[54])]
        out = {"offers": offers}
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
