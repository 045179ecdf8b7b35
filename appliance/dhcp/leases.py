"""Authoritative mode's state: bound leases, offers held for a moment, declined addresses in quarantine.

Invariants:
- An address is bound to at most one MAC, and a MAC holds at most one bound address.
- Decisions only read a `LeaseTable`; what they decide comes back as a `LeaseChange` value that the server
  applies with `apply` (then `save`s when the change binds or frees an address).
- On disk: a snapshot (`leases.json`, written whole and atomically: temp file, fsync, rename, fsync of the
  directory) and a journal beside it (`leases.journal`): one line per change since that snapshot, appended
  and fsynced in groups by `LeaseWriter`. The durability rule: an ACK that binds an address leaves only after
  the journal line that records it is on disk (fdatasync returned), so kill -9 or a power cut never loses an
  ACKed lease. One write is in flight at a time and the next starts as soon as it ends, with every change
  that came meanwhile: an ACK waits for one or two fdatasyncs, never for a timer. The one exception is a
  failing disk (full, I/O error): then bootd logs an error, counts the failure and answers anyway (the
  lease lives in memory and is written with the next write that works).
- The snapshot names a generation, the journal's first line too; `load` replays a journal only over the
  snapshot of its own generation (a crash between writing a new snapshot and starting its journal leaves an
  older journal, already in the snapshot, which is then skipped). A last line cut short is skipped.
- Allocation hints (`candidates`) make a new client's address O(1): a cursor through the range (addresses
  never looked at yet) and the addresses freed since; the decision still checks each candidate, so a hint
  can be stale but never wrong. When both run out, the cursor starts over (at most once a second), which
  finds leases and offers that expired.
- Times are wall-clock seconds (leases outlive restarts); the caller passes `now`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from appliance.atomic import write_atomically
from appliance.mac import MacAddress, try_parse_mac

logger = logging.getLogger(__name__)

OFFER_HOLD_SECONDS = 30.0  # an OFFERed address is kept for its client this long (RFC 2131 §4.3.1 "SHOULD")
QUARANTINE_SECONDS = 600.0  # a DECLINEd address is in use by someone we don't know; leave it alone
RESCAN_SECONDS = 1.0  # an exhausted range is walked again (for what expired) at most this often
JOURNAL_SUFFIX = ".journal"


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    ip: IPv4Address
    mac: MacAddress
    expires: float
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class HoldOffer:
    ip: IPv4Address
    mac: MacAddress
    until: float


@dataclass(frozen=True, slots=True)
class Bind:
    lease: Lease


@dataclass(frozen=True, slots=True)
class Release:
    ip: IPv4Address
    mac: MacAddress


@dataclass(frozen=True, slots=True)
class Decline:
    ip: IPv4Address
    mac: MacAddress
    until: float


LeaseChange = HoldOffer | Bind | Release | Decline


def journal_path(path: Path) -> Path:
    return path.with_suffix(JOURNAL_SUFFIX)


def _record(change: LeaseChange) -> bytes:
    """The journal line for a change that `apply` said alters what is persisted (per ACK: formatted by hand,
    the same JSON as json.dumps with compact separators gives; only a hostname can need escaping)."""
    match change:
        case Bind(lease):
            return f"{_lease_json(lease)}\n".encode()
        case Release(ip, mac) | Decline(ip, mac, _):
            return f'{{"release":"{ip}","mac":"{mac}"}}\n'.encode()
    raise AssertionError(f"not persisted: {change!r}")


class LeaseWriter:
    """Persists lease changes off the event loop, group-committed (a whole-table rewrite with fsync took
    milliseconds per ACK on the loop, and grew with the table).

    `commit(change, then)`: the change (already applied to the table) is appended to the journal, and
    `then(ok)` is called on the loop once the line is on disk. One write is in flight at a time, on the
    writer's own thread (a plain thread fed by a SimpleQueue: an executor's futures and locks cost more on
    the loop than the write itself); changes that arrive meanwhile wait and go together in the next one,
    which starts as soon as the write in flight ends. So groups form only under load, by themselves: an
    idle writer writes a change at once, a busy one at most once per fdatasync (the disk's own pace), and an
    ACK waits for at most two of them (or a snapshot's write). (A 10 ms timer between writes, before, made
    every ACK under load wait for the rest of the window plus the fdatasync: 8.6-9.5 ms on average at 1,000
    ACKs/s against 2.1-4.7 without it, for 400-830 fsyncs/s instead of 80-90.) When the journal has grown
    past twice the table (and a floor), the next write is a new snapshot instead (a copy of the leases taken
    on the loop, encoded and written on the thread).
    A failed write (a full disk) is logged as an error and the next write is a full snapshot again: the
    table in memory stays right, so serving goes on.
    """

    def __init__(self, table: LeaseTable, loop: asyncio.AbstractEventLoop) -> None:
        self.table = table
        self.loop = loop
        self.failures = 0
        self.fsyncs = 0
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], list[Callable[[bool], None]]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="bootd-leases", daemon=True)
        self._thread.start()
        self._writing = False
        self._records: list[bytes] = []
        self._pending: list[Callable[[bool], None]] = []
        self._journal_fd: int | None = None
        self._journal_lines = 0
        self._snapshot_next = False
        self._closed = False

    def commit(self, change: LeaseChange, then: Callable[[bool], None]) -> None:
        """Persist `change` (already applied to the table), then call `then(ok)` on the loop."""
        if self.table.path is None or self._closed:
            then(self.table.path is None)
            return
        self._records.append(_record(change))
        self._pending.append(then)
        if not self._writing:
            self._write()

    def _write(self) -> None:
        records, waiting = self._records, self._pending
        self._records, self._pending = [], []
        self._writing = True
        self._journal_lines += len(records)
        if self._snapshot_next or self._journal_lines > max(4096, 2 * len(self.table._bound)):
            self._snapshot_next = False
            self._journal_lines = 0
            leases = list(self.table._bound.values())  # frozen values: this copy is the state as of now
            generation = self.table.generation = self.table.generation + 1
            self._jobs.put((lambda: self._snapshot(leases, generation), waiting))
        else:
            data = b"".join(records)
            self._jobs.put((lambda: self._append(data), waiting))

    # --- on the writer's thread -------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, waiting = item
            error: BaseException | None = None
            try:
                job()
            except Exception as exc:  # OSError from the disk; anything else is our bug: the ACKs must not hang
                error = exc
            try:
                self.loop.call_soon_threadsafe(self._written, error, waiting)
            except RuntimeError:  # the loop is closed: bootd is shutting down, nobody waits for these
                pass

    def _append(self, data: bytes) -> None:
        path = self.table.path
        assert path is not None
        if self._journal_fd is None:
            self._journal_fd = _open_journal(path, self.table.generation)
        fd = self._journal_fd
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        except OSError:
            try:  # leave no part of a line behind: the next line would be glued to it
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
        finally:
            self.fsyncs += 1

    def _snapshot(self, leases: list[Lease], generation: int) -> None:
        path = self.table.path
        assert path is not None
        write_atomically(path, encode_snapshot(leases, generation))
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        # the old journal is in the snapshot now; until this new one is in place, load skips the old one
        self._journal_fd = _open_journal(path, generation, fresh=True)
        self.fsyncs += 1

    # --- back on the loop -------------------------------------------------------------------------

    def _written(self, error: BaseException | None, waiting: list[Callable[[bool], None]]) -> None:
        self._writing = False
        if self._closed:  # shut down meanwhile: the sockets are closed, and close() wrote the snapshot
            return
        if error is not None:
            self.failures += 1
            self._snapshot_next = True  # what this write held is written with the next one, as a snapshot
            logger.error("leases: cannot write %s: %s (leases are kept in memory; bootd keeps serving)",
                         self.table.path, error)
        for then in waiting:
            try:
                then(error is None)
            except Exception:  # one caller's bug must not strand the others' replies
                logger.exception("leases: after a write")
        if self._pending:
            self._write()

    def stop(self) -> None:
        """Finish the write in flight and end the writer's thread (nothing more is written or answered)."""
        self._closed = True
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def close(self) -> None:
        """At shutdown: finish the write in flight, then leave one whole snapshot (and an empty journal).
        Changes still waiting are in the snapshot; their ACKs are never sent (so the rule holds)."""
        self.stop()
        if self.table.path is not None:
            try:
                self._snapshot(list(self.table._bound.values()), self.table.generation + 1)
                self.table.generation += 1
            except OSError as exc:
                logger.error("leases: cannot write %s at shutdown: %s (the journal still has them)",
                             self.table.path, exc)
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None


def _open_journal(path: Path, generation: int, *, fresh: bool = False) -> int:
    """The journal for `generation`, opened to append; a new one (or `fresh`) starts with its header line."""
    journal = journal_path(path)
    header = f'{{"journal":{generation}}}\n'.encode()
    if fresh or _journal_generation(journal) != generation:
        write_atomically(journal, header)
    return os.open(journal, os.O_WRONLY | os.O_APPEND)


def _journal_generation(journal: Path) -> int | None:
    try:
        with open(journal, "rb") as f:
            return int(json.loads(f.readline())["journal"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _lease_json(lease: Lease) -> str:
    """A lease as one compact JSON object, formatted by hand (per ACK in the journal, per lease in a snapshot:
    json.dumps of the table took 12 us a lease: a snapshot of 10,000 leases held the GIL for 120 ms while ACKs
    waited; this takes a quarter of that); only a hostname can need escaping."""
    hostname = json.dumps(lease.hostname) if lease.hostname else '""'
    return (f'{{"ip":"{socket.inet_ntoa(lease.ip.packed)}","mac":"{lease.mac}",'
            f'"expires":{float(lease.expires)!r},"hostname":{hostname}}}')


def encode_snapshot(leases: list[Lease], generation: int) -> bytes:
    """The snapshot: JSON, one lease a line, sorted by address."""
    lines = ",\n".join(map(_lease_json, sorted(leases, key=lambda l: int(l.ip))))
    return f'{{"version":1,"generation":{int(generation)},"leases":[\n{lines}\n]}}\n'.encode()


@dataclass(slots=True)
class _PoolHints:
    """Where to look for a free address in one range (as integers): freed ones first, then the cursor."""

    first: int
    last: int
    cursor: int
    freed: deque[int] = field(default_factory=deque)
    restart_at: float = 0.0


class LeaseTable:
    """The maps are keyed by the address as an integer (an IPv4Address hashes through hex() of its
    integer, a cost per lookup on every packet); the interface takes and gives IPv4Address."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._bound: dict[int, Lease] = {}
        self._by_mac: dict[MacAddress, int] = {}
        self._offers: dict[int, tuple[MacAddress, float, IPv4Address]] = {}
        self._offer_by_mac: dict[MacAddress, int] = {}
        self._quarantine: dict[int, float] = {}
        self._next_sweep = 0.0
        self._pools: dict[tuple[int, int], _PoolHints] = {}
        self.generation = 0  # the snapshot's; the journal being appended to has the same

    # --- allocation hints -------------------------------------------------------------------------

    def candidates(self, first: IPv4Address, last: IPv4Address, now: float) -> Iterator[IPv4Address]:
        """Addresses of the range worth checking for a new client, each O(1): freed ones, then the ones the
        cursor has not passed yet. The caller checks each and stops at the first free one; what it passed
        over is taken (so it is not offered again until freed or until the next walk). Only hints: a walk
        over the whole range restarts, at most once per RESCAN_SECONDS, when both run out."""
        key = (int(first), int(last))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _PoolHints(first=key[0], last=key[1], cursor=key[0])
        freed = pool.freed
        while freed:
            yield IPv4Address(freed.popleft())
        restarted = False
        while True:
            last = pool.last
            while pool.cursor <= last:
                yield IPv4Address(pool.cursor)  # left where it is when this one is taken: checked again next time
                pool.cursor += 1
            if restarted or now < pool.restart_at:
                return
            pool.cursor, pool.restart_at, restarted = pool.first, now + RESCAN_SECONDS, True

    def _freed(self, number: int) -> None:
        for pool in self._pools.values():
            if pool.first <= number <= pool.last:
                if len(pool.freed) < pool.last - pool.first + 1:
                    pool.freed.append(number)
                return

    # --- reads (decisions) ------------------------------------------------------------------------

    def lease_for(self, mac: MacAddress, now: float) -> Lease | None:
        number = self._by_mac.get(mac)
        lease = self._bound.get(number) if number is not None else None
        return lease if lease is not None and lease.expires > now else None

    def offered_to(self, mac: MacAddress, now: float) -> IPv4Address | None:
        number = self._offer_by_mac.get(mac)
        offer = self._offers.get(number) if number is not None else None
        return offer[2] if offer is not None and offer[0] == mac and offer[1] > now else None

    def holder(self, ip: IPv4Address, now: float) -> MacAddress | None:
        """Who has `ip` now: its unexpired lease, else its unexpired offer."""
        number = int(ip)
        lease = self._bound.get(number)
        if lease is not None and lease.expires > now:
            return lease.mac
        offer = self._offers.get(number)
        if offer is not None and offer[1] > now:
            return offer[0]
        return None

    def quarantined(self, ip: IPv4Address, now: float) -> bool:
        return self._quarantine.get(int(ip), 0.0) > now

    def leases(self, now: float) -> list[Lease]:
        return [self._bound[number] for number in sorted(self._bound) if self._bound[number].expires > now]

    # --- changes (the server) ---------------------------------------------------------------------

    def apply(self, change: LeaseChange) -> bool:
        """Apply a decision's change; True when the persisted state changed (the caller then saves)."""
        match change:
            case HoldOffer(ip, mac, until):
                number = int(ip)
                previous = self._offers.get(number)
                if previous is not None and self._offer_by_mac.get(previous[0]) == number:
                    del self._offer_by_mac[previous[0]]  # so both maps stay as small as the pool
                old = self._offer_by_mac.get(mac)
                if old is not None and old != number:
                    self._offers.pop(old, None)
                    self._freed(old)
                self._offers[number] = (mac, until, ip)
                self._offer_by_mac[mac] = number
                return False
            case Bind(lease):
                number = int(lease.ip)
                self._drop_offer(lease.mac)
                self._offers.pop(number, None)
                old = self._by_mac.get(lease.mac)
                if old is not None and old != number:
                    self._bound.pop(old, None)
                    self._freed(old)
                previous = self._bound.get(number)
                if previous is not None and previous.mac != lease.mac:
                    self._by_mac.pop(previous.mac, None)
                self._bound[number] = lease
                self._by_mac[lease.mac] = number
                return True
            case Release(ip, mac):
                number = int(ip)
                self._drop_offer(mac)  # only this client's: a RELEASE never touches another client's offer
                lease = self._bound.get(number)
                if lease is not None and lease.mac == mac:
                    del self._bound[number]
                    self._by_mac.pop(mac, None)
                    if not isinstance(change, Decline):
                        self._freed(number)
                    return True
                return False
            case Decline(ip, mac, until):
                number = int(ip)
                self._quarantine[number] = until  # found again by the cursor's next walk, after the quarantine
                self._drop_offer(mac)
                lease = self._bound.get(number)
                if lease is not None and lease.mac == mac:
                    del self._bound[number]
                    self._by_mac.pop(mac, None)
                    return True
                return False
        raise AssertionError(f"unknown lease change {change!r}")

    def _drop_offer(self, mac: MacAddress) -> None:
        number = self._offer_by_mac.pop(mac, None)
        if number is not None:
            offer = self._offers.get(number)
            if offer is not None and offer[0] == mac:
                del self._offers[number]
                if number not in self._bound:
                    self._freed(number)

    def expire(self, now: float) -> None:
        """Forget offers and quarantines that ran out (bound leases stay until replaced: their history
        lets a returning client get its address back)."""
        for number, offer in self._offers.items():
            if offer[1] <= now and number not in self._bound:
                self._freed(number)
        self._offers = {number: o for number, o in self._offers.items() if o[1] > now}
        self._offer_by_mac = {o[0]: number for number, o in self._offers.items()}
        self._quarantine = {number: t for number, t in self._quarantine.items() if t > now}

    def sweep(self, now: float, every: float = 60.0) -> None:
        """`expire`, at most once per `every` seconds: the server calls this per packet, so offers and
        quarantines that clients made bootd remember are forgotten while traffic goes on."""
        if now >= self._next_sweep:
            self.expire(now)
            self._next_sweep = now + every

    def sizes(self) -> dict[str, int]:
        """What the table holds, for the stats API (and to show it stays bounded)."""
        return {"leases": len(self._bound), "offers": len(self._offers), "offers_by_mac": len(self._offer_by_mac),
                "quarantined": len(self._quarantine)}

    # --- persistence ------------------------------------------------------------------------------

    def encoded(self) -> bytes:
        """The table as the snapshot holds it."""
        return encode_snapshot(list(self._bound.values()), self.generation)

    def save(self) -> None:
        """Write a snapshot now, on this thread (tests and tools; the server persists through LeaseWriter)."""
        if self.path is None:
            return
        self.generation += 1
        write_atomically(self.path, self.encoded())  # a journal left from before has an older generation: skipped

    @classmethod
    def load(cls, path: Path) -> LeaseTable:
        """The snapshot, then its journal's changes in order (a line cut short by a crash is skipped)."""
        table = cls(path)
        for temp in [*path.parent.glob(f".{path.name}.*"), *path.parent.glob(f".{journal_path(path).name}.*")]:
            try:  # a write that a crash (kill -9) cut short
                temp.unlink()
                logger.info("leases: removed %s, left by an interrupted write", temp.name)
            except OSError as exc:
                logger.warning("leases: cannot remove %s: %s", temp, exc.strerror)
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            logger.warning("leases: cannot read %s (%s); starting with no leases", path, exc)
            raw = {}
        if not isinstance(raw, dict):
            raw = {}
        try:
            table.generation = int(raw.get("generation", 0))
        except (TypeError, ValueError):
            table.generation = 0
        for record in raw.get("leases", []):
            lease = _lease_from(record, path)
            if lease is not None:
                table.apply(Bind(lease))
        table._replay(journal_path(path))
        return table

    def _replay(self, journal: Path) -> None:
        try:
            lines = journal.read_bytes().split(b"\n")
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("leases: cannot read %s (%s); the leases since the last snapshot are lost", journal,
                           exc)
            return
        if _journal_generation(journal) != self.generation:
            return  # already in the snapshot: a crash came between the snapshot and the new journal
        for number, line in enumerate(lines[1:], start=2):
            if not line:
                continue
            try:
                record = json.loads(line)
                if "release" in record:
                    mac = try_parse_mac(record["mac"])
                    if mac is None:
                        raise ValueError(f"bad MAC {record['mac']!r}")
                    self.apply(Release(IPv4Address(record["release"]), mac))
                    continue
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("leases: skipping line %d of %s (cut short by a crash?): %s", number, journal, exc)
                continue
            lease = _lease_from(record, journal)
            if lease is not None:
                self.apply(Bind(lease))


def _lease_from(record: object, path: Path) -> Lease | None:
    try:
        mac = try_parse_mac(record["mac"])  # type: ignore[index]
        if mac is None:
            raise ValueError(f"bad MAC {record['mac']!r}")  # type: ignore[index]
        return Lease(ip=IPv4Address(record["ip"]), mac=mac, expires=float(record["expires"]),  # type: ignore[index]
                     hostname=str(record.get("hostname", "")))  # type: ignore[union-attr]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        logger.warning("leases: skipping an unreadable entry in %s: %s", path, exc)
        return None
