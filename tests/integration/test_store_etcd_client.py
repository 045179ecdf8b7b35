"""appliance.etcd.EtcdClient against a real etcd 3.4 (tests/etcd_cluster.py): keys, txn, leases, watches
with progress, failover when a member is killed, and a clear error naming every endpoint when none answers."""

from __future__ import annotations

import asyncio

import pytest

from appliance.etcd import Compare, Delete, EtcdClient, EtcdUnavailable, EventType, Get, Put
from appliance.etcd.generate import generate
from appliance.etcd.pb import etcd_pb2
from tests.etcd_cluster import etcd_cluster  # noqa: F401 - the fixture


def test_committed_messages_are_what_the_proto_generates():
    assert generate() == open(etcd_pb2.__file__).read()


async def test_keys_txn_leases_and_watch_on_one_member(etcd_cluster):  # noqa: F811
    cluster = etcd_cluster(size=1)
    async with EtcdClient(cluster.endpoints, timeout=3) as client:
        first = await client.put("/t/a", b"1")
        assert (await client.get("/t/a")).value == b"1"
        assert await client.get("/t/missing") is None
        # create-if-absent: the second one fails and reads what is there
        created = await client.txn([Compare.version(b"/t/b", 0)], [Put(b"/t/b", b"2")], [Get(b"/t/b")])
        again = await client.txn([Compare.version(b"/t/b", 0)], [Put(b"/t/b", b"3")], [Get(b"/t/b")])
        assert created.succeeded and not again.succeeded
        assert again.responses[0].kvs[0].value == b"2"
        found = await client.get_prefix("/t/")
        assert [kv.key for kv in found.kvs] == [b"/t/a", b"/t/b"] and found.revision == created.revision
        assert await client.revision() == created.revision
        # a lease: its key goes when it is revoked
        lease = await client.lease_grant(30)
        await client.put("/t/leased", b"x", lease=lease.id)
        assert await client.lease_keepalive(lease.id) == 30
        await client.lease_revoke(lease.id)
        assert await client.get("/t/leased") is None
        assert await client.lease_keepalive(lease.id) == 0
        # a watch from the first revision sees every change under the prefix, in order; a progress notice
        # carries the current revision although nothing under the prefix changed
        progress = asyncio.Event()
        stream = client.watch("/t/", start_revision=first, progress=progress)
        seen = await anext(stream)
        assert [(e.type, e.kv.key) for e in seen.events][:2] == [(EventType.PUT, b"/t/a"), (EventType.PUT, b"/t/b")]
        events = list(seen.events)
        while len(events) < 4:  # /t/leased put, then deleted with its lease
            events += (await anext(stream)).events
        assert [(e.type, e.kv.key) for e in events[2:]] == [(EventType.PUT, b"/t/leased"),
                                                            (EventType.DELETE, b"/t/leased")]
        now = await client.put("/elsewhere", b"y")
        progress.set()
        notice = await anext(stream)
        assert notice.events == () and notice.revision == now
        deleted = await client.txn([], [Delete(b"/t/", prefix=True)])
        assert deleted.responses == (2,)
        await stream.aclose()


async def test_a_killed_member_fails_over_and_none_left_names_every_endpoint(etcd_cluster):  # noqa: F811
    cluster = etcd_cluster(size=3)
    async with EtcdClient(cluster.endpoints, timeout=2) as client:
        await client.put("/f/a", b"1")
        stream = client.watch("/f/", start_revision=await client.revision() + 1)
        waiting = asyncio.ensure_future(anext(stream))
        cluster.kill(0)  # the member the client (and its watch) talk to
        revision = await client.put("/f/b", b"2")  # answered by another member
        batch = await asyncio.wait_for(waiting, 10)  # the watch resumed elsewhere: nothing missed
        assert [e.kv.key for e in batch.events] == [b"/f/b"] and batch.revision == revision
        cluster.kill(1)
        cluster.kill(2)
        with pytest.raises(EtcdUnavailable) as refused:
            await client.put("/f/c", b"3")
        for endpoint in cluster.endpoints:
            assert endpoint in str(refused.value)
        await stream.aclose()


async def test_a_watch_catching_up_many_revisions_reports_what_it_delivered(etcd_cluster):  # noqa: F811
    """etcd sends a watcher that catches up its events 1,000 revisions at a time, each response carrying the
    current revision: a batch's revision must be its last event's, or a resumed watch would skip the rest."""
    cluster = etcd_cluster(size=1)
    async with EtcdClient(cluster.endpoints, timeout=5) as client:
        first = await client.put("/c/0", b"0")
        for start in range(1, 1500, 100):
            await asyncio.gather(*(client.put(f"/c/{i}", b"x") for i in range(start, start + 100)))
        now = await client.revision()
        stream = client.watch("/c/", start_revision=first)
        seen: list[int] = []
        while len(seen) < 1500:
            batch = await anext(stream)
            assert batch.events and batch.revision == batch.events[-1].kv.mod_revision
            seen += [e.kv.mod_revision for e in batch.events]
        assert seen == list(range(first, now + 1))  # every revision once, in order
        await stream.aclose()
