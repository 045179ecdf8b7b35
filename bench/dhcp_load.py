"""PXE DHCPDISCOVER load, run inside the benchmark's client namespace (never on a real interface).

    python -m bench.dhcp_load --iface IF [--rate 1000 | --window 32] [--secs 5] [--arch 0] [--dora]
        [--count N] [--sequential] [--acked FILE] [--deciles]

Sends BIOS/UEFI PXE DISCOVERs (broadcast flag, options 53, 57, 55, 97, 94, 93, 60, a new MAC and xid for
each) from UDP 68 to 255.255.255.255:67 and matches OFFERs by xid and MAC. `--rate N` is open loop (N per
second, for latency); without it, closed loop with `--window` outstanding (for the maximum rate). Prints
one JSON object: sent, offers, offers_per_s, loss_pct, p50_ms, p99_ms, and one sample reply in hex.
Bounded by --secs (+1 s for late answers).

`--dora`: the whole exchange (authoritative servers): each OFFER is answered with a REQUEST for the offered
address (options 50 and 54), and what counts is the ACK (offers_per_s is then DORAs per second, p50/p99 from
DISCOVER to ACK). `--count N` stops after N clients; `--sequential` numbers the MACs 02:00:xx:xx:xx:xx in order
(as perfdhcp does) instead of random ones; `--acked FILE` appends "MAC IP" for each ACK as it arrives (the kill
-9 test compares it with the lease file); `--deciles` adds the answer rate over each tenth of the answers.
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

MAGIC = b"\x63\x82\x53\x63"


VARIED = [  # (arch, vendor class, parameter list) as real firmware sends them
    (0, b"PXEClient:Arch:00000:UNDI:002001", bytes([1, 2, 3, 5, 6, 12, 13, 15, 17, 43, 54, 60, 66, 67, 97, 128, 129, 130])),
    (7, b"PXEClient:Arch:00007:UNDI:003016", bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])),
    (9, b"PXEClient:Arch:00009:UNDI:003016", bytes([1, 3, 6, 43, 60, 66, 67, 97])),
    (0, b"PXEClient:Arch:00000:UNDI:002001", bytes([1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135])),
    (7, b"PXEClient:Arch:00007:UNDI:003000", bytes([1, 2, 3, 5, 6, 12, 13, 15, 17, 43, 54, 60, 66, 67, 97, 128])),
]


def discover(arch: int, vendor: bytes | None = None, parameters: bytes | None = None) -> bytearray:
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0, 4, 0x8000, bytes(4), bytes(4), bytes(4),
                         bytes(4), bytes(16), b"", b"")

    def option(code: int, value: bytes) -> bytes:
        return bytes((code, len(value))) + value

    options = (option(53, b"\x01") + option(57, struct.pack("!H", 1472))
               + option(55, parameters or bytes([1, 2, 3, 5, 6, 12, 13, 15, 17, 43, 54, 60, 66, 67, 97, 128, 129, 130]))
               + option(97, b"\x00" + bytes(range(16))) + option(94, b"\x01\x02\x01")
               + option(93, struct.pack("!H", arch)) + option(60, vendor or f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode())
               + b"\xff")
    return bytearray(header + MAGIC + options)


def message_type(data: bytes) -> int:
    return option(data, 53)[:1][0] if option(data, 53) else 0


def server_id(data: bytes) -> bytes:
    return option(data, 54) or data[20:24]


def option(data: bytes, code: int) -> bytes:
    i = 240
    while i < len(data) - 1:
        kind = data[i]
        if kind == 255:
            break
        if kind == 0:
            i += 1
            continue
        if kind == code:
            return data[i + 2 : i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return b""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--secs", type=float, default=5.0)
    parser.add_argument("--arch", type=int, default=0)
    parser.add_argument("--macs", type=int, default=0, help="cycle over this many MACs (0: a new MAC each time)")
    parser.add_argument("--dora", action="store_true")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--first", type=int, default=0, help="with --sequential: the first MAC's number")
    parser.add_argument("--acked", default="")
    parser.add_argument("--deciles", action="store_true")
    parser.add_argument("--varied", action="store_true",
                        help="clients as varied as real firmware: a random GUID each, BIOS and UEFI, several vendor "
                             "classes and parameter lists")
    args = parser.parse_args()
    if args.iface == "lo":
        sys.exit("refusing: give the client end of the benchmark's veth pair")
    template = discover(args.arch)
    varied = [discover(*kind) for kind in VARIED]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("0.0.0.0", 68))
    sock.setblocking(False)
    rng = random.Random(1234)
    macs = [b"\x52\x54\x00" + rng.randbytes(3) for _ in range(args.macs)]
    pending: dict[tuple[int, bytes], float] = {}
    latencies: list[float] = []
    answered_at: list[float] = []
    acked = open(args.acked, "a", buffering=1) if args.acked else None
    request = bytearray(template)
    request[0:2] = b"\x01\x01"
    base_options = bytes(template[240:]).replace(b"\x35\x01\x01", b"\x35\x01\x03", 1).rstrip(b"\xff")
    sent = send_errors = unmatched = 0
    sample = ""
    start = time.perf_counter()
    end = start + args.secs
    while True:
        now = time.perf_counter()
        if now < end and not (args.count and sent >= args.count):
            due = int((now - start) * args.rate) - sent if args.rate else args.window - len(pending)
            if args.count:
                due = min(due, args.count - sent)
            for _ in range(max(0, min(due, 256))):
                xid = rng.getrandbits(32)
                mac = (macs[sent % len(macs)] if macs else (b"\x02\x00" + (args.first + sent).to_bytes(4, "big")) if args.sequential
                       else b"\x52\x54\x00" + rng.randbytes(3))
                if args.varied:
                    template = varied[sent % len(varied)]
                    guid_at = bytes(template).index(b"\x61\x11\x00") + 3
                    template[guid_at : guid_at + 16] = rng.randbytes(16)
                template[4:8] = xid.to_bytes(4, "big")
                template[28:34] = mac
                try:
                    sock.sendto(template, ("255.255.255.255", 67))
                except OSError:
                    send_errors += 1
                    continue
                pending[(xid, mac)] = time.perf_counter()
                sent += 1
        elif now > end + 1.0 or not pending:
            break
        if args.count and sent >= args.count and now - (answered_at[-1] if answered_at else start) > 1.0:
            break  # the rest were lost (no retransmission here): loss_pct says how many
        ready, _, _ = select.select([sock], [], [], 0.0005)
        if not ready:
            continue
        for _ in range(512):
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            if len(data) < 244 or data[0] != 2 or data[236:240] != MAGIC:
                continue
            key = (int.from_bytes(data[4:8], "big"), bytes(data[28:34]))
            if args.dora:
                kind = message_type(data)
                if kind == 2 and key in pending:  # OFFER: ask for it (the clock runs on until the ACK)
                    request[4:8], request[28:34] = data[4:8], data[28:34]
                    options = base_options + b"\x32\x04" + data[16:20] + b"\x36\x04" + server_id(data) + b"\xff"
                    try:
                        sock.sendto(bytes(request[:240]) + options, ("255.255.255.255", 67))
                    except OSError:
                        send_errors += 1
                    continue
                if kind != 5:
                    unmatched += 1
                    continue
            sent_at = pending.pop(key, None)
            if sent_at is None:
                unmatched += 1
                continue
            done = time.perf_counter()
            latencies.append(done - sent_at)
            answered_at.append(done)
            if acked is not None:
                acked.write(f"{data[28:34].hex(':')} {socket.inet_ntoa(data[16:20])}\n")
            sample = sample or data.hex()
    elapsed = (answered_at[-1] if args.count and answered_at else min(time.perf_counter(), end)) - start
    deciles = []
    if args.deciles and len(answered_at) >= 20:
        tenth = len(answered_at) // 10
        for i in range(10):
            span = answered_at[(i + 1) * tenth - 1] - answered_at[i * tenth]
            deciles.append(round((tenth - 1) / span, 1) if span > 0 else None)
    latencies.sort()

    def quantile(q: float) -> float | None:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

    json.dump({"sent": sent, "offers": len(latencies), "offers_per_s": round(len(latencies) / elapsed, 1),
               "loss_pct": round(100 * (sent - len(latencies)) / max(sent, 1), 2), "p50_ms": quantile(0.5),
               "p99_ms": quantile(0.99), "send_errors": send_errors, "unmatched": unmatched, "sample": sample,
               **({"deciles_per_s": deciles} if args.deciles else {})},
              sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
