"""Authoritative mode under overload finishes exchanges before starting new ones: with a flood of DISCOVERs
waiting on the socket, a REQUEST behind them is answered first, DISCOVERs newest first, a bounded backlog
(the oldest beyond it dropped and counted), and every DISCOVER within the bound is answered in the end,
except one whose client REQUESTed in the same exchange meanwhile.
A real UDP socket on loopback holds the flood (queued before the server reads), the real server drains it."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv4Network

from appliance.dhcp.authoritative import AddressPolicy
from appliance.dhcp.leases import LeaseTable
from appliance.dhcp.modes import DhcpMode
from appliance.dhcp.packet import HEADER, MAGIC_COOKIE, parse_packet
from appliance.dhcp.policy import DhcpPolicies
from appliance.dhcp.pxe import PxePolicy
from appliance.dhcp.server import _DISCOVER_BACKLOG, _DISCOVERS_PER_TURN, DhcpServer
from appliance.events import EventBus

SERVER = IPv4Address("10.97.0.1")
OTHER = IPv4Address("10.97.0.2")


def request(kind: int, i: int, *options: tuple[int, bytes]) -> bytes:
    mac = bytes((2, 0, *i.to_bytes(4, "big")))
    header = HEADER.pack(1, 1, 6, 0, i, 0, 0, bytes(4), bytes(4), bytes(4), bytes(4), mac.ljust(16, b"\0"), b"", b"")
    return header + MAGIC_COOKIE + bytes((53, 1, kind)) + b"".join(bytes((c, len(v))) + v for c, v in options) + b"\xff"


async def flood(discovers: int, *, chose_other: int = 0) -> tuple[DhcpServer, list[tuple[int, int]],
                                                                list[tuple[int, int]]]:
    """One client is offered an address; then `discovers` new clients' DISCOVERs and that client's REQUEST
    wait on the socket (or, with `chose_other`, the REQUEST of that flooding client, for another server's
    offer). Returns the server and the (message type, xid) of what it sent, after one read and in the end."""
    policy = AddressPolicy(subnet=IPv4Network("10.97.0.0/16"), first=IPv4Address("10.97.0.10"),
                           last=IPv4Address("10.97.255.250"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a free port for 67's part (0 is 4011's)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = DhcpServer(policies=DhcpPolicies(mode=DhcpMode.AUTHORITATIVE, pxe=PxePolicy(), addresses=policy),
                        bus=EventBus(), leases=LeaseTable(), port=port, pxe_port=0, bind_address="127.0.0.1",
                        server_address=SERVER)
    sent: list[tuple[int, int]] = []
    server._send = lambda sock, data, address, port, dgram: sent.append(  # type: ignore[method-assign]
        (parse_packet(data).message_type, parse_packet(data).xid))
    server.start()
    sock = server._sockets[0]
    counts = server.stats.dhcp
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        to = ("127.0.0.1", server.bound_ports[0])
        client.sendto(request(1, 0), to)
        await asyncio.sleep(0.05)  # the loop reads it: the first client's OFFER
        offered = server.leases.offered_to("02:00:00:00:00:00", 0.0)
        sent.clear()
        for i in range(1, discovers + 1):
            client.sendto(request(1, i), to)
        if chose_other:
            client.sendto(request(3, chose_other, (50, IPv4Address("10.97.0.99").packed), (54, OTHER.packed)), to)
        else:
            client.sendto(request(3, 0, (50, offered.packed), (54, SERVER.packed)), to)
        server._drain(sock, port, counts)  # one read, before the loop gets a turn
        first = list(sent)
        for _ in range(discovers):
            await asyncio.sleep(0)
        return server, first, sent
    finally:
        client.close()
        server.close()


def test_a_request_behind_a_flood_of_discovers_is_answered_first_and_the_discovers_newest_first():
    server, first, everything = asyncio.run(flood(40))
    assert first[0] == (5, 0), "the REQUEST's ACK leaves before any OFFER"
    assert first[1:] == [(2, xid) for xid in range(40, 40 - _DISCOVERS_PER_TURN, -1)]
    assert sorted(everything[1:]) == [(2, xid) for xid in range(1, 41)], "every DISCOVER is answered in the end"
    assert server.stats.dhcp.dropped["overload"] == 0


def test_the_backlog_is_bounded_and_what_falls_off_it_is_counted():
    extra = 44
    server, first, everything = asyncio.run(flood(_DISCOVER_BACKLOG + extra))
    assert first[0] == (5, 0)
    offered = sorted(xid for kind, xid in everything if kind == 2)
    assert offered == list(range(extra + 1, _DISCOVER_BACKLOG + extra + 1)), "the oldest were dropped"
    assert server.stats.dhcp.dropped["overload"] == extra
    assert server.stats.dhcp.received == 1 + _DISCOVER_BACKLOG + extra + 1


def test_a_waiting_discover_whose_client_requested_meanwhile_is_dropped_and_holds_no_address():
    """Its client took an offer already (another server's here): an OFFER now would hold an address for nobody
    for 30 s (with two replicas, hundreds of those once made a range look exhausted)."""
    server, _, everything = asyncio.run(flood(40, chose_other=7))
    assert (2, 7) not in everything and (5, 7) not in everything
    assert sorted(everything) == [(2, xid) for xid in range(1, 41) if xid != 7]
    assert server.stats.dhcp.dropped["stale-discover"] == 1
    assert server.leases.offered_to("02:00:00:00:00:07", 0.0) is None
    assert server.stats.dhcp.received == 1 + 40 + 1
