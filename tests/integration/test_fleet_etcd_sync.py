"""appliance.fleet's Fleet against a real etcd, in one process (two replicas, each its own bus and tracker):
a burst of steps is one write per machine in transactions of 64, a replica started later reads every record
page by page, and a record that bootd did not write is dropped and counted while the others are fed."""

from __future__ import annotations

import asyncio
import math
import time

from appliance.etcd import EtcdClient
from appliance.events import Event, EventBus, EventKind, ProgressTracker
from appliance.fleet.state import track_fleet
from appliance.fleet.sync import READ_PAGE, TXN_OPS, Fleet
from appliance.mac import MacAddress
from tests.etcd_cluster import etcd_cluster  # noqa: F401 - the fixture

PREFIX = "/fleet-sync"
MACHINES = 2 * READ_PAGE + 100  # three pages
STEPS = (EventKind.BOOT_SCRIPT, EventKind.BOOT_CONFIG, EventKind.KERNEL)
WAIT = 30.0


def mac(i: int) -> MacAddress:
    return MacAddress(f"52:54:00:fe:{i >> 8:02x}:{i & 255:02x}")


def replica(client: EtcdClient, name: str) -> tuple[Fleet, EventBus, ProgressTracker]:
    bus, tracker = EventBus(), ProgressTracker()
    bus.add_sink(track_fleet(tracker))
    fleet = Fleet(client, prefix=PREFIX, replica=name, bus=bus)
    bus.add_sink(fleet.see)
    return fleet, bus, tracker


async def until(check, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        await asyncio.sleep(0.02)


async def test_a_burst_is_one_write_per_machine_and_a_late_replica_reads_every_page(etcd_cluster):  # noqa: F811
    cluster = etcd_cluster(size=1)
    async with EtcdClient(cluster.endpoints, timeout=5) as client:
        a, bus_a, _ = replica(client, "a")
        a.start()
        await until(lambda: not a.freshness.stale, "a's view current")
        now = time.time()
        for i in range(MACHINES):  # one burst: every step of every machine before the writer wakes
            for n, kind in enumerate(STEPS):
                bus_a.publish(Event(kind=kind, mac=mac(i), peer=None, detail=f"{kind.value} {i}", time=now + n))
        await until(lambda: a.writes > 0 and a.as_json()["records_pending"] == 0, "a's records written")
        assert a.writes == math.ceil(MACHINES / TXN_OPS)  # a record per machine, 64 to a transaction
        # garbage under the prefix, as someone with etcdctl could leave it
        await client.put(f"{PREFIX}/machines/{mac(0)}/intruder", b"{not json")

        b, _, tracker_b = replica(client, "b")
        b.start()
        await until(lambda: len(tracker_b) == MACHINES, "b fed every machine")
        for i in (0, READ_PAGE, MACHINES - 1):  # one from each page
            progress = tracker_b.get(mac(i))
            assert [s.kind for s in progress.stages] == list(STEPS)
            assert {b.replica_of(e) for e in progress.history} == {"a"}
        assert b.events_fed == MACHINES * len(STEPS) and b.records_invalid == 1
        assert b.as_json()["replicas"] == ["a", "b"] and not b.as_json()["stale"]
        await b.stop()
        await a.stop()
