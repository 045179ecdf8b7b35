"""Authoritative DHCP leases in etcd (`store: {backend: etcd}`): several replicas, one lease space.

What is where:
- etcd holds the truth: `<prefix>/leases/ip/<address>` (JSON: mac, expires, hostname, who wrote it, or a
  declined address) and `<prefix>/leases/mac/<mac>` (the address), both written by one transaction.
- Each replica keeps a local view (`EtcdLeaseTable`): everything under `<prefix>/leases/` loaded once, then
  followed by a watch. The decisions (authoritative.py, unchanged) read the view through the same interface
  as the file store's `LeaseTable`, so DISCOVER -> OFFER costs no round trip and proposes an address that is
  free as far as the view knows (a walk through each range in a replica-specific order, and the addresses
  the watch saw freed: O(1) per client, no range scan).
- The REQUEST decides: the ACK is sent only after a transaction committed the lease (etcd commits on a
  quorum, each member fsyncing its log first: the durability rule of the file store, held by a cluster).
  The transaction compares the address key (absent, or the mod revision the view saw, which is this MAC's)
  and the MAC key (absent, or the revision the view saw), then puts both. Two replicas racing for one address
  (or for one MAC) cannot both succeed, and a replica on the minority side of a partition cannot commit at
  all. The loser refreshes those keys in its view and answers NAK (RFC 2131 §4.3.2: the client starts over
  and is offered an address that is free).
- Offers are per replica (an OFFER promises nothing; writing each to etcd would cost a round trip per
  DISCOVER and decide nothing the REQUEST's transaction does not). A DISCOVER read after its client's
  REQUEST for another replica (same xid; the overload backlog answers REQUESTs first) gets no OFFER: its
  hold would keep an address from everyone for 30 s with no REQUEST left to withdraw it (`stale-discover`).
- Reservations (`machines:` with an address) are not written: every replica has the same config, the pools
  never contain reserved addresses, so there is nothing to race for.

etcd leases (TTL), and why they are not the replica's:
- The natural etcd idiom, one lease per process kept alive while it runs, would tie every address to the
  replica that granted it: kill -9 of that replica would delete its clients' leases after a few seconds
  while the clients still hold them, and the next replica could give those addresses away. Wrong tool.
- Instead the TTL is the DHCP lease's own end: each key is attached to an etcd lease that is never kept
  alive and expires on its own, at or after the DHCP expiry plus GRACE_SECONDS. So a client's address is
  released by etcd exactly when the client's lease has run out, whichever replica granted it and whether
  or not it still lives; a renewal (by any replica) re-puts the keys on a later etcd lease.
- Granting one etcd lease per DHCP lease would add a round trip to every ACK and an etcd lease object per
  client; the keys are attached instead to one etcd lease per BUCKET_SECONDS of expiry time (per replica),
  granted once and reused: a key lives at most BUCKET_SECONDS longer than it must, which only delays
  reuse of an address (never hands it out early).
- Clocks: the TTL etcd receives is relative (bucket end minus the granting replica's now), so skew between
  replicas and etcd does not shorten a key's life. An etcd leader change extends leases to their full TTL:
  again later, never earlier. A replica treats an address as taken for as long as its key exists, whatever
  its own clock says about the `expires` inside (so a replica whose clock runs ahead never offers an
  address etcd still holds for someone).

No quorum (etcd unreachable, or reachable only on a minority side):
- Detected by a failed transaction or by a probe (a linearizable read, once a second); one warning line
  when the replica enters the state, one info line when it leaves it (the probe succeeds again).
- Meanwhile: no new address is offered or acknowledged (`no-quorum` drops, counted per reason like other
  drops); reservations are served; a client renewing a lease the view holds for it gets an ACK for the time
  that lease has left in etcd (never more: what etcd holds is the promise, and nothing else is durable), so
  its lease is not extended past what etcd will keep; RELEASE and DECLINE change nothing in etcd (the
  address stays held until its TTL: the safe side).
- Healed: the watch resumes from the last revision it saw (or the view is reloaded if etcd compacted
  past it) and allocation starts again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from ipaddress import IPv4Address
from types import MappingProxyType

from appliance.dhcp.authoritative import DhcpAnswer
from appliance.dhcp.leases import (
    RESCAN_SECONDS, Bind, Decline, HoldOffer, Lease, LeaseChange, Release,
)
from appliance.dhcp.packet import BOOTREPLY, DhcpPacket, MessageType, Option
from appliance.dhcp.pxe import Ignore
from appliance.dhcp.server import Datagram, DhcpServer
from appliance.etcd import (
    Compare, Delete, EtcdClient, EtcdCompacted, EtcdError, EtcdUnavailable, EventType, Get, KeyValue, Put, RangeResult,
    TxnResult,
)
from appliance.mac import MacAddress, try_parse_mac

logger = logging.getLogger(__name__)

GRACE_SECONDS = 60.0  # a key outlives its DHCP lease by at least this (clock steps, the time a REQUEST takes)
BUCKET_SECONDS = 60.0  # expiry times this close share one etcd lease
PROBE_SECONDS = 1.0  # how often the quorum is checked (a linearizable read)
MIN_CACHED_ACK_SECONDS = 10  # without quorum, a renewal with less left than this is not answered
CHOSE_OTHER_SECONDS = 30.0  # how long a client's choice of another server makes its late DISCOVERs stale
CHOSE_OTHER_LIMIT = 4096  # choices remembered at most (the oldest forgotten first)


# --- keys and values (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseKeys:
    prefix: str  # e.g. "/bootd" (store.prefix)

    @property
    def root(self) -> bytes:
        return f"{self.prefix}/leases/".encode()

    def ip(self, ip: IPv4Address) -> bytes:
        return f"{self.prefix}/leases/ip/{ip}".encode()

    def mac(self, mac: MacAddress) -> bytes:
        return f"{self.prefix}/leases/mac/{mac}".encode()

    @property
    def probe(self) -> bytes:
        return f"{self.prefix}/leases-quorum".encode()  # never written: reading it needs the leader

    def parse(self, key: bytes) -> IPv4Address | MacAddress | None:
        text = key.decode(errors="replace")
        ip_prefix, mac_prefix = f"{self.prefix}/leases/ip/", f"{self.prefix}/leases/mac/"
        if text.startswith(ip_prefix):
            try:
                return IPv4Address(text[len(ip_prefix):])
            except ValueError:
                return None
        if text.startswith(mac_prefix):
            return try_parse_mac(text[len(mac_prefix):])
        return None


@dataclass(frozen=True, slots=True)
class HeldAddress:
    """What the address key says: a lease (or a quarantine, `declined`) and the revision it was written at."""
    lease: Lease
    revision: int
    declined: bool = False


def encode_address(lease: Lease, replica: str, declined: bool = False) -> bytes:
    record = {"mac": lease.mac, "expires": lease.expires, "hostname": lease.hostname, "by": replica}
    if declined:
        record["declined"] = True
    return json.dumps(record, separators=(",", ":")).encode()


def decode_address(ip: IPv4Address, value: bytes, revision: int) -> HeldAddress | None:
    try:
        record = json.loads(value)
        mac = try_parse_mac(record["mac"])
        if mac is None:
            return None
        return HeldAddress(Lease(ip=ip, mac=mac, expires=float(record["expires"]),
                                 hostname=str(record.get("hostname", ""))), revision, bool(record.get("declined")))
    except (ValueError, KeyError, TypeError):
        return None


def bucket_end(expires: float) -> int:
    """The end (wall-clock seconds) of the etcd lease a key expiring at `expires` is attached to."""
    return int(math.ceil((expires + GRACE_SECONDS) / BUCKET_SECONDS) * BUCKET_SECONDS)


# --- the local view (the decisions' lease table) --------------------------------------------------


@dataclass(slots=True)
class _Range:
    """Where to look for a free address in one range: freed ones first, then a walk through the range in a
    replica-specific order (start and stride from the replica's name; the stride is coprime with the size,
    so the walk visits every address once). Two replicas walking in order from different starts would meet
    and then propose the same addresses in lockstep, each REQUEST a coin toss (measured: about one NAK per
    client at 2,000 clients); in different orders they collide only on what the other committed in the last
    moments, before the watch told."""
    first: int
    size: int
    position: int
    stride: int
    left: int
    freed: deque[int] = field(default_factory=deque)
    restart_at: float = 0.0


def walk_order(replica: str, size: int) -> tuple[int, int]:
    """(start, stride) of this replica's walk through a range of `size` addresses."""
    digest = zlib.crc32(replica.encode())
    start = digest % size
    stride = (digest >> 8) % size or 1
    while math.gcd(stride, size) != 1:
        stride += 1
    return start, stride


