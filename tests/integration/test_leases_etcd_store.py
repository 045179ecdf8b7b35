"""The etcd lease store against a real etcd (loopback): two replicas' stores (each its own client and view)
racing for the same addresses, the etcd leases (TTL) the keys carry, and the no-quorum state."""

from __future__ import annotations

import asyncio
import logging
import time
from ipaddress import IPv4Address

from appliance.dhcp.etcd_leases import (
    GRACE_SECONDS, BindOutcome, EtcdLeaseStore, EtcdLeaseTable, LeaseKeys,
)
from appliance.dhcp.leases import Lease
from appliance.etcd import EtcdClient
from appliance.mac import MacAddress
from tests.etcd_cluster import etcd_cluster  # noqa: F401  (the fixture)

KEYS = LeaseKeys("/t")


def mac(n: int) -> MacAddress:
    return MacAddress(f"02:00:00:00:{n >> 8:02x}:{n & 0xff:02x}")


async def replica(endpoints: list[str], name: str) -> EtcdLeaseStore:
    store = EtcdLeaseStore(EtcdClient(endpoints), EtcdLeaseTable(KEYS, name))
    await store.start()
    return store


async def stop(*stores: EtcdLeaseStore) -> None:
    for store in stores:
        await store.close()
        await store.client.close()


def test_two_replicas_racing_for_the_same_addresses_never_both_win(etcd_cluster):
    cluster = etcd_cluster(size=3)

    async def main() -> None:
        a, b = await replica(cluster.endpoints, "a"), await replica(cluster.endpoints, "b")
        try:
            expires = time.time() + 3600
            addresses = [IPv4Address("10.5.0.0") + i for i in range(100)]
            # every address wanted at once by a MAC through A and by another MAC through B
            outcomes = await asyncio.gather(*(store.bind(Lease(ip=ip, mac=mac(2 * i + side), expires=expires))
                                              for i, ip in enumerate(addresses)
                                              for side, store in enumerate((a, b))))
            pairs = list(zip(outcomes[0::2], outcomes[1::2]))
            odd = [(i, p) for i, p in enumerate(pairs) if set(p) != {BindOutcome.COMMITTED, BindOutcome.TAKEN}]
            assert not odd, odd  # one winner and one loser per address
            found = await a.client.get_prefix(KEYS.ip(IPv4Address("10.5.0.0"))[:-len("10.5.0.0")])
            assert len(found.kvs) == 100
            winners = {IPv4Address(kv.key.decode().rsplit("/", 1)[1]): kv for kv in found.kvs}
            for i, ip in enumerate(addresses):
                side = 0 if pairs[i][0] is BindOutcome.COMMITTED else 1
                assert f'"mac":"{mac(2 * i + side)}"'.encode() in winners[ip].value
            # one MAC racing for two addresses through both replicas: it ends with one
            racer = mac(999)
            first, second = await asyncio.gather(a.bind(Lease(ip=IPv4Address("10.5.1.1"), mac=racer, expires=expires)),
                                                 b.bind(Lease(ip=IPv4Address("10.5.1.2"), mac=racer, expires=expires)))
            held = [kv for kv in (await a.client.get_prefix(b"/t/leases/ip/10.5.1.")).kvs]
            assert len(held) == 1 and racer.encode() in held[0].value, (first, second, held)
            mac_key = await a.client.get(KEYS.mac(racer))
            assert mac_key is not None and held[0].key.endswith(mac_key.value)
        finally:
            await stop(a, b)

    asyncio.run(main())


def test_keys_carry_an_etcd_lease_that_outlives_the_dhcp_lease_not_the_replica(etcd_cluster):
    cluster = etcd_cluster(size=1)

    async def main() -> None:
        a = await replica(cluster.endpoints, "a")
        ip = IPv4Address("10.5.2.1")
        expires = time.time() + 600
        assert await a.bind(Lease(ip=ip, mac=mac(1), expires=expires)) is BindOutcome.COMMITTED
        assert await a.bind(Lease(ip=IPv4Address("10.5.2.2"), mac=mac(2), expires=expires + 1)) \
            is BindOutcome.COMMITTED
        await stop(a)  # the replica is gone (as after kill -9: nothing is revoked, no keepalive was running)
        async with EtcdClient(cluster.endpoints) as client:
            kv = await client.get(KEYS.ip(ip))
            assert kv is not None and kv.lease != 0
            other = await client.get(KEYS.ip(IPv4Address("10.5.2.2")))
            assert other is not None and other.lease == kv.lease  # one etcd lease per expiry bucket
            ttl = await client.lease_ttl(kv.lease)
            assert expires - time.time() + GRACE_SECONDS - 2 <= ttl <= expires - time.time() + GRACE_SECONDS + 62
            mac_key = await client.get(KEYS.mac(mac(1)))
            assert mac_key is not None and mac_key.lease == kv.lease and mac_key.value == b"10.5.2.1"

    asyncio.run(main())


