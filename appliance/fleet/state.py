"""The fleet view's decisions, without I/O: what this replica still has to publish (`LocalLog`), which of
another replica's events this one has not fed yet (`Cursors`), whether the view is current (`Freshness`),
and which replica served each step of a machine's row (`annotate`).

Bounds: the local log keeps at most `max_machines` machines and `budget` bytes (estimated as the tracker
estimates), each machine's events to PUBLISHED_EVENTS / PUBLISHED_BYTES; the cursors at most
CURSORS_PER_MACHINE x max_machines (machine, replica) pairs, the least recently fed forgotten first (a
forgotten one is fed again from the record's oldest event: a repeat, not a loss).
"""

from __future__ import annotations

import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.events import (
    TOTAL_BUDGET,
    Event,
    MachineProgress,
    ProgressTracker,
    bounded,
    cost_of,
    log_event,
)
from appliance.fleet.records import (
    PUBLISHED_BYTES,
    PUBLISHED_EVENTS,
    RawRecord,
    RecordInvalid,
    Remote,
    check_replica,
    encode_event,
    record_head,
    replica_of,
)
from appliance.mac import MacAddress

CURSORS_PER_MACHINE = 4


@dataclass(slots=True)
class LocalEntry:
    seq: int
    event: Event
    encoded: bytes | None = None  # made by the first flush that publishes it


@dataclass(frozen=True, slots=True)
class Batch:
    """One write: the records to put (MAC -> value) and the machines this replica forgot (keys to delete)."""

    puts: dict[MacAddress, bytes]
    deletes: tuple[MacAddress, ...]

    def __len__(self) -> int:
        return len(self.puts) + len(self.deletes)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.puts.values())


class LocalLog:
    """This replica's own events per machine, and which machines' records changed since the last write."""

    def __init__(self, replica: str, run: str, *, max_machines: int = 4096, budget: int = TOTAL_BUDGET) -> None:
        self.replica, self.run = replica, run
        self._head = record_head(replica, run)
        self.max_machines, self.budget = max_machines, budget
        self.seq = 0
        self.cost = 0
        self._machines: OrderedDict[MacAddress, deque[LocalEntry]] = OrderedDict()
        self._dirty: dict[MacAddress, None] = {}  # insertion-ordered: the oldest change is written first
        self._gone: dict[MacAddress, None] = {}

    def add(self, event: Event) -> bool:
        """Keep this replica's `event` and mark its machine (the writer does this for what the bus sink
        collected); True when there is something new to write."""
        mac = event.mac
        if mac is None or isinstance(event, Remote):
            return False
        event = bounded(event)  # what the tracker keeps: a client's long labels are cut here too
        self.seq += 1
        entries = self._machines.get(mac)
        if entries is None:
            entries = self._machines[mac] = deque()
            self._gone.pop(mac, None)
        else:
            self._machines.move_to_end(mac)
        entries.append(LocalEntry(self.seq, event))
        self.cost += cost_of(event)
        if len(entries) > PUBLISHED_EVENTS:
            self.cost -= cost_of(entries.popleft().event)
        self._dirty[mac] = None
        if len(self._machines) > self.max_machines or self.cost > self.budget:
            self._evict()
        return True

    def _evict(self) -> None:
        while len(self._machines) > self.max_machines or (self.cost > self.budget and len(self._machines) > 1):
            mac, entries = self._machines.popitem(last=False)
            self.cost -= sum(cost_of(e.event) for e in entries)
            self._dirty.pop(mac, None)
            self._gone[mac] = None

    def __len__(self) -> int:
        return len(self._machines)

    @property
    def pending(self) -> int:
        """Records not yet written (changed or forgotten machines)."""
        return len(self._dirty) + len(self._gone)

    def mark_all(self) -> None:
        """Every record again (its etcd lease expired, or etcd lost them): the next batches rewrite them."""
        for mac in self._machines:
            self._dirty[mac] = None

    def take(self, *, max_ops: int, max_bytes: int) -> Batch:
        """The next write: the oldest changes first, at most `max_ops` keys and about `max_bytes` bytes. What
        it takes is no longer pending: `give_back` a batch that could not be written."""
        puts: dict[MacAddress, bytes] = {}
        size = 0
        while self._dirty and len(puts) < max_ops and (not puts or size < max_bytes):
            mac = next(iter(self._dirty))
            del self._dirty[mac]
            puts[mac] = value = self.record(mac)
            size += len(value)
        deletes = []
        while self._gone and len(puts) + len(deletes) < max_ops:
            mac = next(iter(self._gone))
            del self._gone[mac]
            deletes.append(mac)
        return Batch(puts, tuple(deletes))

    def give_back(self, batch: Batch) -> None:
        for mac in batch.puts:
            if mac in self._machines:
                self._dirty[mac] = None
        for mac in batch.deletes:
            if mac not in self._machines:
                self._gone[mac] = None

    def record(self, mac: MacAddress) -> bytes:
        """The machine's record: its latest events, within PUBLISHED_BYTES."""
        parts: list[bytes] = []
        size = 0
        for entry in reversed(self._machines[mac]):
            if entry.encoded is None:
                entry.encoded = encode_event(entry.seq, entry.event)
            if parts and size + len(entry.encoded) > PUBLISHED_BYTES:
                break
            parts.append(entry.encoded)
            size += len(entry.encoded) + 1
        parts.reverse()
        return self._head + b",".join(parts) + b"]}"


