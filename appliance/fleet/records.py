"""What a replica publishes about a machine in etcd, and the events other replicas' records give back.

One key per machine and replica, `<prefix>/machines/<mac>/<replica>`, whose value is one JSON object:

    {"v": 1, "replica": "a", "run": "<this run of the daemon>", "events": [<event>, ...]}

`events` are the replica's own latest events of that machine (at most PUBLISHED_EVENTS, within
PUBLISHED_BYTES), oldest first, each with the replica's sequence number `seq` (1, 2, ... per run): a reader
takes the ones after the last it fed, so rewriting the whole record on every change costs the readers
nothing twice. An event is one flat object: the Event's fields plus its type's own (`arch`, `kernel`,
`fields`, ...), tagged by `type`.

Decoding trusts nothing (a record may come from another version of bootd, or from someone with etcdctl):
a record or event that does not fit is dropped with a reason (`RecordInvalid`), never raised further.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from appliance.events import (
    BootConfigServed,
    DhcpServed,
    Event,
    EventKind,
    MachineReport,
    PowerEvent,
)
from appliance.mac import MacAddress, try_parse_mac

VERSION = 1
PUBLISHED_EVENTS = 64  # the tracker's HISTORY: what a reader starting late gets of each machine
PUBLISHED_BYTES = 32 * 1024  # a record's events together (etcd's default request limit is 1.5 MiB)
MAX_REPLICA_CHARS = 63  # a replica's name is a DNS label's length at most


class Remote:
    """Marks an event another replica saw (its `replica`): it is shown, never published again, logged or
    counted in this replica's metrics."""

    __slots__ = ()
    replica: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteEvent(Event, Remote):
    replica: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteReport(MachineReport, Remote):
    replica: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteBootConfig(BootConfigServed, Remote):
    replica: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteDhcp(DhcpServed, Remote):
    replica: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemotePower(PowerEvent, Remote):
    replica: str


def replica_of(event: Event, here: str) -> str:
    """Which replica saw `event`: its own name for another's, `here` for this replica's."""
    return event.replica if isinstance(event, Remote) else here


# --- encoding (this replica's events) ----------------------------------------------------------------------

def encode_event(seq: int, event: Event) -> bytes:
    """One event of a record, as JSON bytes (each is encoded once, when first published)."""
    out: dict[str, Any] = {"seq": seq, "type": "event", "stage": event.kind.value, "mac": event.mac,
                           "peer": event.peer, "detail": event.detail, "ok": event.ok, "time": event.time}
    if isinstance(event, MachineReport):
        out["type"], out["fields"] = "report", [list(pair) for pair in event.fields]
    elif isinstance(event, BootConfigServed):
        out.update(type="boot-config", kernel=event.kernel, initrds=list(event.initrds), group=event.group,
                   profile=event.profile)
    elif isinstance(event, DhcpServed):
        out.update(type="dhcp", arch=event.arch)
    elif isinstance(event, PowerEvent):
        out.update(type="power", state=event.state, timeline=event.timeline, new_boot=event.new_boot)
    return _COMPACT.encode(out).encode()


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options makes one per call


def record_head(replica: str, run: str) -> bytes:
    """A record's bytes before its events (the same for every record of a run)."""
    return _COMPACT.encode({"v": VERSION, "replica": replica, "run": run}).encode()[:-1] + b',"events":['


def encode_record(replica: str, run: str, events: list[bytes]) -> bytes:
    return record_head(replica, run) + b",".join(events) + b"]}"


def machine_key(prefix: str, mac: str, replica: str) -> str:
    return f"{machines_prefix(prefix)}{mac}/{replica}"


