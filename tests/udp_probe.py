"""Send datagrams and print the answers as JSON: the test's stand-in for a client inside a namespace.

    python -m tests.udp_probe --bind 0.0.0.0:68 --to 255.255.255.255:67 [--iface IF] [--wait 2] [--expect N]
                              [--pause 0] HEX [HEX ...]

Bounded: it stops after --expect answers or --wait seconds of silence after the last send.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="0.0.0.0:68")
    parser.add_argument("--to", required=True)
    parser.add_argument("--iface")
    parser.add_argument("--wait", type=float, default=2.0)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between sends")
    parser.add_argument("--file", help="read hex payloads from this file, one per line")
    parser.add_argument("payloads", nargs="*")
    args = parser.parse_args()
    payloads = args.payloads + (open(args.file).read().split() if args.file else [])
    host, port = args.bind.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    if args.iface:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    sock.bind((host, int(port)))
    to_host, to_port = args.to.rsplit(":", 1)
    answers = []
    for payload in payloads:
        sock.sendto(bytes.fromhex(payload), (to_host, int(to_port)))
        if args.pause:
            time.sleep(args.pause)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline and not (args.expect and len(answers) >= args.expect):
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            data, source = sock.recvfrom(65535)
            answers.append({"from": f"{source[0]}:{source[1]}", "data": data.hex()})
    json.dump(answers, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
