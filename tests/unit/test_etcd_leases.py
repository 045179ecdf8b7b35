"""The etcd lease backend's pure parts: the local view (as the decisions read it), the allocation walk, the
etcd-lease buckets and the transactions planned from the view."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

from appliance.dhcp.authoritative import AddressPolicy, DhcpAnswer, decide_dhcp
from appliance.dhcp.etcd_leases import (
    BUCKET_SECONDS, GRACE_SECONDS, EtcdLeaseTable, LeaseKeys, bind_plan, bucket_end, encode_address, free_plan,
    walk_order, with_lease_time,
)
from appliance.dhcp.leases import HoldOffer, Lease
from appliance.dhcp.packet import BOOTREQUEST, DhcpPacket, MessageType, Option
from appliance.dhcp.pxe import PxePolicy
from appliance.etcd import Delete, Put
from appliance.mac import MacAddress

KEYS = LeaseKeys("/bootd")
MAC_A, MAC_B = MacAddress("02:00:00:00:00:0a"), MacAddress("02:00:00:00:00:0b")
NOW = 1_000_000.0


def held(table: EtcdLeaseTable, ip: str, mac: str, revision: int, expires: float = NOW + 3600) -> None:
    lease = Lease(ip=IPv4Address(ip), mac=MacAddress(mac), expires=expires)
    table.put(KEYS.ip(lease.ip), encode_address(lease, "other"), revision)
    table.put(KEYS.mac(lease.mac), ip.encode(), revision)


def test_the_walk_visits_every_address_once_in_a_replica_specific_order():
    for size in (1, 2, 7, 256, 2304, 4094):
        for replica in ("vm/10.0.0.2", "vm/10.0.0.3"):
            start, stride = walk_order(replica, size)
            seen = {(start + k * stride) % size for k in range(size)}
            assert len(seen) == size
    assert walk_order("vm/10.0.0.2", 2304) != walk_order("vm/10.0.0.3", 2304)


def test_candidates_skip_nothing_and_restart_only_after_a_second():
    table = EtcdLeaseTable(KEYS, "r1")
    first, last = IPv4Address("10.0.0.10"), IPv4Address("10.0.0.19")
    walked = list(table.candidates(first, last, NOW))
    assert sorted(walked[:10]) == [IPv4Address(int(first) + i) for i in range(10)]  # each once per walk
    assert list(table.candidates(first, last, NOW)) == []  # walked again at most once per RESCAN_SECONDS
    assert len(set(table.candidates(first, last, NOW + 1.5))) == 10


def test_a_key_that_exists_holds_its_address_whatever_the_clock_says():
    table = EtcdLeaseTable(KEYS, "r1")
    held(table, "10.0.0.10", MAC_A, revision=5, expires=NOW - 100)  # expired by this replica's clock
    ip = IPv4Address("10.0.0.10")
    assert table.holder(ip, NOW) == MAC_A  # etcd frees it (TTL), not this replica's clock
    assert table.lease_for(MAC_A, NOW) is None  # but it is not a current lease to report
    assert table.known_lease(MAC_A, ip) is not None


def test_an_older_fact_never_overwrites_a_newer_one():
    table = EtcdLeaseTable(KEYS, "r1")
    ip = IPv4Address("10.0.0.10")
    held(table, "10.0.0.10", MAC_B, revision=9)
    held(table, "10.0.0.10", MAC_A, revision=7)  # a late watch event of an earlier state
    assert table.holder(ip, NOW) == MAC_B
    table.delete(KEYS.ip(ip), 8)
    assert table.holder(ip, NOW) == MAC_B
    table.delete(KEYS.ip(ip), 10)
    assert table.holder(ip, NOW) is None
    assert ip in list(table.candidates(ip, ip, NOW))  # freed: proposed again
    table.watched_revision = 9
    table.expire(NOW)
    assert KEYS.ip(ip) in table._revisions  # the watch has not passed the deletion yet: kept
    table.watched_revision = 10
    table.expire(NOW)
    assert KEYS.ip(ip) not in table._revisions and KEYS.mac(MAC_B) in table._revisions  # only what etcd holds


def test_bucket_end_covers_the_lease_and_its_grace_and_is_shared():
    for expires in (NOW, NOW + 0.5, NOW + 3600, NOW + 59.9):
        end = bucket_end(expires)
        assert end >= expires + GRACE_SECONDS and end < expires + GRACE_SECONDS + BUCKET_SECONDS
        assert end % BUCKET_SECONDS == 0
    assert bucket_end(NOW + 3600) == bucket_end(NOW + 3600 + 1)  # one etcd lease for many DHCP leases


def test_bind_plan_compares_what_the_view_saw():
    table = EtcdLeaseTable(KEYS, "r1")
    lease = Lease(ip=IPv4Address("10.0.0.10"), mac=MAC_A, expires=NOW + 3600)
    fresh = bind_plan(table, lease, etcd_lease=77)
    assert [(c.key, c.target, c.operand) for c in fresh.compare] == [
        (KEYS.ip(lease.ip), "version", 0), (KEYS.mac(MAC_A), "version", 0)]
    puts = [op for op in fresh.success if isinstance(op, Put)]
    assert {p.key for p in puts} == {KEYS.ip(lease.ip), KEYS.mac(MAC_A)} and {p.lease for p in puts} == {77}
    assert json.loads(puts[0].value)["mac"] == MAC_A
    # a renewal: both keys at the revisions seen
    held(table, "10.0.0.10", MAC_A, revision=12)
    renewal = bind_plan(table, lease, etcd_lease=78)
    assert [(c.target, c.operand) for c in renewal.compare] == [("mod", 12), ("mod", 12)]
    # the MAC moves to another address: its old one is freed in the same transaction
    moving = bind_plan(table, Lease(ip=IPv4Address("10.0.0.11"), mac=MAC_A, expires=NOW + 3600), etcd_lease=78)
    assert Delete(KEYS.ip(IPv4Address("10.0.0.10"))) in moving.success
    assert (KEYS.ip(IPv4Address("10.0.0.10")), "mod", 12) in [(c.key, c.target, c.operand) for c in moving.compare]
    # another MAC holds it now (the watch told while the etcd lease was being granted): nothing is planned
    assert bind_plan(table, Lease(ip=IPv4Address("10.0.0.10"), mac=MAC_B, expires=NOW + 3600), etcd_lease=78) is None


def test_release_only_by_the_holder_and_decline_quarantines():
    table = EtcdLeaseTable(KEYS, "r1")
    held(table, "10.0.0.10", MAC_A, revision=3)
    ip = IPv4Address("10.0.0.10")
    assert free_plan(table, ip, MAC_B, None, 1) is None
    release = free_plan(table, ip, MAC_A, None, 1)
    assert release is not None and Delete(KEYS.ip(ip)) in release.success and Delete(KEYS.mac(MAC_A)) in release.success
    decline = free_plan(table, ip, MAC_A, NOW + 600, 1)
    assert decline is not None
    quarantine = next(op for op in decline.success if isinstance(op, Put))
    assert json.loads(quarantine.value)["declined"] is True
    table.put(KEYS.ip(ip), quarantine.value, 4)
    assert table.quarantined(ip, NOW) and table.lease_for(MAC_A, NOW) is None


def discover(mac: str, giaddr: str = "0.0.0.0") -> DhcpPacket:
    return DhcpPacket(op=BOOTREQUEST, xid=1, giaddr=IPv4Address(giaddr),
                      chaddr=bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0"),
                      options={Option.MESSAGE_TYPE: bytes((MessageType.DISCOVER,))})


def test_the_decisions_read_the_view_relay_pools_included():
    relayed = AddressPolicy(subnet=IPv4Network("10.1.0.0/24"), first=IPv4Address("10.1.0.100"),
                            last=IPv4Address("10.1.0.101"))
    policy = AddressPolicy(subnet=IPv4Network("10.0.0.0/24"), first=IPv4Address("10.0.0.100"),
                           last=IPv4Address("10.0.0.101"), relayed=(relayed,))
    table = EtcdLeaseTable(KEYS, "r1")
    held(table, "10.1.0.100", MAC_B, revision=2)  # another replica's lease on the relayed segment
    server = IPv4Address("10.0.0.1")
    answer = decide_dhcp(discover(MAC_A, giaddr="10.1.0.1"), table, policy, PxePolicy(), server, NOW)
    assert isinstance(answer, DhcpAnswer) and answer.ip == IPv4Address("10.1.0.101")  # the relay's pool, not B's
    assert isinstance(answer.change, HoldOffer)
    table.apply(answer.change)
    local = decide_dhcp(discover(MAC_B), table, policy, PxePolicy(), server, NOW)
    assert isinstance(local, DhcpAnswer) and local.ip is not None and local.ip in policy.subnet


def test_a_renewal_without_quorum_promises_only_what_etcd_holds():
    reply = DhcpPacket(options={Option.MESSAGE_TYPE: bytes((MessageType.ACK,)), Option.LEASE_TIME: (3600).to_bytes(4, "big"),
                                Option.RENEWAL_TIME: (1800).to_bytes(4, "big"),
                                Option.REBINDING_TIME: (3150).to_bytes(4, "big")})
    shorter = with_lease_time(reply, 1000)
    assert int.from_bytes(shorter.options[Option.LEASE_TIME], "big") == 1000
    assert int.from_bytes(shorter.options[Option.RENEWAL_TIME], "big") == 500
    assert int.from_bytes(shorter.options[Option.REBINDING_TIME], "big") == 875
    assert list(shorter.options) == list(reply.options)  # same options, same order


def test_a_discover_read_after_its_request_for_another_replica_holds_no_address():
    """Under overload a replica answers REQUESTs before the DISCOVERs waiting in its backlog, so a client's
    REQUEST for the other replica can be read before this one's OFFER to it. That late OFFER must not hold an
    address (no REQUEST is left to withdraw it: 300 such holds once made a range with 300 free addresses
    'exhausted' for 30 s). A new exchange (another xid) of the same client is answered as usual."""
    from types import SimpleNamespace

    from appliance.dhcp.etcd_leases import EtcdDhcpServer, EtcdLeaseStore
    from appliance.dhcp.modes import DhcpMode
    from appliance.dhcp.packet import encode_packet, parse_packet
    from appliance.dhcp.policy import DhcpPolicies
    from appliance.dhcp.server import Datagram, PortCounts
    from appliance.events import EventBus

    server_ip, other = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
    policy = AddressPolicy(subnet=IPv4Network("10.0.0.0/24"), first=IPv4Address("10.0.0.10"),
                           last=IPv4Address("10.0.0.20"))
    store = EtcdLeaseStore(SimpleNamespace(timeout=5.0), EtcdLeaseTable(KEYS, "r1"))  # type: ignore[arg-type]
    server = EtcdDhcpServer(store=store, policies=DhcpPolicies(mode=DhcpMode.AUTHORITATIVE, pxe=PxePolicy(),
                                                               addresses=policy),
                            bus=EventBus(), port=67, pxe_port=0, server_address=server_ip, clock=lambda: NOW)
    sent: list[tuple[MessageType, int]] = []
    server._send = lambda sock, data, address, port, dgram: sent.append(  # type: ignore[method-assign]
        (parse_packet(data).message_type, parse_packet(data).xid))
    counts = PortCounts()

    def receive(mac: MacAddress, kind: MessageType, xid: int, *options: tuple[int, bytes]) -> None:
        p = DhcpPacket(op=BOOTREQUEST, htype=1, hlen=6, xid=xid, chaddr=bytes.fromhex(mac.replace(":", "")),
                       options={Option.MESSAGE_TYPE: bytes((kind,)), **dict(options)})
        server.handle_datagram(None, Datagram(encode_packet(p), ("0.0.0.0", 68), 0, server_ip, counts), 67, NOW)

    # the client took the other replica's OFFER; its REQUEST is read here first, then its DISCOVER
    receive(MAC_A, MessageType.REQUEST, 7, (Option.REQUESTED_IP, IPv4Address("10.0.0.15").packed),
            (Option.SERVER_ID, other.packed))
    receive(MAC_A, MessageType.DISCOVER, 7)
    assert sent == [] and counts.dropped["stale-discover"] == 1
    assert store.table.offered_to(MAC_A, NOW) is None and store.table.sizes()["offers"] == 0
    # an OFFER made before the REQUEST is withdrawn by it, and a retransmitted DISCOVER makes no new one
    receive(MAC_B, MessageType.DISCOVER, 8)
    offered = store.table.offered_to(MAC_B, NOW)
    assert offered is not None and sent == [(MessageType.OFFER, 8)]
    receive(MAC_B, MessageType.REQUEST, 8, (Option.REQUESTED_IP, IPv4Address("10.0.0.19").packed),
            (Option.SERVER_ID, other.packed))
    receive(MAC_B, MessageType.DISCOVER, 8)
    assert store.table.offered_to(MAC_B, NOW) is None and counts.dropped["stale-discover"] == 2
    # a new exchange is answered
    receive(MAC_A, MessageType.DISCOVER, 9)
    assert sent[-1] == (MessageType.OFFER, 9) and store.table.offered_to(MAC_A, NOW) is not None
