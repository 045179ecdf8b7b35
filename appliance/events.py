"""Events, the bus that carries them, and each machine's provisioning progress.

Invariants:
- `EventBus.publish` never blocks and never raises into the publisher: it appends to a bounded list and
  schedules one flush with `call_soon`; past the bound the event is dropped and counted. Each live
  view (`EventStream`) has its own bounded backlog and its own drop count.
- Sinks (the tracker, the log writer) run in the flush, outside the publisher's code path, and an exception
  in one of them is logged and counted, never passed on.
- `ProgressTracker` holds at most `max_machines` machines; when full it forgets the machine unseen for the
  longest time among those not in the config, and only when all are configured, the oldest configured one.
- Every delivered event gets the next id (1, 2, ...; ids restart with the daemon). The last `RECENT_EVENTS`
  are kept, cut to the tracker's byte budget per event, so a live view that lost its connection can ask for
  what came after the last id it saw. An `EventStream` (one live view's backlog) holds at most `maxsize`
  events; past it the view is behind, its backlog is emptied and it is told to start again from the list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from appliance.dhcp.pxe import ARCH_TABLE  # the architecture table is defined once, there
from appliance.logs import step_handler
from appliance.mac import MacAddress

logger = logging.getLogger(__name__)


class EventKind(StrEnum):
    """A step of a machine's boot. The order of the members is the order of a boot."""

    POWER = "power"  # a BMC asked to PXE-boot the machine (`bootd reprovision`): a new boot starts there

    DHCP = "dhcp"
    TFTP = "tftp"
    FIRMWARE = "firmware"  # a boot binary over HTTP (/firmware/: UEFI HTTP boot's iPXE, shim, GRUB)
    BOOT_SCRIPT = "boot-script"  # /boot.ipxe, /bootd.ipxe
    BOOT_CONFIG = "boot-config"  # /ipxe, /grub: kernel, initrd, args of the machine's profile
    KERNEL = "kernel"
    INITRD = "initrd"
    ASSET = "asset"  # any other file under /assets/
    LEASE = "lease"  # an address for the booted system's own DHCP client (not a firmware's: no new boot)
    IGNITION = "ignition"
    GENERIC = "generic"
    METADATA = "metadata"
    REPORT = "report"
    DATA = "data"  # a write through the read-write API (no machine: `mac` is None)
    ASSETS = "assets"  # the assets tracker checked, fetched or switched a channel (no machine: `mac` is None)


_RANK = {kind: rank for rank, kind in enumerate(EventKind)}
# A DHCP or boot-script step after these starts a new boot of the same machine.
_NEW_BOOT_AFTER = _RANK[EventKind.BOOT_CONFIG]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    kind: EventKind
    mac: MacAddress | None
    peer: str | None  # the client's IP address as text
    detail: str
    ok: bool = True
    time: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineReport(Event):
    """What a machine said about itself when it reached its system (POST /api/v1/machines/{mac}/report)."""

    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BootConfigServed(Event):
    """The kernel and initrd a machine was told to fetch, so their downloads count as its kernel/initrd steps."""

    kernel: str = ""
    initrds: tuple[str, ...] = ()
    group: str | None = None  # the group that chose the profile, and the profile (for the views)
    profile: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DhcpServed(Event):
    """A firmware's DHCP request answered: its option 93 architecture code, when it sent one."""

    arch: int | None = None


_new, _set = object.__new__, object.__setattr__


def dhcp_served(mac: MacAddress, peer: str | None, detail: str, arch: int | None, at: float) -> DhcpServed:
    """`DhcpServed(kind=EventKind.DHCP, mac=mac, peer=peer, detail=detail, arch=arch, time=at)`, the same
    event, at less than half the cost: proxy-DHCP makes one per OFFER, and the frozen dataclass's keyword
    __init__ cost 2.4 us of them on the benchmark's machine (a test holds the two equal, field by field)."""
    event = _new(DhcpServed)
    _set(event, "kind", EventKind.DHCP)
    _set(event, "mac", mac)
    _set(event, "peer", peer)
    _set(event, "detail", detail)
    _set(event, "ok", True)
    _set(event, "time", at)
    _set(event, "arch", arch)
    return event


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerEvent(Event):
    """A request to a machine's BMC and its outcome (`bootd power`, `bootd reprovision`). Only a PXE boot request
    (`new_boot`, then its outcome with `timeline`) is a stage of the machine's boot; status, on, off and cycle
    go to its history and its last seen power state."""

    state: str | None = None  # the power state the BMC reported: "on", "off" (None: not learnt)
    timeline: bool = False  # a stage of the current boot (the PXE boot request and its outcome)
    new_boot: bool = False  # the request itself: the timeline of a new boot starts here