class EtcdLeaseTable:
    """The replica's view of the leases in etcd, with the read interface of `LeaseTable` that the decisions
    use, plus this replica's own offers. etcd facts come in through `put`/`delete` (from the watch and from
    transaction results), each with its revision: an older fact never overwrites a newer one."""

    path = None  # nothing on disk: the view is rebuilt from etcd at start

    def __init__(self, keys: LeaseKeys, replica: str) -> None:
        self.keys = keys
        self.replica = replica
        self.allocating = True  # False while etcd has no quorum from here (set by EtcdLeaseStore)
        self.watched_revision = 0  # the watch has delivered everything up to here
        self._held: dict[IPv4Address, HeldAddress] = {}
        self._lease_by_mac: dict[MacAddress, IPv4Address] = {}
        self._mac_keys: dict[MacAddress, tuple[IPv4Address, int]] = {}  # the MAC keys: address, revision
        self._revisions: dict[bytes, int] = {}  # last revision applied per key (deletes too)
        self._offers: dict[IPv4Address, tuple[MacAddress, float]] = {}
        self._offer_by_mac: dict[MacAddress, IPv4Address] = {}
        self._ranges: dict[tuple[int, int], _Range] = {}
        self._next_sweep = 0.0

    # --- etcd facts -------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, revision: int) -> None:
        if revision <= self._revisions.get(key, 0):
            return
        self._revisions[key] = revision
        what = self.keys.parse(key)
        if isinstance(what, IPv4Address):
            held = decode_address(what, value, revision)
            if held is None:
                logger.warning("leases: unreadable value under %s in etcd; address treated as taken", key.decode())
                held = HeldAddress(Lease(ip=what, mac=MacAddress("00:00:00:00:00:00"), expires=0.0), revision, True)
            self._forget_address(what)
            self._held[what] = held
            if not held.declined:
                self._lease_by_mac[held.lease.mac] = what
        elif what is not None:
            try:
                self._mac_keys[what] = (IPv4Address(value.decode()), revision)
            except ValueError:
                self._mac_keys.pop(what, None)

    def delete(self, key: bytes, revision: int) -> None:
        if revision <= self._revisions.get(key, 0):
            return
        self._revisions[key] = revision
        what = self.keys.parse(key)
        if isinstance(what, IPv4Address):
            if self._forget_address(what):
                self._freed(what)
        elif what is not None:
            self._mac_keys.pop(what, None)

    def _forget_address(self, ip: IPv4Address) -> bool:
        held = self._held.pop(ip, None)
        if held is None:
            return False
        if self._lease_by_mac.get(held.lease.mac) == ip:
            del self._lease_by_mac[held.lease.mac]
        return True

    def reload(self, kvs: list[KeyValue], revision: int) -> None:
        """Everything under the prefix as of `revision` (at start, or after the watch fell behind a compaction)."""
        present = {kv.key for kv in kvs}
        for key in [k for k in self._revisions if k not in present]:
            self.delete(key, revision)
        for kv in kvs:
            self.put(kv.key, kv.value, kv.mod_revision)
        self.watched_revision = max(self.watched_revision, revision)

    # --- what a transaction needs to compare --------------------------------------------------------

    def held(self, ip: IPv4Address) -> HeldAddress | None:
        return self._held.get(ip)

    def deleted_since(self, key: bytes, revision: int) -> bool:
        """Whether the view saw `key` deleted at or after `revision` (and not written again)."""
        return self._revisions.get(key, 0) >= revision and self.keys.parse(key) not in self._held

    def mac_key(self, mac: MacAddress) -> tuple[IPv4Address, int] | None:
        return self._mac_keys.get(mac)

    def known_lease(self, mac: MacAddress, ip: IPv4Address) -> Lease | None:
        """The lease etcd holds (as far as the view knows) for `mac` at `ip`, expired or not."""
        held = self._held.get(ip)
        return held.lease if held is not None and not held.declined and held.lease.mac == mac else None

    # --- reads (the decisions'; same meaning as LeaseTable's) ---------------------------------------

    def candidates(self, first: IPv4Address, last: IPv4Address, now: float) -> Iterator[IPv4Address]:
        key = (int(first), int(last))
        pool = self._ranges.get(key)
        if pool is None:
            size = key[1] - key[0] + 1
            start, stride = walk_order(self.replica, size)
            pool = self._ranges[key] = _Range(first=key[0], size=size, position=start, stride=stride, left=size)
        while pool.freed:
            yield IPv4Address(pool.freed.popleft())
        restarted = False
        while True:
            while pool.left > 0:
                yield IPv4Address(pool.first + pool.position)  # left here when taken: checked again next time
                pool.position = (pool.position + pool.stride) % pool.size
                pool.left -= 1
            if restarted or now < pool.restart_at:
                return
            pool.left, pool.restart_at, restarted = pool.size, now + RESCAN_SECONDS, True

    def _freed(self, ip: IPv4Address) -> None:
        number = int(ip)
        for pool in self._ranges.values():
            if pool.first <= number < pool.first + pool.size:
                if len(pool.freed) < pool.size:
                    pool.freed.append(number)
                return

    def lease_for(self, mac: MacAddress, now: float) -> Lease | None:
        ip = self._lease_by_mac.get(mac)
        held = self._held.get(ip) if ip is not None else None
        return held.lease if held is not None and held.lease.expires > now else None

    def offered_to(self, mac: MacAddress, now: float) -> IPv4Address | None:
        ip = self._offer_by_mac.get(mac)
        offer = self._offers.get(ip) if ip is not None else None
        return ip if offer is not None and offer[0] == mac and offer[1] > now else None

    def holder(self, ip: IPv4Address, now: float) -> MacAddress | None:
        """Who has `ip`: whoever its etcd key names for as long as the key exists (expired or not: etcd
        frees it), else this replica's unexpired offer."""
        held = self._held.get(ip)
        if held is not None:
            return held.lease.mac
        offer = self._offers.get(ip)
        if offer is not None and offer[1] > now:
            return offer[0]
        return None

    def quarantined(self, ip: IPv4Address, now: float) -> bool:
        held = self._held.get(ip)
        return held is not None and held.declined

    def leases(self, now: float) -> list[Lease]:
        return sorted((h.lease for h in self._held.values() if not h.declined and h.lease.expires > now),
                      key=lambda l: l.ip)

    # --- this replica's offers ----------------------------------------------------------------------

    def apply(self, change: LeaseChange) -> bool:
        """Only offers (and their withdrawal) change the view directly; everything else goes to etcd first
        (EtcdDhcpServer) and comes back through `put`/`delete`. Returns False: nothing to write to disk."""
        match change:
            case HoldOffer(ip, mac, until):
                previous = self._offers.get(ip)
                if previous is not None and self._offer_by_mac.get(previous[0]) == ip:
                    del self._offer_by_mac[previous[0]]
                old_ip = self._offer_by_mac.get(mac)
                if old_ip is not None and old_ip != ip:
                    self._offers.pop(old_ip, None)
                    self._freed(old_ip)
                self._offers[ip] = (mac, until)
                self._offer_by_mac[mac] = ip
            case Bind(_):
                pass  # the offer holds the address until the transaction is over (then `drop_offer`)
            case Release(_, mac) | Decline(_, mac, _):
                self.drop_offer(mac)
        return False

    def drop_offer(self, mac: MacAddress) -> None:
        ip = self._offer_by_mac.pop(mac, None)
        if ip is not None and self._offers.get(ip, (None, 0.0))[0] == mac:
            del self._offers[ip]
            if ip not in self._held:
                self._freed(ip)

    def expire(self, now: float) -> None:
        for ip, offer in self._offers.items():
            if offer[1] <= now and ip not in self._held:
                self._freed(ip)
        self._offers = {ip: o for ip, o in self._offers.items() if o[1] > now}
        self._offer_by_mac = {o[0]: ip for ip, o in self._offers.items()}
        # deletions are remembered only until the watch has passed them: no older fact can come after that
        # (so the map stays as large as what etcd holds, not as every MAC ever seen)
        present = {self.keys.ip(ip) for ip in self._held} | {self.keys.mac(mac) for mac in self._mac_keys}
        self._revisions = {key: revision for key, revision in self._revisions.items()
                           if key in present or revision > self.watched_revision}

    def sweep(self, now: float, every: float = 60.0) -> None:
        if now >= self._next_sweep:
            self.expire(now)
            self._next_sweep = now + every

    def sizes(self) -> dict[str, int]:
        return {"leases": len(self._held), "offers": len(self._offers), "offers_by_mac": len(self._offer_by_mac),
                "quarantined": sum(1 for h in self._held.values() if h.declined)}


