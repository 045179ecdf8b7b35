"""Wait for an IPv6 router advertisement on an interface, soliciting one every second; print it as JSON.

    python -m tests.ra_listen --iface IF [--wait 10]
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time

IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", required=True)
    parser.add_argument("--wait", type=float, default=10.0)
    args = parser.parse_args()
    ifindex = socket.if_nametoindex(args.iface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    solicitation = struct.pack("!BBHI", 133, 0, 0, 0)
    deadline = time.monotonic() + args.wait
    next_solicit = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_solicit:
            try:
                sock.sendto(solicitation, ("ff02::2", 0, 0, ifindex))
            except OSError:
                pass  # the link-local address may still be tentative
            next_solicit = time.monotonic() + 1.0
        ready, _, _ = select.select([sock], [], [], 0.2)
        if not ready:
            continue
        data, ancdata, _flags, source = sock.recvmsg(1500, socket.CMSG_SPACE(4))
        if not data or data[0] != 134:
            continue
        hoplimit = next((struct.unpack("=i", d[:4])[0] for level, kind, d in ancdata
                         if level == socket.IPPROTO_IPV6 and kind == IPV6_HOPLIMIT), None)
        _type, _code, _sum, cur_hop, flags, lifetime, reachable, retrans = struct.unpack("!BBHBBHII", data[:16])
        json.dump({"source": source[0], "hoplimit": hoplimit, "flags": flags, "router_lifetime": lifetime,
                   "options": data[16:].hex()}, sys.stdout)
        return 0
    json.dump(None, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