def client_arch(option_93: bytes | None) -> int | None:
    """The first architecture code of option 93 (RFC 4578 §2.1: a list of 16-bit codes)."""
    return int.from_bytes(option_93[:2], "big") if option_93 is not None and len(option_93) >= 2 else None


class EventStream:
    """One live view's backlog: (id, event) pairs not yet sent, at most `maxsize`. The events are the ones
    the bus and the tracker hold anyway, so a backlog costs a reference per event. A view that falls
    `maxsize` behind is `behind`: nothing more is queued for it until it has emptied its backlog and
    started again from the machine list (`catch_up`)."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue(maxsize)
        self.behind = False
        self.dropped = 0

    def offer(self, event_id: int, event: Event) -> None:
        if self.behind:
            self.dropped += 1
            return
        try:
            self.queue.put_nowait((event_id, event))
        except asyncio.QueueFull:
            self.behind = True
            self.dropped += 1

    def catch_up(self) -> None:
        """Forget the backlog: the view reloads the list instead."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.behind = False


RECENT_EVENTS = 1024  # kept for reconnecting views (`EventBus.since`)
_RESYNC = Event.__new__(Event)  # wakes a view told to reload (`EventBus.resync_views`); never published


class EventBus:
    def __init__(self, *, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self.dropped = 0
        self.sink_errors = 0
        self._pending: deque[Event] = deque()
        self._scheduled = False
        self._sinks: list[Callable[[Event], None]] = []
        self._streams: list[EventStream] = []
        self.last_id = 0  # the id of the last event delivered
        self._recent: deque[tuple[int, Event]] = deque(maxlen=RECENT_EVENTS)

    def add_sink(self, sink: Callable[[Event], None]) -> None:
        self._sinks.append(sink)

    def stream(self, maxsize: int) -> EventStream:
        stream = EventStream(maxsize)
        self._streams.append(stream)
        return stream

    def unsubscribe(self, stream: EventStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def resync_views(self) -> None:
        """Tell every live view to reload the machine list: something no event carries changed (the fleet
        view went stale or current again). A view is woken as one that fell behind is."""
        for stream in self._streams:
            if not stream.behind:
                stream.behind = True
                if not stream.queue.full():
                    stream.queue.put_nowait((self.last_id, _RESYNC))

    def since(self, event_id: int) -> list[tuple[int, Event]] | None:
        """The kept events after `event_id`, oldest first; None when some of them are no longer kept, or
        the id was never given (a view that saw an earlier run of the daemon)."""
        if event_id > self.last_id:
            return None
        if event_id == self.last_id:
            return []
        if not self._recent or self._recent[0][0] > event_id + 1:
            return None
        return [(i, e) for i, e in self._recent if i > event_id]

    def publish(self, event: Event) -> None:
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        self._pending.append(event)
        if not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
                self._scheduled = True
            except RuntimeError:  # no loop (a unit test, a CLI command): deliver now
                self.flush()

    def flush(self) -> None:
        # Per event (one per proxy OFFER): the attributes read once per flush, bounded's test inline.
        self._scheduled = False
        pending, sinks, streams, recent = self._pending, self._sinks, self._streams, self._recent
        while pending:
            event = pending.popleft()
            for sink in sinks:
                try:
                    sink(event)
                except Exception:  # a sink's bug must not stop the others or the publisher
                    self.sink_errors += 1
                    logger.exception("event sink %r failed on %r", sink, event)
            self.last_id = event_id = self.last_id + 1
            short = len(event.detail) <= MAX_DETAIL_CHARS and event.__class__ is not MachineReport
            recent.append((event_id, event if short else bounded(event)))
            for stream in streams:
                stream.offer(event_id, event)


@dataclass(slots=True)
class StageMark:
    kind: EventKind
    first: float
    last: float
    detail: str
    ok: bool
    count: int = 1
    timed: bool = False  # observed in bootd_boot_stage_seconds (metrics.StageTimer): once per stage and boot

    def as_json(self) -> dict[str, Any]:
        return {"stage": self.kind.value, "time": self.first, "last": self.last, "detail": self.detail,
                "ok": self.ok, "count": self.count}


# What clients can make bootd remember is bounded in bytes, not only in counts: a report or a request's
# labels are chosen by the client. Sizes are estimated as the characters kept plus a fixed overhead per
# event, which is what a Python object of that text costs within a small factor.
MAX_DETAIL_CHARS = 1024  # an event's detail (a miss reason quotes the request's labels)
MAX_REPORT_CHARS = 4096  # a report's keys and values together
MACHINE_BUDGET = 64 * 1024  # one machine's events, stages and report
TOTAL_BUDGET = 16 * 1024 * 1024  # every machine's, together
EVENT_OVERHEAD = 200


def bounded(event: Event) -> Event:
    """`event` as the tracker keeps it: its detail and a report's fields cut to the budgets above."""
    detail = event.detail
    if len(detail) <= MAX_DETAIL_CHARS and not isinstance(event, MachineReport):  # nearly every event
        return event
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[: MAX_DETAIL_CHARS - 1] + "\u2026"
    fields = getattr(event, "fields", ())
    if fields and sum(len(k) + len(v) for k, v in fields) > MAX_REPORT_CHARS:
        kept, left = [], MAX_REPORT_CHARS
        for key, value in fields:
            if left <= len(key):
                break
            value = value[: left - len(key)]
            kept.append((key, value))
            left -= len(key) + len(value)
        return replace(event, detail=detail, fields=tuple(kept))
    return replace(event, detail=detail) if detail is not event.detail else event


def cost_of(event: Event) -> int:
    if not isinstance(event, MachineReport):  # the only event with fields (this runs per event)
        return EVENT_OVERHEAD + len(event.detail)
    return EVENT_OVERHEAD + len(event.detail) + sum(len(k) + len(v) for k, v in getattr(event, "fields", ()))


@dataclass(slots=True)
class MachineProgress:
    mac: MacAddress
    name: str | None
    first_seen: float
    last_seen: float
    ip: str | None = None
    boots: int = 1
    stages: list[StageMark] = field(default_factory=list)  # the current boot, in the order reached
    history: deque[Event] = field(default_factory=deque)  # the last events: at most HISTORY, within the budget
    boot_assets: dict[str, EventKind] = field(default_factory=dict)  # asset path -> KERNEL/INITRD
    report: dict[str, str] | None = None  # the machine's last report
    arch: int | None = None  # option 93 of its firmware's last DHCP request
    group: str | None = None  # what its last boot config came from
    profile: str | None = None
    cost: int = 0  # estimated bytes kept for this machine: history, stage details, report
    power: str | None = None  # the power state its BMC last reported, and when (bootd power)
    power_seen: float | None = None

    def record(self, event: Event) -> bool:
        """Add `event`; True when it is news: a stage reached for the first time in this boot, or a stage
        whose outcome (ok or failed) changed."""
        if event.time > self.last_seen:
            self.last_seen = event.time
        if event.peer:
            self.ip = event.peer
        self.history.append(event)
        self.cost += cost_of(event)
        while len(self.history) > HISTORY or (self.cost > MACHINE_BUDGET and len(self.history) > 1):
            self.cost -= cost_of(self.history.popleft())
        if isinstance(event, PowerEvent):
            news = event.state is not None and event.state != self.power
            if event.state is not None:
                self.power, self.power_seen = event.state, event.time
            if not event.timeline:
                return news or not event.ok
            if event.new_boot and self.stages:  # a PXE boot was requested: what came before is the last boot
                self.cost -= sum(EVENT_OVERHEAD + len(mark.detail) for mark in self.stages)
                self.stages = []
                self.boots += 1
                self.boot_assets = {}
        # A DHCP or boot-script step after the machine got its boot config starts a new boot (the installed
        # system rebooting). Events carry the time of their request and may arrive late (a MAC found in the
        # neighbour table after the next request was answered), so "after" is by that time.
        if self.stages and (event.kind is EventKind.DHCP or event.kind is EventKind.BOOT_SCRIPT):
            configured_at = min((s.first for s in self.stages if _RANK[s.kind] >= _NEW_BOOT_AFTER), default=None)
            if configured_at is not None and event.time > configured_at:
                self.cost -= sum(EVENT_OVERHEAD + len(mark.detail) for mark in self.stages)
                self.stages = []
                self.boots += 1
                self.boot_assets = {}
        if isinstance(event, BootConfigServed):
            self.boot_assets = _asset_kinds(event)
            self.group, self.profile = event.group, event.profile
        if isinstance(event, DhcpServed) and event.arch is not None:
            self.arch = event.arch
        if isinstance(event, MachineReport):
            self.cost -= _report_cost(self.report)
            self.report = dict(event.fields)
            self.cost += _report_cost(self.report)
        for mark in self.stages:
            if mark.kind is event.kind:
                news = mark.ok != event.ok
                mark.first, mark.last = min(mark.first, event.time), max(mark.last, event.time)
                self.cost += len(event.detail) - len(mark.detail)
                mark.detail, mark.ok = event.detail, event.ok
                mark.count += 1
                return news
        mark = StageMark(event.kind, event.time, event.time, event.detail, event.ok)
        for position, other in enumerate(self.stages):  # before the first stage reached later (a late event)
            if other.first > event.time:
                self.stages.insert(position, mark)
                break
        else:
            self.stages.append(mark)
        self.cost += EVENT_OVERHEAD + len(event.detail)
        return True

    def as_json(self, *, known: bool, events: bool = False) -> dict[str, Any]:
        current = self.stages[-1] if self.stages else None
        last = self.history[-1] if self.history else None
        arch, firmware = describe_arch(self.arch)
        out: dict[str, Any] = {
            "mac": self.mac,
            "name": self.name,
            "known": known,
            "ip": self.ip,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "boots": self.boots,
            "stage": current.kind.value if current else None,
            "ok": all(s.ok for s in self.stages),
            "stages": [{**s.as_json(), "duration": d} for s, d in zip(self.stages, stage_durations(self.stages))],
            "report": self.report,
            # for the views (/ui/, `bootd status`):
            "arch": arch,
            "firmware": firmware,
            "group": self.group,
            "profile": self.profile,
            "boot_started": self.stages[0].first if self.stages else None,
            "last_event": None if last is None else {"stage": last.kind.value, "time": last.time,
                                                     "detail": last.detail, "ok": last.ok},
            "failure": failure_reason(self.stages),
            "claim": None if known else claim_hint(self.mac),
            "power": None if self.power is None else {"state": self.power, "time": self.power_seen},
        }
        if events:
            out["events"] = [
                {"stage": e.kind.value, "time": e.time, "detail": e.detail, "ok": e.ok, "peer": e.peer}
                for e in self.history
            ]
        return out


def stage_durations(stages: list[StageMark]) -> list[float]:
    """How long each stage took: until the next stage began, and the last one until its latest event."""
    ends = [s.first for s in stages[1:]] + ([stages[-1].last] if stages else [])
    return [max(0.0, end - mark.first) for mark, end in zip(stages, ends)]


def failure_reason(stages: list[StageMark]) -> str | None:
    """Why the current boot stopped, in words, from the latest stage whose last outcome was a failure."""
    failed = [s for s in stages if not s.ok]
    if not failed:
        return None
    mark = max(failed, key=lambda s: s.last)
    if mark.kind in (EventKind.KERNEL, EventKind.INITRD, EventKind.ASSET) and ": not found" in mark.detail:
        what = mark.kind.value if mark.kind is not EventKind.ASSET else "an"  # "kernel asset", "an asset"
        return f"{what} asset missing: {mark.detail.split(': not found')[0]}"
    return f"{mark.kind.value} failed: {mark.detail}"


def claim_hint(mac: MacAddress) -> str:
    """What to add under `machines:` in bootd.yaml to claim a machine bootd does not know."""
    return f'- {{name: machine-{mac.replace(":", "")[-6:]}, mac: "{mac}"}}'


def describe_arch(code: int | None) -> tuple[str | None, str | None]:
    """Option 93's code as (architecture, firmware kind), e.g. ("EFI_X64", "UEFI"), by dhcp/pxe's table."""
    if code is None:
        return None, None
    entry = ARCH_TABLE.get(code)
    if entry is None:
        return f"arch {code}", None
    kind = ("UEFI HTTP" if entry.http_boot else "UEFI") if entry.uefi else "BIOS"
    return entry.arch.name, kind


def _report_cost(report: dict[str, str] | None) -> int:
    return 0 if report is None else sum(len(k) + len(v) for k, v in report.items())


def _asset_kinds(event: BootConfigServed) -> dict[str, EventKind]:
    kinds = {}
    for url in event.initrds:
        if (path := asset_path(url)) is not None:
            kinds[path] = EventKind.INITRD
    if (path := asset_path(event.kernel)) is not None:
        kinds[path] = EventKind.KERNEL
    return kinds


def asset_path(url: str) -> str | None:
    """The path below /assets/ that a profile's kernel or initrd URL names, if any.

    Profiles write `/assets/x`, `${bootd}/assets/x`, `http://host:8080/assets/x`, or an initrd with iPXE
    options (`--name main /assets/x`).
    """
    word = url.split()[-1] if url.split() else ""
    marker = word.find("/assets/")
    if marker < 0:
        return None
    return word[marker + len("/assets/"):].split("?")[0] or None


HISTORY = 64  # events kept per machine, like pixiecore's savedEventsPerMachine


class ProgressTracker:
    NEGATIVE_TTL = 10.0  # seconds an IP without a known MAC is not looked up again

    def __init__(self, *, max_machines: int = 4096, budget: int = TOTAL_BUDGET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_machines = max_machines
        self.budget = budget
        self.cost = 0  # estimated bytes kept for every machine together
        self.evicted = 0
        self._clock = clock
        self._machines: OrderedDict[MacAddress, MachineProgress] = OrderedDict()
        self._known: dict[MacAddress, str] = {}
        self._ip_to_mac: OrderedDict[str, MacAddress] = OrderedDict()
        self._unresolved: dict[str, float] = {}

    # --- configuration ----------------------------------------------------------------------------

    def set_known(self, machines: Iterable[tuple[MacAddress, str]]) -> None:
        """The config's machines (MAC, name); called at start and on reload."""
        self._known = dict(machines)
        for mac, progress in self._machines.items():
            progress.name = self._known.get(mac)

    # --- IP -> MAC --------------------------------------------------------------------------------

    def learn(self, ip: str, mac: MacAddress) -> None:
        if _is_loopback(ip):
            return  # the host itself: every local client shares it, so it says nothing about a machine
        self._ip_to_mac[ip] = mac
        self._ip_to_mac.move_to_end(ip)
        self._unresolved.pop(ip, None)
        while len(self._ip_to_mac) > 2 * self.max_machines:
            self._ip_to_mac.popitem(last=False)

    def mac_for_ip(self, ip: str) -> MacAddress | None:
        return self._ip_to_mac.get(ip)

    def should_look_up(self, ip: str) -> bool:
        """False while a recent neighbour-table lookup for `ip` found nothing."""
        failed_at = self._unresolved.get(ip)
        return failed_at is None or self._clock() - failed_at > self.NEGATIVE_TTL

    def lookup_failed(self, ip: str) -> None:
        if len(self._unresolved) > 2 * self.max_machines:
            self._unresolved.clear()
        self._unresolved[ip] = self._clock()

    # --- events -----------------------------------------------------------------------------------

    def record(self, event: Event) -> bool:
        """The bus sink: add the event to its machine's progress. True when it is news (see
        MachineProgress.record); events without a MAC always are."""
        if event.mac is None:
            return True
        if event.peer:
            self.learn(event.peer, event.mac)
        if len(event.detail) > MAX_DETAIL_CHARS or event.__class__ is MachineReport:  # bounded's test, inline
            event = bounded(event)
        progress = self._machines.get(event.mac)
        if progress is None:
            progress = MachineProgress(event.mac, self._known.get(event.mac), event.time, event.time)
            self._machines[event.mac] = progress
        else:
            self._machines.move_to_end(event.mac)
        before = progress.cost
        news = progress.record(event)
        self.cost += progress.cost - before
        if len(self._machines) > self.max_machines or self.cost > self.budget:
            self._evict()
        return news

    def asset_kind(self, mac: MacAddress | None, path: str) -> EventKind:
        progress = self._machines.get(mac) if mac else None
        if progress is None:
            return EventKind.ASSET
        return progress.boot_assets.get(path, EventKind.ASSET)

    def _evict(self) -> None:
        # Runs for every new machine once full (a DISCOVER flood of new MACs): a plain loop, no generator.
        # Over either bound, the longest-unseen machine that is not in the config goes first.
        known = self._known
        while len(self._machines) > self.max_machines or (self.cost > self.budget and len(self._machines) > 1):
            for victim in self._machines:
                if victim not in known:
                    break
            else:
                victim = next(iter(self._machines))
            self.cost -= self._machines.pop(victim).cost
            self.evicted += 1

    # --- views ------------------------------------------------------------------------------------

    def get(self, mac: MacAddress) -> MachineProgress | None:
        return self._machines.get(mac)

    def is_known(self, mac: MacAddress) -> bool:
        return mac in self._known

    def machines(self) -> list[MachineProgress]:
        return sorted(self._machines.values(), key=lambda m: m.first_seen)

    def __len__(self) -> int:
        return len(self._machines)


class PeerPublisher:
    """Publishes a step of the machine behind a client IP. The MAC comes from the request when it carries
    one, else from the tracker's IP->MAC map (learned from DHCP and earlier requests), else from `lookup`
    (the kernel's neighbour table), which runs off the request path: the event is published when the
    lookup returns, stamped with the time of the request."""

    def __init__(self, bus: EventBus, tracker: ProgressTracker,
                 lookup: Callable[[str], Awaitable[MacAddress | None]] | None = None) -> None:
        self.bus = bus
        self.tracker = tracker
        self.lookup = lookup
        self.tasks: set[asyncio.Task[None]] = set()

    def publish(self, peer: str | None, mac: MacAddress | None, event_type: type[Event] = Event,
                **fields: Any) -> None:
        fields.setdefault("time", time.time())
        mac = mac or (self.tracker.mac_for_ip(peer) if peer else None)
        if (mac is not None or peer is None or self.lookup is None or _is_loopback(peer)
                or not self.tracker.should_look_up(peer)):
            self.bus.publish(event_type(mac=mac, peer=peer, **fields))
            return
        task = asyncio.get_running_loop().create_task(self._after_lookup(peer, event_type, fields))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _after_lookup(self, peer: str, event_type: type[Event], fields: dict[str, Any]) -> None:
        assert self.lookup is not None
        mac = await self.lookup(peer)
        if mac is None:
            self.tracker.lookup_failed(peer)
        self.bus.publish(event_type(mac=mac, peer=peer, **fields))

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def log_event(event: Event, news: bool = True) -> None:
    """For operators: INFO when a machine reaches a step, WARNING when a step fails; repeats of the same
    step with the same outcome (a DHCP retry, a second download) at DEBUG."""
    if not news:
        level = logging.DEBUG
    else:
        level = logging.INFO if event.ok else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    who = event.mac or event.peer or ("bootd" if event.kind is EventKind.ASSETS else "unknown machine")
    detail = event.detail
    if not detail.isprintable():  # a client's bytes (labels, a report, a TFTP error) never start a line of their own
        detail = "".join(c if c.isprintable() else repr(c)[1:-1] for c in detail)
    stage = event.kind.value
    handler = step_handler(logger, level)
    if handler is not None:  # the same line, without a LogRecord (appliance/logs.py)
        handler.emit_step((time.time(), logging.getLevelName(level), logger.name, f"{who} {stage}: {detail}",
                           event.mac, event.peer, stage, event.ok), level)
        return
    logger.log(level, "%s %s: %s", who, stage, detail,
               extra={"mac": event.mac, "peer": event.peer, "stage": stage, "ok": event.ok})


def track_and_log(tracker: ProgressTracker) -> Callable[[Event], None]:
    """The bus sink that records progress and logs what is news."""
    def sink(event: Event) -> None:
        log_event(event, tracker.record(event))
    return sink