# --- transactions (pure: view + change -> what to send) --------------------------------------------


@dataclass(frozen=True, slots=True)
class TxnPlan:
    compare: list[Compare]
    success: list[Put | Delete]  # every write of a transaction has its revision: the view learns them from it
    failure: list[Get]  # the keys compared, read back so the view learns what etcd has instead


def bind_plan(table: EtcdLeaseTable, lease: Lease, etcd_lease: int) -> TxnPlan | None:
    """Bind `lease` if the address and the MAC keys are still as the view saw them (the address absent or
    this MAC's, the MAC key absent or at its revision); a MAC moving frees its old address in the same step.
    None when the view says another MAC holds the address (or it is quarantined): nothing to try."""
    keys = table.keys
    ip_key, mac_key = keys.ip(lease.ip), keys.mac(lease.mac)
    held = table.held(lease.ip)
    if held is not None and (held.declined or held.lease.mac != lease.mac):
        return None  # planned from the view as it is now (the watch may have spoken since the decision)
    compare = [Compare.mod_revision(ip_key, held.revision) if held is not None else Compare.version(ip_key, 0)]
    success: list[Put | Delete] = [Put(ip_key, encode_address(lease, table.replica), etcd_lease),
                                   Put(mac_key, str(lease.ip).encode(), etcd_lease)]
    read = [ip_key, mac_key]
    previous = table.mac_key(lease.mac)
    if previous is None:
        compare.append(Compare.version(mac_key, 0))
    else:
        compare.append(Compare.mod_revision(mac_key, previous[1]))
        old = table.held(previous[0])
        old_key = keys.ip(previous[0])
        if previous[0] != lease.ip:
            # The MAC moves: its old address is freed in the same step (a MAC holds one address). The view
            # may not have seen that key yet (another replica wrote it a moment ago): a MAC key and its
            # address key are always written together, at one revision, so the MAC key's revision is it.
            if old is not None and old.lease.mac == lease.mac and not old.declined:
                revision = old.revision
            elif old is None and not table.deleted_since(old_key, previous[1]):
                revision = previous[1]
            else:
                revision = 0
            if revision:
                compare.append(Compare.mod_revision(old_key, revision))
                success.append(Delete(old_key))
                read.append(old_key)
    return TxnPlan(compare, success, [Get(k) for k in read])