def test_no_quorum_stops_allocation_says_so_once_and_recovers(etcd_cluster, caplog):
    cluster = etcd_cluster(size=3)
    caplog.set_level(logging.INFO, logger="appliance.dhcp.etcd_leases")

    async def main() -> None:
        a = await replica(cluster.endpoints, "a")
        try:
            expires = time.time() + 3600
            assert await a.bind(Lease(ip=IPv4Address("10.5.3.1"), mac=mac(1), expires=expires)) \
                is BindOutcome.COMMITTED
            cluster.kill(1)
            cluster.kill(2)  # one member of three left: no quorum anywhere
            outcome = await a.bind(Lease(ip=IPv4Address("10.5.3.2"), mac=mac(2), expires=expires))
            assert outcome is BindOutcome.UNAVAILABLE and not a.table.allocating
            assert a.table.known_lease(mac(1), IPv4Address("10.5.3.1")) is not None  # still known: renewable
            await asyncio.sleep(2.5)  # probes keep failing meanwhile: still one line
            assert await a.bind(Lease(ip=IPv4Address("10.5.3.2"), mac=mac(2), expires=expires)) \
                is BindOutcome.UNAVAILABLE
            await asyncio.to_thread(cluster.restart, 1)
            deadline = time.monotonic() + 15
            while not a.table.allocating and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert a.table.allocating
            assert await a.bind(Lease(ip=IPv4Address("10.5.3.2"), mac=mac(2), expires=expires)) \
                is BindOutcome.COMMITTED
        finally:
            await stop(a)

    asyncio.run(main())
    lost = [r for r in caplog.records if "no quorum from this replica" in r.getMessage()]
    back = [r for r in caplog.records if "quorum reachable again" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING, [r.getMessage() for r in caplog.records]
    assert len(back) == 1


def test_a_member_that_hangs_costs_one_call_not_allocation_while_it_hangs(etcd_cluster):
    """One member of three stopped (SIGSTOP: its connections stay open, nothing answers) is no loss of quorum.
    The call that was waiting on it fails at store.timeout; the next ones go to the other members, so the
    replica allocates again while that member still hangs (before: every call asked it first and spent its
    whole budget there, and the replica stayed in "no quorum" for as long as the member hung)."""
    cluster = etcd_cluster(size=3)

    async def main() -> None:
        a = await replica(cluster.endpoints, "a")
        expires = time.time() + 3600
        hung = cluster.endpoints.index(a.client.current_endpoint)
        try:
            assert await a.bind(Lease(ip=IPv4Address("10.5.4.1"), mac=mac(1), expires=expires)) \
                is BindOutcome.COMMITTED
            cluster.pause(hung)
            outcomes = []
            deadline = time.monotonic() + 4 * a.call_seconds + 10  # a few calls' budgets; commits come sooner
            while time.monotonic() < deadline:
                outcomes.append(await a.bind(Lease(ip=IPv4Address("10.5.4.2"), mac=mac(2), expires=expires)))
                if outcomes[-1] is BindOutcome.COMMITTED:
                    break
                await asyncio.sleep(0.2)
            assert outcomes[-1] is BindOutcome.COMMITTED, outcomes
            assert a.client.current_endpoint != cluster.endpoints[hung]
            assert a.table.allocating
        finally:
            cluster.resume(hung)
            await stop(a)

    asyncio.run(main())


def test_release_and_decline_only_by_the_holder_and_seen_by_the_other_replica(etcd_cluster):
    cluster = etcd_cluster(size=1)

    async def main() -> None:
        a, b = await replica(cluster.endpoints, "a"), await replica(cluster.endpoints, "b")
        try:
            ip, expires = IPv4Address("10.5.4.1"), time.time() + 3600
            assert await a.bind(Lease(ip=ip, mac=mac(1), expires=expires)) is BindOutcome.COMMITTED
            assert await a.free(ip, mac(2), None) is False  # not its address
            assert await a.client.get(KEYS.ip(ip)) is not None
            assert await a.free(ip, mac(1), None) is True
            assert await a.client.get(KEYS.ip(ip)) is None and await a.client.get(KEYS.mac(mac(1))) is None
            assert await a.bind(Lease(ip=ip, mac=mac(3), expires=expires)) is BindOutcome.COMMITTED
            assert await a.free(ip, mac(3), time.time() + 600) is True  # DECLINE: quarantined in etcd
            deadline = time.monotonic() + 10
            while not b.table.quarantined(ip, time.time()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # B learns it through its watch
            assert b.table.quarantined(ip, time.time())
            assert await b.bind(Lease(ip=ip, mac=mac(4), expires=expires)) is BindOutcome.TAKEN
        finally:
            await stop(a, b)

    asyncio.run(main())
