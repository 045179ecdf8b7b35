"""Authoritative mode's state: bound leases, offers held for a moment, declined addresses in quarantine.

Invariants:
- An address is bound to at most one MAC, and a MAC holds at most one bound address.
- Decisions only read a `LeaseTable`; what they decide comes back as a `LeaseChange` value that the server
  applies with `apply` (then `save`s when the change binds or frees an address).
- `save` writes the whole table atomically (temp file, fsync, rename, fsync of the directory), so a crash
  leaves the old or the new file, never a partial one. `load` skips entries it cannot read, with a warning.
- Times are wall-clock seconds (leases outlive restarts); the caller passes `now`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from appliance.atomic import write_atomically
from appliance.mac import MacAddress, try_parse_mac

logger = logging.getLogger(__name__)

OFFER_HOLD_SECONDS = 30.0  # an OFFERed address is kept for its client this long (RFC 2131 §4.3.1 "SHOULD")
QUARANTINE_SECONDS = 600.0  # a DECLINEd address is in use by someone we don't know; leave it alone


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


class LeaseWriter:
    """Writes the lease table off the event loop (a temp file, fsync and rename took milliseconds per ACK
    on the loop), one write at a time, group-committed: what waits for a change to be on disk (an ACK that
    binds an address) is called when a write that includes that change has finished, with whether it
    succeeded. A failed write (a full disk) is logged as an error and retried with the next change; the
    table in memory stays right, so serving goes on.
    """

    def __init__(self, table: LeaseTable, loop: asyncio.AbstractEventLoop) -> None:
        self.table = table
        self.loop = loop
        self.failures = 0
        self._writing = False
        self._pending: list[Callable[[bool], None]] = []
        self._dirty = False

    def commit(self, then: Callable[[bool], None]) -> None:
        """Persist the table as it is now, then call `then(ok)`."""
        self._pending.append(then)
        self._dirty = True
        if not self._writing:
            self._write()

    def _write(self) -> None:
        waiting, self._pending, self._dirty = self._pending, [], False
        if self.table.path is None:
            for then in waiting:
                then(True)
            return
        self._writing = True
        future = self.loop.run_in_executor(None, write_atomically, self.table.path, self.table.encoded())
        future.add_done_callback(lambda done: self._written(done, waiting))

    def _written(self, done: asyncio.Future, waiting: list[Callable[[bool], None]]) -> None:
        self._writing = False
        error = done.exception()
        if error is not None:
            self.failures += 1
            self._dirty = True  # written again with the next change
            logger.error("leases: cannot write %s: %s (leases are kept in memory; bootd keeps serving)",
                         self.table.path, error)
        for then in waiting:
            try:
                then(error is None)
            except Exception:  # one caller's bug must not strand the others' replies
                logger.exception("leases: after a write")
        if self._pending:
            self._write()


class LeaseTable:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._bound: dict[IPv4Address, Lease] = {}
        self._by_mac: dict[MacAddress, IPv4Address] = {}
        self._offers: dict[IPv4Address, tuple[MacAddress, float]] = {}
        self._offer_by_mac: dict[MacAddress, IPv4Address] = {}
        self._quarantine: dict[IPv4Address, float] = {}
        self._next_sweep = 0.0

    # --- reads (decisions) ------------------------------------------------------------------------

    def lease_for(self, mac: MacAddress, now: float) -> Lease | None:
        ip = self._by_mac.get(mac)
        lease = self._bound.get(ip) if ip is not None else None
        return lease if lease is not None and lease.expires > now else None

    def offered_to(self, mac: MacAddress, now: float) -> IPv4Address | None:
        ip = self._offer_by_mac.get(mac)
        offer = self._offers.get(ip) if ip is not None else None
        return ip if offer is not None and offer[0] == mac and offer[1] > now else None

    def holder(self, ip: IPv4Address, now: float) -> MacAddress | None:
        """Who has `ip` now: its unexpired lease, else its unexpired offer."""
        lease = self._bound.get(ip)
        if lease is not None and lease.expires > now:
            return lease.mac
        offer = self._offers.get(ip)
        if offer is not None and offer[1] > now:
            return offer[0]
        return None

    def quarantined(self, ip: IPv4Address, now: float) -> bool:
        return self._quarantine.get(ip, 0.0) > now

    def leases(self, now: float) -> list[Lease]:
        return sorted((l for l in self._bound.values() if l.expires > now), key=lambda l: l.ip)

    # --- changes (the server) ---------------------------------------------------------------------

    def apply(self, change: LeaseChange) -> bool:
        """Apply a decision's change; True when the persisted state changed (the caller then saves)."""
        match change:
            case HoldOffer(ip, mac, until):
                previous = self._offers.get(ip)
                if previous is not None and self._offer_by_mac.get(previous[0]) == ip:
                    del self._offer_by_mac[previous[0]]  # so both maps stay as small as the pool
                old_ip = self._offer_by_mac.get(mac)
                if old_ip is not None and old_ip != ip:
                    self._offers.pop(old_ip, None)
                self._offers[ip] = (mac, until)
                self._offer_by_mac[mac] = ip
                return False
            case Bind(lease):
                self._drop_offer(lease.mac)
                self._offers.pop(lease.ip, None)
                old_ip = self._by_mac.get(lease.mac)
                if old_ip is not None and old_ip != lease.ip:
                    self._bound.pop(old_ip, None)
                previous = self._bound.get(lease.ip)
                if previous is not None and previous.mac != lease.mac:
                    self._by_mac.pop(previous.mac, None)
                self._bound[lease.ip] = lease
                self._by_mac[lease.mac] = lease.ip
                return True
            case Release(ip, mac):
                self._drop_offer(mac)  # only this client's: a RELEASE never touches another client's offer
                lease = self._bound.get(ip)
                if lease is not None and lease.mac == mac:
                    del self._bound[ip]
                    self._by_mac.pop(mac, None)
                    return True
                return False
            case Decline(ip, mac, until):
                self._quarantine[ip] = until
                changed = self.apply(Release(ip, mac))
                return changed
        raise AssertionError(f"unknown lease change {change!r}")

    def _drop_offer(self, mac: MacAddress) -> None:
        ip = self._offer_by_mac.pop(mac, None)
        if ip is not None and self._offers.get(ip, (None, 0.0))[0] == mac:
            del self._offers[ip]

    def expire(self, now: float) -> None:
        """Forget offers and quarantines that ran out (bound leases stay until replaced: their history
        lets a returning client get its address back)."""
        self._offers = {ip: o for ip, o in self._offers.items() if o[1] > now}
        self._offer_by_mac = {o[0]: ip for ip, o in self._offers.items()}
        self._quarantine = {ip: t for ip, t in self._quarantine.items() if t > now}

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
        """The table as the lease file holds it: a snapshot, taken on the event loop, written elsewhere."""
        records = [{"ip": str(l.ip), "mac": l.mac, "expires": l.expires, "hostname": l.hostname}
                   for l in sorted(self._bound.values(), key=lambda l: l.ip)]
        return json.dumps({"version": 1, "leases": records}, indent=1).encode()

    def save(self) -> None:
        if self.path is None:
            return
        write_atomically(self.path, self.encoded())

    @classmethod
    def load(cls, path: Path) -> LeaseTable:
        table = cls(path)
        for temp in path.parent.glob(f".{path.name}.*"):  # a write that a crash (kill -9) cut short
            try:
                temp.unlink()
                logger.info("leases: removed %s, left by an interrupted write", temp.name)
            except OSError as exc:
                logger.warning("leases: cannot remove %s: %s", temp, exc.strerror)
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return table
        except (OSError, ValueError) as exc:
            logger.warning("leases: cannot read %s (%s); starting with no leases", path, exc)
            return table
        for record in raw.get("leases", []) if isinstance(raw, dict) else []:
            try:
                mac = try_parse_mac(record["mac"])
                lease = Lease(ip=IPv4Address(record["ip"]), mac=mac, expires=float(record["expires"]),
                              hostname=str(record.get("hostname", "")))
                if mac is None:
                    raise ValueError(f"bad MAC {record['mac']!r}")
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("leases: skipping an unreadable entry in %s: %s", path, exc)
                continue
            table.apply(Bind(lease))
        return table