def free_plan(table: EtcdLeaseTable, ip: IPv4Address, mac: MacAddress, decline_until: float | None,
              etcd_lease: int) -> TxnPlan | None:
    """RELEASE (both keys deleted) or DECLINE (the address key becomes a quarantine until `decline_until`)
    if the view says `mac` holds `ip`; None when it does not."""
    held = table.held(ip)
    if held is None or held.declined or held.lease.mac != mac:
        return None
    keys = table.keys
    ip_key, mac_key = keys.ip(ip), keys.mac(mac)
    compare = [Compare.mod_revision(ip_key, held.revision)]
    ops: list[Put | Delete]
    if decline_until is None:
        ops = [Delete(ip_key)]
    else:
        quarantine = Lease(ip=ip, mac=mac, expires=decline_until)
        ops = [Put(ip_key, encode_address(quarantine, table.replica, declined=True), etcd_lease)]
    read = [ip_key]
    mac_held = table.mac_key(mac)
    if mac_held is not None and mac_held[0] == ip:
        compare.append(Compare.mod_revision(mac_key, mac_held[1]))
        ops.append(Delete(mac_key))
        read.append(mac_key)
    return TxnPlan(compare, ops, [Get(k) for k in read])


def learn(table: EtcdLeaseTable, plan: TxnPlan, result: TxnResult) -> None:
    """What the transaction did (its writes, at its revision) or found instead (the failure's reads), into
    the view, so the next decision sees it before the watch tells."""
    if result.succeeded:
        for op in plan.success:
            if isinstance(op, Put):
                table.put(op.key, op.value, result.revision)
            else:
                table.delete(op.key, result.revision)
        return
    for get, found in zip(plan.failure, result.responses):
        assert isinstance(found, RangeResult)
        if found.kvs:
            table.put(get.key, found.kvs[0].value, found.kvs[0].mod_revision)
        else:
            table.delete(get.key, result.revision)


