"""PXE DHCPDISCOVER load, run inside the benchmark's client namespace (never on a real interface).

    python -m bench.dhcp_load --iface IF [--rate 1000 | --window 32] [--secs 5] [--arch 0]

Sends BIOS/UEFI PXE DISCOVERs (broadcast flag, options 53, 57, 55, 97, 94, 93, 60, a new MAC and xid for
each) from UDP 68 to 255.255.255.255:67 and matches OFFERs by xid and MAC. `--rate N` is open loop (N per
second, for latency); without it, closed loop with `--window` outstanding (for the maximum rate). Prints
one JSON object: sent, offers, offers_per_s, loss_pct, p50_ms, p99_ms, and one sample reply in hex.
Bounded by --secs (+1 s for late answers).
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


def discover(arch: int) -> bytearray:
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0, 4, 0x8000, bytes(4), bytes(4), bytes(4),
                         bytes(4), bytes(16), b"", b"")

    def option(code: int, value: bytes) -> bytes:
        return bytes((code, len(value))) + value

    options = (option(53, b"\x01") + option(57, struct.pack("!H", 1472))
               + option(55, bytes([1, 2, 3, 5, 6, 12, 13, 15, 17, 43, 54, 60, 66, 67, 97, 128, 129, 130]))
               + option(97, b"\x00" + bytes(range(16))) + option(94, b"\x01\x02\x01")
               + option(93, struct.pack("!H", arch)) + option(60, f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode())
               + b"\xff")
    return bytearray(header + MAGIC + options)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--secs", type=float, default=5.0)
    parser.add_argument("--arch", type=int, default=0)
    parser.add_argument("--macs", type=int, default=0, help="cycle over this many MACs (0: a new MAC each time)")
    args = parser.parse_args()
    if args.iface == "lo":
        sys.exit("refusing: give the client end of the benchmark's veth pair")
    template = discover(args.arch)
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
    sent = send_errors = unmatched = 0
    sample = ""
    start = time.perf_counter()
    end = start + args.secs
    while True:
        now = time.perf_counter()
        if now < end:
            due = int((now - start) * args.rate) - sent if args.rate else args.window - len(pending)
            for _ in range(max(0, min(due, 256))):
                xid = rng.getrandbits(32)
                mac = macs[sent % len(macs)] if macs else b"\x52\x54\x00" + rng.randbytes(3)
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
            sent_at = pending.pop((int.from_bytes(data[4:8], "big"), bytes(data[28:34])), None)
            if sent_at is None:
                unmatched += 1
                continue
            latencies.append(time.perf_counter() - sent_at)
            sample = sample or data.hex()
    elapsed = min(time.perf_counter(), end) - start
    latencies.sort()

    def quantile(q: float) -> float | None:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

    json.dump({"sent": sent, "offers": len(latencies), "offers_per_s": round(len(latencies) / elapsed, 1),
               "loss_pct": round(100 * (sent - len(latencies)) / max(sent, 1), 2), "p50_ms": quantile(0.5),
               "p99_ms": quantile(0.99), "send_errors": send_errors, "unmatched": unmatched, "sample": sample},
              sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
