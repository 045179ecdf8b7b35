"""The fleet view's I/O: this replica's machine progress written to etcd, every other replica's read back
into this one's event bus, so /api/v1/machines, /api/v1/events (/ui/) and `bootd status` on any replica
show every machine with every replica's steps.

- Publishing never blocks a service: the bus sink (`see`) appends a reference to a list (no encoding, no
  I/O, no bookkeeping); the writer wakes, waits WRITE_SECONDS so a boot's burst of steps becomes one write
  per machine, files the events by machine (`LocalLog`) and writes the changed records in transactions of
  at most TXN_OPS keys.
  A machine's record is therefore written at most 1/WRITE_SECONDS times a second, however busy it is. A
  write that fails is kept and retried (backing off to RETRY_MAX_SECONDS): after etcd's return the records
  are current again. Records carry this run's etcd lease (LEASE_TTL): a replica gone for good leaves
  nothing behind; a lease lost (etcd out of reach longer than that) is replaced and every record written
  again.
- Reading: the prefix once, then a watch from the next revision (the client resumes it on another member,
  and a compacted revision means reading the prefix again). Each record's events this replica has not fed
  yet (`Cursors`) are published on this replica's bus as `Remote*` events: the tracker merges them with its
  own by time, the live views stream them, and nothing logs, counts or publishes them again.
- Freshness: every HEALTH_SECONDS the watch is asked for a progress notice; no answer for STALE_SECONDS,
  a failed read or a failed write makes the view stale (logged once, shown by every view, which is
  told to reload); the first answer and write after that make it current again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from appliance.etcd.client import (
    Delete,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    KeyValue,
    Put,
    prefix_end,
)
from appliance.events import Event, EventBus, MachineProgress
from appliance.fleet.records import (
    RawRecord,
    RecordInvalid,
    Remote,
    machine_key,
    machines_prefix,
    parse_record,
    replica_of,
)
from appliance.fleet.state import Cursors, Freshness, LocalLog, annotate

logger = logging.getLogger(__name__)

WRITE_SECONDS = 0.25  # a machine's record is written at most 4 times a second
TXN_OPS = 64  # keys per transaction (etcd refuses more than 128)
TXN_BYTES = 512 * 1024  # about this many bytes per transaction (etcd's default request limit is 1.5 MiB)
RETRY_MAX_SECONDS = 2.0
LEASE_TTL = 120  # seconds a dead replica's records outlive it
HEALTH_SECONDS = 1.0  # the watch is asked for a progress notice this often
STALE_SECONDS = 3.0  # no answer for this long: the view is stale (a busy loop answers late, not never)
MAX_INCOMING = 100_000  # this replica's events waiting for the writer (a quarter second's worth, and far more)
READ_PAGE = 256  # records per read of the whole prefix
FEED_CHUNK = 512  # remote events published before the bus gets to deliver them (its queue is bounded)


class Fleet:
    def __init__(self, client: EtcdClient, *, prefix: str, replica: str, bus: EventBus,
                 max_machines: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self.client = client  # the daemon's (the store's), closed by the daemon
        self.prefix = prefix
        self.replica = replica
        self.run = secrets.token_hex(8)  # this run's events are numbered from 1: readers tell runs apart
        self.bus = bus
        self.log = LocalLog(replica, self.run, max_machines=max_machines)
        self.cursors = Cursors(max_machines)
        self.freshness = Freshness()
        self.replicas: dict[str, float] = {}  # other replicas: when a record of theirs last came
        self.records_invalid = 0
        self.writes = 0  # transactions written
        self.events_fed = 0
        self._clock = clock
        self._wake = asyncio.Event()
        self._lease: int | None = None
        self._lease_ready = asyncio.Event()
        self._progress = asyncio.Event()  # set: ask the watch for a progress notice
        self._answered = 0.0  # loop time of the watch's last answer
        self._tasks: list[asyncio.Task[None]] = []
        self._incoming: list[Event] = []  # this replica's events since the writer last looked
        self._in_flight = 0  # records in the transaction being written
        self.events_dropped = 0

    # --- the bus sink: the hot path ---------------------------------------------------------------------

    def see(self, event: Event) -> None:
        """A reference kept for the writer, which does the bookkeeping a batch at a time."""
        if event.mac is None or isinstance(event, Remote):
            return
        if len(self._incoming) >= MAX_INCOMING:  # the writer is that far behind: say so in the counts
            self.events_dropped += 1
            return
        self._incoming.append(event)
        if len(self._incoming) == 1:
            self._wake.set()

    def _take_incoming(self) -> None:
        incoming, self._incoming = self._incoming, []
        for event in incoming:
            self.log.add(event)

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for job in (self._keep_lease, self._write, self._follow, self._check_health):
            self._tasks.append(loop.create_task(job(), name=f"fleet {job.__name__}"))

    async def stop(self, flush_seconds: float = 1.0) -> None:
        """Write what is pending (for at most `flush_seconds`), then end every task."""
        writer = self._tasks[1] if len(self._tasks) > 1 else None
        for task in self._tasks:
            if task is not writer:
                task.cancel()
        if writer is not None:
            writer.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._take_incoming()
        if self.log.pending and self._lease is not None:
            try:
                async with asyncio.timeout(flush_seconds):
                    await self._write_pending()
            except (TimeoutError, EtcdError):
                logger.warning("fleet: %d machine records not written to etcd at exit", self.log.pending)
        self._tasks = []

    # --- writing ------------------------------------------------------------------------------------------

    async def _keep_lease(self) -> None:
        delay = 0.1
        while True:
            try:
                lease = await self.client.lease_grant(LEASE_TTL)
            except EtcdError as exc:
                self._lost(f"cannot get an etcd lease: {exc}", writes=True)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_SECONDS)
                continue
            delay = 0.1
            first = self._lease is None
            self._lease = lease.id
            if not first:
                logger.warning("fleet: the etcd lease of this replica's records expired: writing them again")
                self.log.mark_all()
            self._lease_ready.set()
            self._wake.set()
            lost = asyncio.Event()
            try:
                await self.client.keep_alive(lease.id, LEASE_TTL, lost)
            except EtcdError as exc:
                logger.warning("fleet: etcd lease %x: %s", lease.id, exc)
            self._lease_ready.clear()

    async def _write(self) -> None:
        await self._lease_ready.wait()
        delay = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(WRITE_SECONDS)  # the rest of the burst joins this write
            self._take_incoming()
            await self._lease_ready.wait()
            try:
                await self._write_pending()
            except EtcdError as exc:
                self._lost(f"writes to etcd fail: {exc}", writes=True)
                self._wake.set()
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_SECONDS)
                continue
            delay = 0.1
            if self.freshness.write_ok():
                self._became_current()

    async def _write_pending(self) -> None:
        assert self._lease is not None
        while self.log.pending:
            batch = self.log.take(max_ops=TXN_OPS, max_bytes=TXN_BYTES)
            ops: list[Put | Delete] = [Put(machine_key(self.prefix, mac, self.replica).encode(), value, self._lease)
                                       for mac, value in batch.puts.items()]
            ops += [Delete(machine_key(self.prefix, mac, self.replica).encode()) for mac in batch.deletes]
            self._in_flight = len(batch)
            try:
                await self.client.txn((), ops)
            except BaseException:
                self.log.give_back(batch)
                raise
            finally:
                self._in_flight = 0
            self.writes += 1

    # --- reading ------------------------------------------------------------------------------------------

    async def _follow(self) -> None:
        prefix = machines_prefix(self.prefix)
        delay = 0.1
        while True:
            try:
                revision = await self._read_all(prefix)
                self._answered = asyncio.get_running_loop().time()
                if self.freshness.watch_ok():
                    self._became_current()
                delay = 0.1
                async for batch in self.client.watch(prefix, start_revision=revision + 1,
                                                     progress=self._progress):
                    self._answered = asyncio.get_running_loop().time()
                    if self.freshness.watch_ok():
                        self._became_current()
                    await self._feed(tuple(e.kv for e in batch.events if e.kv.value))
            except EtcdCompacted:
                logger.info("fleet: the watch's revision was compacted: reading every record again")
            except EtcdError as exc:
                self._lost(f"cannot read from etcd: {exc}")
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_SECONDS)

    async def _read_all(self, prefix: str) -> int:
        """Every record under `prefix`, a page at a time (one answer must stay far below gRPC's message
        limit: 4,096 machines x replicas x up to 32 KiB), all at one revision; that revision."""
        start, end = prefix.encode(), prefix_end(prefix.encode())
        page = await self.client.range(start, range_end=end, limit=READ_PAGE)
        revision = page.revision
        while True:
            await self._feed(page.kvs)
            if not page.more or not page.kvs:
                return revision
            page = await self.client.range(page.kvs[-1].key + b"\0", range_end=end, revision=revision,
                                           limit=READ_PAGE)

    async def _feed(self, kvs: tuple[KeyValue, ...]) -> None:
        """Publish the records' events this replica has not fed yet, a chunk at a time."""
        fresh: list[Event] = []
        own = f"/{self.replica}".encode()
        for kv in kvs:
            if kv.key.endswith(own):  # this replica's own writes, coming back: not decoded at all
                continue
            record = self._decode(kv)
            if record is None:
                continue
            if record.replica not in self.replicas:  # the views list the replicas: they reload the list
                self.bus.resync_views()
            self.replicas[record.replica] = self._clock()
            events, invalid = self.cursors.fresh(record)
            fresh.extend(events)
            if invalid:
                self._invalid(f"{kv.key.decode('utf-8', 'replace')}: {invalid} events do not fit", invalid)
            if len(fresh) >= FEED_CHUNK:
                await self._publish(fresh)
                fresh = []
        await self._publish(fresh)

    async def _publish(self, events: list[Event]) -> None:
        for event in events:
            self.bus.publish(event)
        self.events_fed += len(events)
        if events:
            await asyncio.sleep(0)  # the bus delivers these before the next chunk comes

    def _decode(self, kv: KeyValue) -> RawRecord | None:
        key = kv.key.decode("utf-8", "replace")
        try:
            return parse_record(self.prefix, key, kv.value)
        except RecordInvalid as exc:
            self._invalid(str(exc))
            return None

    def _invalid(self, reason: str, count: int = 1) -> None:
        before = self.records_invalid
        self.records_invalid += count
        if before == 0 or len(str(before)) < len(str(self.records_invalid)):  # 1, 10, 100, ...: never a flood
            logger.warning("fleet: dropped what etcd holds that bootd did not write (%d so far): %s",
                           self.records_invalid, reason)

    async def _check_health(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._progress.set()
            await asyncio.sleep(HEALTH_SECONDS)
            if loop.time() - self._answered > STALE_SECONDS and self.freshness.watching:
                self._lost(f"etcd has not answered the watch for {STALE_SECONDS:.0f} s "
                           f"({', '.join(self.client.endpoints)})")

    # --- freshness ----------------------------------------------------------------------------------------

    def _lost(self, reason: str, *, writes: bool = False) -> None:
        if self.freshness.lost(reason, now=self._clock(), writes=writes):
            logger.warning("fleet: the fleet view is stale (showing what this replica has): %s", reason)
            self.bus.resync_views()

    def _became_current(self) -> None:
        logger.info("fleet: the fleet view is current again (etcd answers, %d records pending)", self.log.pending)
        self.bus.resync_views()

    # --- the views ----------------------------------------------------------------------------------------

    def as_json(self) -> dict[str, object]:
        """`fleet` in /api/v1/machines: who this replica is, which others it hears of, and whether its view
        is current."""
        f = self.freshness
        return {"replica": self.replica, "replicas": sorted({self.replica, *self.replicas}),
                "stale": f.stale, "stale_since": f.since, "stale_reason": f.reason,
                "records_pending": self.log.pending + self._in_flight}

    def row(self, progress: MachineProgress, row: dict[str, Any]) -> dict[str, Any]:
        return annotate(row, progress, self.replica)

    def replica_of(self, event: Event) -> str:
        return replica_of(event, self.replica)

    def stats(self) -> dict[str, object]:
        return {"writes": self.writes, "records_pending": self.log.pending + self._in_flight,
                "events_fed": self.events_fed, "events_dropped": self.events_dropped,
                "records_invalid": self.records_invalid, "stale": self.freshness.stale}