# --- etcd I/O -------------------------------------------------------------------------------------


class BindOutcome(Enum):
    COMMITTED = "committed"
    TAKEN = "taken"  # another MAC has the address (a lost race): NAK
    UNAVAILABLE = "unavailable"  # no quorum: nothing was written


class EtcdLeaseStore:
    """The view's I/O: loads it, follows the watch, commits changes with transactions, and knows whether
    etcd has a quorum from here (`table.allocating`). Every call is bounded by the client's timeout
    (store.timeout) in all, not per endpoint tried as the client does: a DHCP client waits only seconds, and
    a call not answered by then counts as "no quorum"."""

    def __init__(self, client: EtcdClient, table: EtcdLeaseTable, *, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.call_seconds = client.timeout
        self.table = table
        self.clock = clock
        self.commits = 0
        self.lost_races = 0
        self._buckets: dict[int, int] = {}  # bucket end -> etcd lease ID
        self._granting: dict[int, asyncio.Future[int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._watching: asyncio.Task[None] | None = None

    @property
    def endpoints(self) -> str:
        return ", ".join(self.client.endpoints)

    async def start(self) -> None:
        """Load the view (EtcdError if etcd cannot be read), then follow it and watch the quorum."""
        await self._load()
        loop = asyncio.get_running_loop()
        self._watching = loop.create_task(self._watch())
        self._tasks = [loop.create_task(self._probe())]
        logger.info("leases: %d addresses held in etcd (%s), followed from revision %d", self.table.sizes()["leases"],
                    self.endpoints, self.table.watched_revision)

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._watching] if self._watching is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _call(self, work):
        try:
            return await asyncio.wait_for(work, self.call_seconds)
        except TimeoutError:
            raise EtcdUnavailable(f"etcd unreachable: no answer within {self.call_seconds:g} s") from None

    async def _load(self) -> None:
        found = await self._call(self.client.get_prefix(self.table.keys.root))
        self.table.reload(list(found.kvs), found.revision)

    # --- quorum -----------------------------------------------------------------------------------

    def _lost_quorum(self, reason: str) -> None:
        if self.table.allocating:
            self.table.allocating = False
            logger.warning("leases: etcd has no quorum from this replica (%s): no new addresses; reservations and "
                           "the leases it knows are still served", reason)

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                await self._call(self.client.revision())  # linearizable: needs a leader and a quorum
            except EtcdError as exc:
                self._lost_quorum(str(exc))
                continue
            if not self.table.allocating:
                self._buckets.clear()  # granted before the outage: may have expired meanwhile
                # a watch stream through a link that silently dropped packets may still look alive (gRPC's
                # keepalive notices after ~15 s): resume it now, from the last revision it delivered
                if self._watching is not None:
                    self._watching.cancel()
                self._watching = asyncio.get_running_loop().create_task(self._watch())
                self.table.allocating = True
                logger.info("leases: etcd quorum reachable again (%s): allocating new addresses", self.endpoints)

    # --- the watch --------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                async for batch in self.client.watch(self.table.keys.root, prefix=True,
                                                     start_revision=self.table.watched_revision + 1):
                    for event in batch.events:
                        if event.type is EventType.DELETE:
                            self.table.delete(event.kv.key, event.kv.mod_revision)
                        else:
                            self.table.put(event.kv.key, event.kv.value, event.kv.mod_revision)
                    # an empty batch is a progress notice (everything up to its revision was delivered); for
                    # events, what they carry (a catch-up batch's header may run ahead of the events sent so far)
                    seen = max(e.kv.mod_revision for e in batch.events) if batch.events else batch.revision
                    self.table.watched_revision = max(self.table.watched_revision, seen)
            except EtcdCompacted:
                logger.info("leases: etcd compacted past revision %d: reading the leases again",
                            self.table.watched_revision)
            except EtcdError as exc:
                logger.warning("leases: watch ended (%s); starting again", exc)
            while True:
                try:
                    await self._load()
                    break
                except EtcdError:
                    await asyncio.sleep(PROBE_SECONDS)

    # --- commits ----------------------------------------------------------------------------------

    async def _etcd_lease(self, expires: float) -> int:
        """The etcd lease for keys expiring at `expires`: one per bucket, granted once, never kept alive."""
        end = bucket_end(expires)
        lease_id = self._buckets.get(end)
        if lease_id is not None:
            return lease_id
        waiting = self._granting.get(end)
        if waiting is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._granting[end] = future
        try:
            granted = await self._call(self.client.lease_grant(max(1, math.ceil(end - self.clock()))))
            now = self.clock()
            for old in [e for e in self._buckets if e < now]:
                del self._buckets[old]
            self._buckets[end] = granted.id
            future.set_result(granted.id)
            return granted.id
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else EtcdUnavailable("cancelled"))
            future.exception()  # marked as seen: there may be no other waiter
            raise
        finally:
            del self._granting[end]

    async def _commit(self, plan_for: Callable[[int], TxnPlan | None], expires: float) -> bool | None:
        """One transaction planned from the view (None: the view says there is nothing to do); True when its
        comparisons held. A lease ID etcd no longer knows (expired during a long outage) is granted again once."""
        for attempt in (1, 2):
            plan = plan_for(await self._etcd_lease(expires))
            if plan is None:
                return None
            try:
                result = await self._call(self.client.txn(plan.compare, plan.success, plan.failure))
            except EtcdError as exc:
                if "lease not found" in str(exc) and attempt == 1:
                    self._buckets.clear()
                    continue
                raise
            learn(self.table, plan, result)
            return result.succeeded
        raise EtcdError("etcd: lease not found after granting it again")

    async def bind(self, lease: Lease) -> BindOutcome:
        """Commit `lease`: COMMITTED, TAKEN (etcd says another MAC holds the address), or UNAVAILABLE."""
        if not self.table.allocating:
            return BindOutcome.UNAVAILABLE
        try:
            for _ in range(2):  # a failed comparison refreshed the view (the failure's reads): decide once more
                held = self.table.held(lease.ip)
                if held is not None and (held.declined or held.lease.mac != lease.mac):
                    break  # (bind_plan checks again once the etcd lease is there: the view moves meanwhile)
                ok = await self._commit(lambda etcd_lease: bind_plan(self.table, lease, etcd_lease), lease.expires)
                if ok is None:
                    break
                if ok:
                    self.commits += 1
                    return BindOutcome.COMMITTED
        except EtcdUnavailable as exc:
            self._lost_quorum(str(exc))
            return BindOutcome.UNAVAILABLE
        except EtcdError as exc:
            logger.error("leases: etcd refused the lease of %s for %s: %s", lease.ip, lease.mac, exc)
            return BindOutcome.UNAVAILABLE
        self.lost_races += 1
        if logger.isEnabledFor(logging.DEBUG):
            held = self.table.held(lease.ip)
            logger.debug("leases: %s for %s lost: etcd has %s", lease.ip, lease.mac,
                         f"{held.lease.mac} (revision {held.revision})" if held is not None else "it free")
        return BindOutcome.TAKEN

    async def free(self, ip: IPv4Address, mac: MacAddress, decline_until: float | None) -> bool:
        """RELEASE or DECLINE in etcd; False when nothing changed (not this MAC's address, or no quorum)."""
        if not self.table.allocating:
            return False
        expires = decline_until if decline_until is not None else self.clock()
        try:
            return bool(await self._commit(lambda etcd_lease: free_plan(self.table, ip, mac, decline_until, etcd_lease),
                                           expires))
        except EtcdUnavailable as exc:
            self._lost_quorum(str(exc))
        except EtcdError as exc:
            logger.error("leases: etcd refused to free %s of %s: %s", ip, mac, exc)
        return False


