"""The DHCP server's batched path (recvmmsg/sendmmsg, appliance/mmsg.py) through real sockets on loopback:
a burst queued on the socket before the server reads, from several clients, garbage in between, is read in
one call, each client gets its own answer (its xid, its MAC, back to its own address and port), the garbage
is dropped and counted by reason, and the answers leave in one sendmmsg. The one-datagram path
(`batch=False`) gives the same answers. Authoritative mode's replies after the lease write go the same way."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from ipaddress import IPv4Address, IPv4Network

import pytest

from appliance import mmsg
from appliance.dhcp.authoritative import AddressPolicy
from appliance.dhcp.leases import LeaseTable
from appliance.dhcp.modes import DhcpMode
from appliance.dhcp.packet import HEADER, MAGIC_COOKIE, MessageType, Option, parse_packet
from appliance.dhcp.policy import DhcpPolicies
from appliance.dhcp.pxe import Firmware, PxePolicy
from appliance.dhcp.server import DhcpServer
from appliance.events import EventBus

pytestmark = pytest.mark.skipif(mmsg.functions() is None, reason="no recvmmsg/sendmmsg in this libc")

SERVER = IPv4Address("10.98.0.1")
POLICY = PxePolicy(available=frozenset(Firmware), http_port=8080)
GUID = b"\x00" + bytes(range(16))


def request(kind: int, i: int, *options: tuple[int, bytes], giaddr: bytes = bytes(4)) -> bytes:
    mac = bytes((2, 0, *i.to_bytes(4, "big")))
    header = HEADER.pack(1, 1, 6, 0, i, 0, 0, bytes(4), bytes(4), bytes(4), giaddr, mac.ljust(16, b"\0"), b"", b"")
    return header + MAGIC_COOKIE + bytes((53, 1, kind)) + b"".join(bytes((c, len(v))) + v for c, v in options) + b"\xff"


def pxe_request(i: int, arch: int, **kw) -> bytes:
    vendor = f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
    return request(MessageType.REQUEST, i, (93, struct.pack("!H", arch)), (94, b"\x01\x02\x01"), (60, vendor),
                   (97, GUID), **kw)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


GARBAGE = [(b"\x01" * 20, "short-packet"), (bytes(236) + b"nope" + b"\xff", "bad-magic-cookie"),
           (request(MessageType.REQUEST, 99)[:240] + b"\x35\x05\x03", "option-past-end")]


async def proxy_burst(batch: bool) -> tuple[DhcpServer, dict[int, list[bytes]], list[int], list[object]]:
    """Proxy mode, on 4011 (answered back to each sender): 12 clients on 4 sockets send PXE REQUESTs (BIOS
    and UEFI), with garbage between them; all of it is queued before the server's one read."""
    server = DhcpServer(policies=DhcpPolicies(mode=DhcpMode.PROXY, pxe=POLICY, addresses=None), bus=EventBus(),
                        port=free_port(), pxe_port=free_port(), bind_address="127.0.0.1", server_address=SERVER,
                        batch=batch)
    server.start()
    calls: list[int] = []
    if server._replies is not None:  # count the sendmmsg calls and what each sent
        real = server._replies._sendmmsg
        server._replies._sendmmsg = lambda fd, msgs, n, flags: calls.append(n) or real(fd, msgs, n, flags)
    seen: list[object] = []
    handle = server.handle_datagram
    server.handle_datagram = lambda sock, dgram, port, now: seen.append(dgram) or handle(sock, dgram, port, now)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for client in clients:
            client.bind(("127.0.0.1", 0))
            client.setblocking(False)
        to = ("127.0.0.1", server.bound_ports[1])
        for i in range(12):
            clients[i % 4].sendto(pxe_request(i, (0, 7, 9)[i % 3]), to)
            if i % 4 == 1:
                clients[i % 4].sendto(GARBAGE[i // 4][0], to)
        sock = server._sockets[1]
        server._drain(sock, server.pxe_port, server.stats.pxe)  # one read of everything queued
        await asyncio.sleep(0.05)  # the event bus's turn
        answers: dict[int, list[bytes]] = {}
        for n, client in enumerate(clients):
            while True:
                try:
                    answers.setdefault(n, []).append(client.recv(4096))
                except BlockingIOError:
                    break
        return server, answers, calls, seen
    finally:
        for client in clients:
            client.close()
        server.close()


@pytest.mark.parametrize("batch", [True, False])
def test_a_burst_from_several_clients_is_answered_each_correctly_and_garbage_is_counted(batch):
    server, answers, calls, seen = asyncio.run(proxy_burst(batch))
    for n in range(4):
        replies = [parse_packet(data) for data in answers[n]]
        assert [r.xid for r in replies] == [i for i in range(12) if i % 4 == n], "each client gets its own answers"
        for reply in replies:
            assert reply.message_type == MessageType.ACK
            assert reply.chaddr[:6] == bytes((2, 0, *reply.xid.to_bytes(4, "big")))
            assert reply.options[Option.GUID] == GUID and reply.options[Option.SERVER_ID] == SERVER.packed
            arch = (0, 7, 9)[reply.xid % 3]
            assert reply.file == (b"undionly.kpxe" if arch == 0 else b"ipxe.efi"), reply.file
    counts = server.stats.pxe
    assert (counts.received, counts.answered) == (15, 12)
    assert dict(counts.dropped) == {reason: 1 for _data, reason in GARBAGE}
    lo = socket.if_nametoindex("lo")
    assert {(d.ifindex, d.local_ip) for d in seen} == {(lo, IPv4Address("127.0.0.1"))}, "IP_PKTINFO read"
    assert len({d.source for d in seen}) == 4
    if batch:
        assert calls == [12], "one sendmmsg for the burst's answers"
    else:
        assert server._reader is None and calls == []


@pytest.mark.skipif(os.geteuid() != 0, reason="a relay's replies go to port 67")
def test_a_relayed_request_in_a_batch_is_answered_to_the_relay():
    async def run() -> tuple[bytes, DhcpServer]:
        relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        relay.bind(("127.0.0.3", 67))
        relay.settimeout(5)
        server = DhcpServer(policies=DhcpPolicies(mode=DhcpMode.PROXY, pxe=POLICY, addresses=None), bus=EventBus(),
                            port=free_port(), pxe_port=free_port(), bind_address="127.0.0.1", server_address=SERVER)
        server.start()
        try:
            discover = request(MessageType.DISCOVER, 7, (93, b"\x00\x00"), (60, b"PXEClient:Arch:00000:UNDI:002001"),
                               (97, GUID), giaddr=socket.inet_aton("127.0.0.3"))
            relay.sendto(b"garbage", ("127.0.0.1", server.bound_ports[0]))
            relay.sendto(discover, ("127.0.0.1", server.bound_ports[0]))
            server._drain(server._sockets[0], server.port, server.stats.dhcp)
            return relay.recv(4096), server
        finally:
            relay.close()
            server.close()

    data, server = asyncio.run(run())
    offer = parse_packet(data)
    assert (offer.message_type, offer.xid, offer.giaddr) == (MessageType.OFFER, 7, IPv4Address("127.0.0.3"))
    assert server.stats.dhcp.dropped == {"short-packet": 1} and server.stats.dhcp.answered == 1


def test_authoritative_offers_and_acks_after_the_lease_write_leave_in_batches(tmp_path):
    """DISCOVERs answered in the read's batch; the ACKs, sent once the journal line is on disk (outside any
    read), gathered and sent together at the loop's next turn; each to the right client."""
    policy = AddressPolicy(subnet=IPv4Network("10.98.0.0/16"), first=IPv4Address("10.98.0.10"),
                           last=IPv4Address("10.98.0.250"))

    async def run() -> tuple[list[list[bytes]], list[int], DhcpServer]:
        server = DhcpServer(policies=DhcpPolicies(mode=DhcpMode.AUTHORITATIVE, pxe=PxePolicy(), addresses=policy),
                            bus=EventBus(), leases=LeaseTable(tmp_path / "leases.json"), port=free_port(),
                            pxe_port=0, bind_address="127.0.0.1", server_address=SERVER)
        server.start()
        calls: list[int] = []
        real = server._replies._sendmmsg
        server._replies._sendmmsg = lambda fd, msgs, n, flags: calls.append(n) or real(fd, msgs, n, flags)
        sent: list[tuple[str, int, int]] = []
        add = server._replies.add
        server._replies.add = lambda data, address, port, dgram: (
            sent.append((address, port, parse_packet(data).message_type)), add(data, address, port, dgram))
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            to = ("127.0.0.1", server.bound_ports[0])
            sock = server._sockets[0]
            for i in range(5):
                client.sendto(request(MessageType.DISCOVER, i), to)
            server._drain(sock, server.port, server.stats.dhcp)
            offers = [call for call in calls]
            offered = [server.leases.offered_to(f"02:00:00:00:00:{i:02x}", 0.0) for i in range(5)]
            calls.clear()
            for i in range(5):
                client.sendto(request(MessageType.REQUEST, i, (50, offered[i].packed), (54, SERVER.packed)), to)
            server._drain(sock, server.port, server.stats.dhcp)
            for _ in range(3000):  # until the ACKs are out (the lease writes are real fsyncs: a loaded disk is slow)
                if server.stats.dhcp.answered == 10:
                    break
                await asyncio.sleep(0.01)
            return [offers, list(calls)], sent, server
        finally:
            client.close()
            server.close()

    (offers, acks), sent, server = asyncio.run(run())
    assert offers == [5], "the five OFFERs in one sendmmsg"
    # the first REQUEST's lease is written at once (nothing was being written), the four read with it wait
    # and share the next write: their ACKs leave together
    assert acks == [1, 4], "the ACKs of one lease write in one sendmmsg"
    assert [kind for _address, _port, kind in sent] == [MessageType.OFFER] * 5 + [MessageType.ACK] * 5
    assert {(address, port) for address, port, _kind in sent} == {("255.255.255.255", 68)}
    assert server.stats.dhcp.answered == 10 and server.stats.lease_write_failures == 0
    assert sorted(lease.mac for lease in server.leases.leases(0.0)) == [f"02:00:00:00:00:{i:02x}" for i in range(5)]