@dataclass(slots=True)
class Cursor:
    run: str
    seq: int  # the last fed of this run
    time: float  # the latest event time fed, whatever the run


class Cursors:
    """Which events of each (machine, replica) record were fed to this replica's bus already."""

    def __init__(self, max_machines: int = 4096) -> None:
        self.max_pairs = CURSORS_PER_MACHINE * max_machines
        self._seen: OrderedDict[tuple[MacAddress, str], Cursor] = OrderedDict()

    def fresh(self, record: RawRecord) -> tuple[list[Event], int]:
        """The record's events not fed yet, oldest first, and how many of them did not fit (dropped); the
        cursor moves past them. Only these are decoded."""
        if not record.items:
            return [], 0
        pair = (record.mac, record.replica)
        cursor = self._seen.get(pair)
        if cursor is None:
            new = record.items
        elif cursor.run == record.run:
            new = tuple(item for item in record.items if item[0] > cursor.seq)
        else:  # the replica restarted (its seq begins again): what it saw after the last event fed
            new = tuple(item for item in record.items if item[1] > cursor.time)
        last_seq = record.items[-1][0]
        same_run = cursor is not None and cursor.run == record.run
        times = [item[1] for item in new] + ([cursor.time] if cursor is not None else [])
        self._seen[pair] = Cursor(record.run, max(cursor.seq, last_seq) if same_run and cursor else last_seq,
                                  max(times, default=0.0))
        self._seen.move_to_end(pair)
        while len(self._seen) > self.max_pairs:
            self._seen.popitem(last=False)
        events, invalid = [], 0
        for _, _, item in new:
            try:
                events.append(record.decode(item))
            except RecordInvalid:
                invalid += 1
        return events, invalid

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(slots=True)
class Freshness:
    """Whether this replica's fleet view is current: it follows etcd's changes (watching) and its own
    records are written. Otherwise the view is stale: it shows what this replica has, and says since when
    and why."""

    watching: bool = False
    writing: bool = True
    since: float | None = field(default_factory=time.time)  # stale since (None: current); stale until the first watch
    reason: str | None = "not connected to etcd yet"

    def lost(self, reason: str, *, now: float, writes: bool = False) -> bool:
        """A watch or a write failed; True when the view just became stale (worth a log line)."""
        was = self.stale
        if writes:
            self.writing = False
        else:
            self.watching = False
        self.reason = reason
        if self.since is None:
            self.since = now
        return not was

    def watch_ok(self) -> bool:
        """Following etcd again; True when the view just became current."""
        self.watching = True
        return self._maybe_current()

    def write_ok(self) -> bool:
        self.writing = True
        return self._maybe_current()

    def _maybe_current(self) -> bool:
        if self.watching and self.writing and self.since is not None:
            self.since, self.reason = None, None
            return True
        return False

    @property
    def stale(self) -> bool:
        return self.since is not None


# --- the rows, with the replica of each step ----------------------------------------------------------------

def served_by(progress: MachineProgress, here: str) -> list[str | None]:
    """For each stage of the current boot, the replica that served its latest event (the one whose detail
    and outcome it shows); None when that event is no longer among the kept ones."""
    out: list[str | None] = []
    for mark in progress.stages:
        replica = None
        for event in reversed(progress.history):
            if event.kind is mark.kind and mark.first <= event.time <= mark.last:
                replica = replica_of(event, here)
                break
        out.append(replica)
    return out


def annotate(row: dict[str, Any], progress: MachineProgress, here: str) -> dict[str, Any]:
    """A row of /api/v1/machines with the fleet's fields: each stage's and event's `replica`, and
    `replicas`, every replica among its kept events (this one first)."""
    for stage, replica in zip(row["stages"], served_by(progress, here)):
        stage["replica"] = replica
    if "events" in row:
        for item, event in zip(row["events"], progress.history):
            item["replica"] = replica_of(event, here)
    seen = {replica_of(e, here) for e in progress.history}
    row["replicas"] = sorted(seen, key=lambda name: (name != here, name))
    return row


# --- the bus sinks when the fleet view is on ---------------------------------------------------------------

def track_fleet(tracker: ProgressTracker) -> Callable[[Event], None]:
    """The tracker's sink when the fleet view is on: every replica's events are recorded, this replica's
    own are logged (another replica logs its own)."""
    def sink(event: Event) -> None:
        news = tracker.record(event)
        if not isinstance(event, Remote):
            log_event(event, news)
    return sink


def local_only(sink: Callable[[Event], None]) -> Callable[[Event], None]:
    """`sink` for this replica's events only (metrics, the Secure Boot watch: each replica judges its own)."""
    def only_local(event: Event) -> None:
        if not isinstance(event, Remote):
            sink(event)
    return only_local


def uses_fleet(config: Any) -> bool:
    """The fleet view is on with the etcd store (`store: {backend: etcd}`); the directory store is one box."""
    store = getattr(config, "store", None)
    return store is not None and str(store.backend) == "etcd"


def replica_name(store: Any) -> str:
    """This replica's name in the views and in its keys: `store.replica` when set, else the host's name.
    Replicas sharing a host name (network namespaces, containers on one host) need `store.replica`."""
    configured = getattr(store, "replica", None)
    if configured:
        return check_replica(configured)
    try:
        return check_replica(socket.gethostname().split(".")[0])
    except RecordInvalid:
        return "replica"