def machines_prefix(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/machines/"


# --- decoding (other replicas' records) --------------------------------------------------------------------

class RecordInvalid(ValueError):
    """A record (or its key) that is not one bootd wrote: dropped, with this reason logged."""


@dataclass(frozen=True, slots=True)
class Sequenced:
    seq: int
    event: Event  # a Remote* event


@dataclass(frozen=True, slots=True)
class MachineRecord:
    mac: MacAddress
    replica: str
    run: str
    events: tuple[Sequenced, ...]  # in seq order


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A record whose events are not decoded yet: a reader decodes only the ones it has not fed (a record is
    rewritten whole at each change, so most of its events were fed before)."""

    mac: MacAddress
    replica: str
    run: str
    items: tuple[tuple[int, float, Any], ...]  # (seq, time, the event's JSON object), in seq order

    def decode(self, item: Any) -> Event:
        """One item's event (RecordInvalid if it does not fit)."""
        try:
            return decode_event(item, self.mac, self.replica).event
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordInvalid(f"{self.mac}/{self.replica}: an event does not fit: {exc}") from None


def parse_key(prefix: str, key: str) -> tuple[MacAddress, str]:
    """(MAC, replica) of a record's key."""
    head = machines_prefix(prefix)
    if not key.startswith(head):
        raise RecordInvalid(f"{key!r} is not under {head}")
    mac_text, _, replica = key[len(head):].partition("/")
    mac = try_parse_mac(mac_text)
    if mac is None or mac != mac_text:
        raise RecordInvalid(f"{key!r}: {mac_text!r} is not a MAC address in canonical form")
    check_replica(replica)
    return mac, replica


def check_replica(name: str) -> str:
    if not (0 < len(name) <= MAX_REPLICA_CHARS and name.isascii() and name.isprintable() and "/" not in name
            and name.strip() == name):
        raise RecordInvalid(f"{name[:80]!r} is not a replica name (1-{MAX_REPLICA_CHARS} printable ASCII "
                            "characters, no '/')")
    return name


def parse_record(prefix: str, key: str, value: bytes) -> RawRecord:
    """The record's key, run and each event's seq and time checked; the events themselves left as JSON."""
    mac, replica = parse_key(prefix, key)
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RecordInvalid(f"{key}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise RecordInvalid(f"{key}: not a version {VERSION} record")
    if data.get("replica") != replica or not isinstance(run := data.get("run"), str):
        raise RecordInvalid(f"{key}: its replica or run does not match its key")
    events = data.get("events")
    if not isinstance(events, list):
        raise RecordInvalid(f"{key}: events is not a list")
    items = []
    for item in events:
        seq, when = (item.get("seq"), item.get("time")) if isinstance(item, dict) else (None, None)
        if (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or not isinstance(when, (int, float))
                or isinstance(when, bool) or not math.isfinite(when)):
            raise RecordInvalid(f"{key}: an event without a positive seq and a time")
        items.append((seq, float(when), item))
    items.sort(key=lambda entry: entry[0])
    return RawRecord(mac, replica, run, tuple(items))


def decode_record(prefix: str, key: str, value: bytes) -> MachineRecord:
    """The record with every event decoded."""
    mac, replica = parse_key(prefix, key)
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RecordInvalid(f"{key}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise RecordInvalid(f"{key}: not a version {VERSION} record")
    if data.get("replica") != replica or not isinstance(run := data.get("run"), str):
        raise RecordInvalid(f"{key}: its replica or run does not match its key")
    events = data.get("events")
    if not isinstance(events, list):
        raise RecordInvalid(f"{key}: events is not a list")
    decoded = []
    for item in events:
        try:
            decoded.append(decode_event(item, mac, replica))
        except (RecordInvalid, KeyError, TypeError, ValueError) as exc:
            raise RecordInvalid(f"{key}: an event does not fit: {exc}") from None
    decoded.sort(key=lambda s: s.seq)
    return MachineRecord(mac, replica, run, tuple(decoded))


def _text(item: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = item.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RecordInvalid(f"{key} is not text")
    return value


def decode_event(item: Any, mac: MacAddress, replica: str) -> Sequenced:
    if not isinstance(item, dict):
        raise RecordInvalid("not an object")
    seq, when, ok = item.get("seq"), item.get("time"), item.get("ok")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise RecordInvalid("seq is not a positive whole number")
    if not isinstance(when, (int, float)) or isinstance(when, bool) or not math.isfinite(when):
        raise RecordInvalid("time is not a number")
    if not isinstance(ok, bool):
        raise RecordInvalid("ok is not true or false")
    if item.get("mac") != mac:
        raise RecordInvalid("its mac is not its key's")
    common: dict[str, Any] = {"kind": EventKind(_text(item, "stage")), "mac": mac,
                              "peer": _text(item, "peer", optional=True), "detail": _text(item, "detail"),
                              "ok": ok, "time": float(when), "replica": replica}
    kind = item.get("type")
    if kind == "event":
        event: Event = RemoteEvent(**common)
    elif kind == "report":
        fields = item.get("fields")
        if not isinstance(fields, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str)
                                                                                               for x in p)
                                                   for p in fields):
            raise RecordInvalid("fields is not a list of [key, value] texts")
        event = RemoteReport(**common, fields=tuple((k, v) for k, v in fields))
    elif kind == "boot-config":
        initrds = item.get("initrds")
        if not isinstance(initrds, list) or not all(isinstance(x, str) for x in initrds):
            raise RecordInvalid("initrds is not a list of texts")
        event = RemoteBootConfig(**common, kernel=_text(item, "kernel"), initrds=tuple(initrds),
                                 group=_text(item, "group", optional=True),
                                 profile=_text(item, "profile", optional=True))
    elif kind == "dhcp":
        arch = item.get("arch")
        if arch is not None and (not isinstance(arch, int) or isinstance(arch, bool)):
            raise RecordInvalid("arch is not a whole number")
        event = RemoteDhcp(**common, arch=arch)
    elif kind == "power":
        timeline, new_boot = item.get("timeline"), item.get("new_boot")
        if not isinstance(timeline, bool) or not isinstance(new_boot, bool):
            raise RecordInvalid("timeline or new_boot is not true or false")
        event = RemotePower(**common, state=_text(item, "state", optional=True), timeline=timeline,
                            new_boot=new_boot)
    else:
        raise RecordInvalid(f"unknown type {str(kind)[:40]!r}")
    return Sequenced(seq, event)
