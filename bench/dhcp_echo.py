"""The load generator's ceiling: a responder that does as little as a proxy-DHCP server can, run in the
benchmark's server namespace (never on a real interface).

    python -m bench.dhcp_echo --iface IF --server-ip 10.96.0.1

Answers every DISCOVER on UDP 67 with one pre-built proxy OFFER in which only the xid and the client's
hardware address are patched (no decision, no event, no log): what bench/dhcp.py measures against it is
how many exchanges a second the load generator itself can drive. A server measured near that number was
limited by the load, not by its own work.
"""

from __future__ import annotations

import argparse
import select
import socket

from bench.dhcp_load import discover


def offer_template(server_ip: str) -> bytes:
    offer = bytearray(discover(0))
    offer[0] = 2  # BOOTREPLY
    at = bytes(offer).index(b"\x35\x01\x01")
    offer[at + 2] = 2  # OFFER
    return bytes(offer[:-1]) + b"\x36\x04" + socket.inet_aton(server_ip) + b"\xff"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", required=True)
    parser.add_argument("--server-ip", required=True)
    args = parser.parse_args()
    if args.iface == "lo":
        raise SystemExit("refusing: give the server end of the benchmark's veth pair")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind(("0.0.0.0", 67))
    sock.setblocking(False)
    offer = offer_template(args.server_ip)
    head, tail = offer[:4], offer[34:]  # the reply takes the request's bytes 4-33: xid .. chaddr
    poll = select.epoll()
    poll.register(sock.fileno(), select.EPOLLIN)
    recv, send, broadcast = sock.recv, sock.sendto, ("255.255.255.255", 68)
    while True:
        poll.poll()
        while True:
            try:
                data = recv(2048)
            except BlockingIOError:
                break
            if len(data) >= 240 and data[0] == 1:
                send(head + data[4:34] + tail, broadcast)


if __name__ == "__main__":
    raise SystemExit(main())