# --- the server: where a decision's change becomes durable -----------------------------------------


class EtcdDhcpServer(DhcpServer):
    """DhcpServer whose lease changes are committed to etcd before the client hears of them.

    The decisions are the file store's (authoritative.py over the view). Only `_apply` differs: the file
    store cannot lose a race, so its writer can only answer "written" or "disk failed, answer anyway"; here
    a REQUEST's transaction can be refused (-> NAK) or not be possible at all (no quorum -> silence, or a
    renewal from the view for the time etcd still holds)."""

    def __init__(self, *, store: EtcdLeaseStore, leases: object = None, **kw) -> None:
        super().__init__(leases=store.table, **kw)  # type: ignore[arg-type]  # same read interface
        self.store = store
        self._commits: set[asyncio.Task[None]] = set()
        # MAC -> (xid, when) of a REQUEST that named another server: see _stale_discover
        self._chose_other: dict[MacAddress, tuple[int, float]] = {}

    def close(self) -> None:
        super().close()
        for task in self._commits:
            task.cancel()

    def _reserved(self, mac: MacAddress, ip: IPv4Address) -> bool:
        addresses = self.policies.addresses
        reservation = addresses.reservations.get(mac) if addresses is not None else None
        return reservation is not None and reservation.ip == ip

    def _chose_another_server(self, mac: MacAddress, xid: int) -> None:
        self._chose_other.pop(mac, None)
        if len(self._chose_other) >= CHOSE_OTHER_LIMIT:
            del self._chose_other[next(iter(self._chose_other))]
        self._chose_other[mac] = (xid, self._clock())

    def _stale_discover(self, mac: MacAddress, xid: int) -> bool:
        """Whether this DISCOVER belongs to an exchange in which the client already REQUESTed another server's
        offer (RFC 2131: one xid from DISCOVER to REQUEST). Under overload DISCOVERs wait in the backlog
        while REQUESTs are answered at once (DhcpServer._drain_authoritative), so with two replicas a
        client's REQUEST for the other one is often read before this replica's answer to its DISCOVER. That
        late OFFER reaches nobody, but its hold kept the address from every other client for
        OFFER_HOLD_SECONDS, and there was no REQUEST left to withdraw it: after 2,000 clients raced through
        two replicas, ~300 such holds made a range with 300 free addresses "exhausted" on the survivor for
        the next 30 s (CI: a new client got no OFFER, test_two_replicas_race_survive_a_kill_and_a_cut_off)."""
        chose = self._chose_other.get(mac)
        return chose is not None and chose[0] == xid and self._clock() - chose[1] < CHOSE_OTHER_SECONDS

    def _drop(self, ignore: Ignore, dgram: Datagram) -> None:
        if ignore.reason == "other-server" and ignore.mac is not None and len(dgram.data) >= 8:
            self._chose_another_server(MacAddress(ignore.mac), int.from_bytes(dgram.data[4:8], "big"))
        super()._drop(ignore, dgram)

    def _apply(self, sock, packet: DhcpPacket, answer: DhcpAnswer, dgram: Datagram) -> None:
        table: EtcdLeaseTable = self.leases  # type: ignore[assignment]
        change = answer.change
        if isinstance(change, HoldOffer):
            if self._stale_discover(change.mac, packet.xid):
                self._drop(Ignore("stale-discover", f"{change.mac} already chose another server in this exchange",
                                  mac=change.mac), dgram)
                return
            if not table.allocating and table.known_lease(change.mac, change.ip) is None \
                    and not self._reserved(change.mac, change.ip):
                self._drop(Ignore("no-quorum", f"etcd has no quorum from here: no new address for {change.mac}",
                                  mac=change.mac), dgram)
                return
            table.apply(change)
        elif isinstance(change, Bind):
            table.apply(change)
            if not self._reserved(change.lease.mac, change.lease.ip):
                self._start(self._bind(sock, packet, answer, change.lease, dgram))
                return
        elif isinstance(change, (Release, Decline)):
            table.apply(change)
            if packet.message_type in (MessageType.RELEASE, MessageType.DECLINE):
                until = change.until if isinstance(change, Decline) else None
                self._start(self._free(sock, packet, answer, change.ip, change.mac, until, dgram))
                return
            # a REQUEST for another server: only this replica's offer is withdrawn, never etcd's lease (and a
            # DISCOVER of that exchange still waiting here must not make a new one)
            self._chose_another_server(change.mac, packet.xid)
        self._answer(sock, packet, answer, dgram, changed=False)

    def _start(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._commits.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._commits.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:  # our bug: logged and counted
            self.stats.internal_errors += 1
            logger.error("dhcp: internal error committing a lease change", exc_info=error)

    async def _bind(self, sock, packet: DhcpPacket, answer: DhcpAnswer, lease: Lease, dgram: Datagram) -> None:
        try:
            outcome = await self.store.bind(lease)
        finally:
            # only now: until etcd answered, the offer keeps this replica from proposing the address to another
            self.store.table.drop_offer(lease.mac)
        if outcome is BindOutcome.COMMITTED:
            self._answer(sock, packet, answer, dgram, changed=True)
        elif outcome is BindOutcome.TAKEN:
            held = self.store.table.held(lease.ip)
            self._answer(sock, packet, replace(answer, reply=nak(packet, answer), change=None, ip=None,
                                               summary=f"NAK: {lease.ip} was taken by "
                                                       f"{held.lease.mac if held else 'another client'} meanwhile"),
                         dgram, changed=False)
        else:
            known = self.store.table.known_lease(lease.mac, lease.ip)
            left = int(known.expires - self._clock()) if known is not None else 0
            if left < MIN_CACHED_ACK_SECONDS or answer.reply is None:
                self._drop(Ignore("no-quorum", f"etcd has no quorum from here: {lease.ip} not given to {lease.mac}",
                                  mac=lease.mac), dgram)
                return
            self._answer(sock, packet, replace(answer, reply=with_lease_time(answer.reply, left),
                                               summary=f"{answer.summary} (no etcd quorum: the {left} s etcd "
                                                       "still holds)"), dgram, changed=False)

    async def _free(self, sock, packet: DhcpPacket, answer: DhcpAnswer, ip: IPv4Address, mac: MacAddress,
                    until: float | None, dgram: Datagram) -> None:
        changed = await self.store.free(ip, mac, until)
        self._answer(sock, packet, answer, dgram, changed=changed)


def nak(packet: DhcpPacket, answer: DhcpAnswer) -> DhcpPacket:
    """RFC 2131 §4.3.2: broadcast (the client has no address to be reached at), our server identifier."""
    assert answer.reply is not None
    server_id = answer.reply.options[Option.SERVER_ID]
    options = {Option.MESSAGE_TYPE: bytes((MessageType.NAK,)), Option.SERVER_ID: server_id}
    return DhcpPacket(op=BOOTREPLY, htype=packet.htype, hlen=packet.hlen, xid=packet.xid, flags=packet.flags | 0x8000,
                      giaddr=packet.giaddr, chaddr=packet.chaddr, options=MappingProxyType(options))


def with_lease_time(reply: DhcpPacket, seconds: int) -> DhcpPacket:
    """`reply` promising `seconds` (and T1, T2 in proportion) instead of the configured lease."""
    options = dict(reply.options)
    options[Option.LEASE_TIME] = seconds.to_bytes(4, "big")
    options[Option.RENEWAL_TIME] = (seconds // 2).to_bytes(4, "big")
    options[Option.REBINDING_TIME] = (seconds * 7 // 8).to_bytes(4, "big")
    return replace(reply, options=MappingProxyType(options))


# --- the daemon's entry -----------------------------------------------------------------------------


async def open_lease_store(client: EtcdClient, prefix: str, server_address: IPv4Address | None) -> EtcdLeaseStore:
    """The leases' view, loaded from etcd and followed (EtcdError when etcd cannot be read). The replica's
    name (host name and address) only places its allocation cursor: two replicas start at different points."""
    replica = f"{socket.gethostname()}/{server_address or ''}"
    store = EtcdLeaseStore(client, EtcdLeaseTable(LeaseKeys(prefix), replica))
    await store.start()
    return store
