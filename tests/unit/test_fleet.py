"""The fleet view's pure parts (appliance/fleet): records in and out of etcd, what is written when, which
events of another replica are new, the merged row with each step's replica, and `bootd status`'s lines."""

from __future__ import annotations

import json
import socket

import pytest

from appliance.config import ConfigInvalid, load_config
from appliance.events import (
    BootConfigServed,
    DhcpServed,
    Event,
    EventKind,
    MachineReport,
    PowerEvent,
    ProgressTracker,
)
from appliance.fleet.records import (
    PUBLISHED_BYTES,
    PUBLISHED_EVENTS,
    RecordInvalid,
    Remote,
    decode_record,
    encode_event,
    encode_record,
    machine_key,
    parse_key,
    parse_record,
)
from appliance.fleet.state import Cursors, Freshness, LocalLog, annotate, replica_name
from appliance.mac import MacAddress
from appliance.status import render

MAC = MacAddress("52:54:00:f1:00:01")
OTHER = MacAddress("52:54:00:f1:00:02")
PREFIX = "/bootd"


def record_of(replica: str, run: str, events: list[tuple[int, Event]], mac: str = MAC) -> tuple[str, bytes]:
    return machine_key(PREFIX, mac, replica), encode_record(replica, run, [encode_event(s, e) for s, e in events])


@pytest.mark.parametrize("event", [
    Event(kind=EventKind.BOOT_SCRIPT, mac=MAC, peer="10.0.0.5", detail="/boot.ipxe", time=100.0),
    Event(kind=EventKind.KERNEL, mac=MAC, peer=None, detail="/assets/vmlinuz: not found", ok=False, time=101.5),
    MachineReport(kind=EventKind.REPORT, mac=MAC, peer="10.0.0.5", detail="reported: a=b",
                  fields=(("a", "b"), ("sha", "\u00e9\n")), time=102.0),
    BootConfigServed(kind=EventKind.BOOT_CONFIG, mac=MAC, peer=None, detail="/ipxe", kernel="/assets/k",
                     initrds=("--name main /assets/i",), group="g", profile=None, time=103.0),
    DhcpServed(kind=EventKind.DHCP, mac=MAC, peer=None, detail="offer", arch=7, time=104.0),
    PowerEvent(kind=EventKind.POWER, mac=MAC, peer=None, detail="pxe", state="on", timeline=True, new_boot=True,
               time=105.0),
])
def test_every_event_type_comes_back_as_the_same_event_marked_with_its_replica(event):
    key, value = record_of("a", "run1", [(7, event)])
    record = decode_record(PREFIX, key, value)
    assert (record.mac, record.replica, record.run) == (MAC, "a", "run1")
    [back] = record.events
    assert back.seq == 7 and isinstance(back.event, type(event)) and isinstance(back.event, Remote)
    assert back.event.replica == "a"
    for name in event.__dataclass_fields__:
        assert getattr(back.event, name) == getattr(event, name), name


@pytest.mark.parametrize("key, value, reason", [
    ("/other/machines/52:54:00:f1:00:01/a", None, "is not under"),
    ("/bootd/machines/52-54-00-f1-00-01/a", None, "canonical form"),
    ("/bootd/machines/52:54:00:f1:00:01/", None, "is not a replica name"),
    ("/bootd/machines/52:54:00:f1:00:01/a", b"{not json", "not JSON"),
    ("/bootd/machines/52:54:00:f1:00:01/a", b'{"v": 2, "replica": "a", "run": "r", "events": []}', "version 1"),
    ("/bootd/machines/52:54:00:f1:00:01/a", b'{"v": 1, "replica": "b", "run": "r", "events": []}', "does not match"),
    ("/bootd/machines/52:54:00:f1:00:01/a", b'{"v": 1, "replica": "a", "run": "r", "events": {}}', "not a list"),
    ("/bootd/machines/52:54:00:f1:00:01/a", (b'{"v": 1, "replica": "a", "run": "r", "events": [{"seq": 1, '
     b'"type": "event", "stage": "dhcp", "mac": "52:54:00:f1:00:02", "peer": null, "detail": "", "ok": true, '
     b'"time": 1}]}'), "its mac is not its key's"),
    ("/bootd/machines/52:54:00:f1:00:01/a", (b'{"v": 1, "replica": "a", "run": "r", "events": [{"seq": 1, '
     b'"type": "event", "stage": "teleport", "mac": "52:54:00:f1:00:01", "peer": null, "detail": "", "ok": true, '
     b'"time": 1}]}'), "does not fit"),
    ("/bootd/machines/52:54:00:f1:00:01/a", (b'{"v": 1, "replica": "a", "run": "r", "events": [{"seq": 1, '
     b'"type": "event", "stage": "dhcp", "mac": "52:54:00:f1:00:01", "peer": null, "detail": "", "ok": true, '
     b'"time": NaN}]}'), "time is not a number"),
    ("/bootd/machines/52:54:00:f1:00:01/a", (b'{"v": 1, "replica": "a", "run": "r", "events": [{"seq": 1, '
     b'"type": "report", "stage": "report", "mac": "52:54:00:f1:00:01", "peer": null, "detail": "", "ok": true, '
     b'"time": 1, "fields": [["a"]]}]}'), "fields"),
])
def test_a_record_bootd_did_not_write_is_refused_with_a_reason(key, value, reason):
    if value is None:
        with pytest.raises(RecordInvalid, match=reason):
            parse_key(PREFIX, key)
        return
    with pytest.raises(RecordInvalid, match=reason):
        decode_record(PREFIX, key, value)


def step(kind: EventKind, when: float, mac: str = MAC, detail: str = "") -> Event:
    return Event(kind=kind, mac=MacAddress(mac), peer=None, detail=detail or kind.value, time=when)


def test_a_burst_of_steps_is_one_write_per_machine_and_a_failed_write_is_kept():
    log = LocalLog("a", "run1")
    assert not log.add(Event(kind=EventKind.DATA, mac=None, peer=None, detail="api write"))
    remote = decode_record(PREFIX, *record_of("b", "r", [(1, step(EventKind.DHCP, 1.0))])).events[0].event
    assert not log.add(remote)  # another replica's: never published again
    for i, kind in enumerate((EventKind.BOOT_SCRIPT, EventKind.BOOT_CONFIG, EventKind.KERNEL)):
        assert log.add(step(kind, 10.0 + i))
    log.add(step(EventKind.BOOT_SCRIPT, 11.0, mac=OTHER))
    assert log.pending == 2
    batch = log.take(max_ops=64, max_bytes=1 << 20)
    assert list(batch.puts) == [MAC, OTHER] and batch.deletes == () and log.pending == 0
    data = json.loads(batch.puts[MAC])
    assert [(e["seq"], e["stage"]) for e in data["events"]] == [(1, "boot-script"), (2, "boot-config"), (3, "kernel")]
    assert (data["replica"], data["run"]) == ("a", "run1")
    log.give_back(batch)  # etcd did not take it
    assert log.pending == 2
    first = log.take(max_ops=1, max_bytes=1 << 20)
    assert list(first.puts) == [MAC] and log.pending == 1


def test_a_record_holds_the_latest_events_within_its_bounds_and_forgotten_machines_are_deleted():
    log = LocalLog("a", "r", max_machines=2)
    for i in range(PUBLISHED_EVENTS + 10):
        log.add(step(EventKind.ASSET, float(i), detail="x" * 100))
    events = json.loads(log.record(MAC))["events"]
    assert len(events) == PUBLISHED_EVENTS and events[-1]["seq"] == PUBLISHED_EVENTS + 10
    log.add(step(EventKind.ASSET, 1.0, detail="y" * 1000))  # big details: the byte bound cuts the oldest
    for _ in range(40):
        log.add(step(EventKind.ASSET, 1.0, detail="y" * 1000))
    assert len(log.record(MAC)) <= PUBLISHED_BYTES + 2048
    log.take(max_ops=64, max_bytes=1 << 20)
    log.add(step(EventKind.DHCP, 1.0, mac=OTHER))
    log.add(step(EventKind.DHCP, 1.0, mac="52:54:00:f1:00:03"))  # a third machine: the oldest is forgotten
    batch = log.take(max_ops=64, max_bytes=1 << 20)
    assert batch.deletes == (MAC,) and set(batch.puts) == {OTHER, MacAddress("52:54:00:f1:00:03")}
    log.mark_all()  # the lease was lost: every record again
    assert log.pending == 2


def test_only_the_events_not_fed_yet_are_fed_and_a_restarted_replica_is_read_from_after_the_last():
    cursors = Cursors()

    def fed(replica: str, run: str, events: list[tuple[int, Event]]) -> list[EventKind]:
        found, invalid = cursors.fresh(parse_record(PREFIX, *record_of(replica, run, events)))
        assert invalid == 0
        return [e.kind for e in found]

    one = [(1, step(EventKind.BOOT_SCRIPT, 10.0)), (2, step(EventKind.BOOT_CONFIG, 11.0))]
    assert fed("b", "run1", one) == [EventKind.BOOT_SCRIPT, EventKind.BOOT_CONFIG]
    assert fed("b", "run1", one) == []  # the same record again
    two = one + [(3, step(EventKind.KERNEL, 12.0))]
    assert fed("b", "run1", two) == [EventKind.KERNEL]
    # b restarted: its numbers begin again, its record has its new events only
    assert fed("b", "run2", [(1, step(EventKind.INITRD, 13.0))]) == [EventKind.INITRD]
    assert fed("c", "x", [(1, step(EventKind.DHCP, 1.0))]) == [EventKind.DHCP]  # another replica
    # an event that does not fit is dropped and counted, the others fed
    key, value = record_of("b", "run2", [(1, step(EventKind.INITRD, 13.0)), (2, step(EventKind.REPORT, 14.0))])
    value = value.replace(b'"stage":"report"', b'"stage":"teleport"')
    assert cursors.fresh(parse_record(PREFIX, key, value)) == ([], 1)


def test_one_row_from_two_replicas_in_time_order_names_the_replica_of_each_step():
    tracker = ProgressTracker()
    tracker.record(step(EventKind.BOOT_SCRIPT, 10.0, detail="/boot.ipxe"))  # here, at "a"
    remote = decode_record(PREFIX, *record_of("b", "r", [(1, step(EventKind.BOOT_CONFIG, 11.0, detail="/ipxe")),
                                                          (2, step(EventKind.REPORT, 13.0))]))
    for s in remote.events:
        tracker.record(s.event)
    tracker.record(step(EventKind.KERNEL, 12.0, detail="/assets/k"))  # here again, between b's two steps
    [progress] = tracker.machines()
    row = annotate(progress.as_json(known=False, events=True), progress, "a")
    assert [(s["stage"], s["replica"]) for s in row["stages"]] == [
        ("boot-script", "a"), ("boot-config", "b"), ("kernel", "a"), ("report", "b")]
    assert row["replicas"] == ["a", "b"]
    assert [e["replica"] for e in row["events"]] == ["a", "b", "b", "a"]


def test_freshness_is_stale_until_it_watches_and_writes_and_says_since_when():
    f = Freshness()
    assert f.stale and f.reason == "not connected to etcd yet"
    assert f.watch_ok() and not f.stale
    assert f.lost("etcd unreachable", now=50.0, writes=True) and f.stale and f.since == 50.0
    assert not f.lost("still", now=60.0) and f.since == 50.0  # stale since the first loss
    assert not f.watch_ok() and f.stale  # writes still fail
    assert f.write_ok() and not f.stale and f.reason is None


def test_the_replica_name_is_the_configured_one_or_the_host_name(tmp_path):
    (tmp_path / "bootd.yaml").write_text("store:\n  backend: etcd\n  endpoints: [127.0.0.1:2379]\n  replica: rack-7\n")
    assert replica_name(load_config(tmp_path / "bootd.yaml").store) == "rack-7"
    assert replica_name(load_config_text(tmp_path, "store:\n  backend: etcd\n  endpoints: [127.0.0.1:2379]\n"
                                         ).store) == socket.gethostname().split(".")[0]
    for bad in ("a/b", '""', "x" * 64):
        (tmp_path / "bootd.yaml").write_text(f"store:\n  backend: etcd\n  endpoints: [127.0.0.1:2379]\n"
                                              f"  replica: {bad}\n")
        with pytest.raises(ConfigInvalid, match=r"bootd.yaml:4: store.replica"):
            load_config(tmp_path / "bootd.yaml")


def load_config_text(root, text: str):
    (root / "bootd.yaml").write_text(text)
    return load_config(root / "bootd.yaml")


def test_status_names_the_replica_of_each_current_stage_and_says_when_the_view_is_stale():
    machine = {"mac": MAC, "name": "n1", "stage": "report", "stages": [{"stage": "boot-config", "replica": "a"},
                                                                       {"stage": "report", "replica": "b"}]}
    listing = {"machines": [machine], "fleet": {"replica": "b", "replicas": ["a", "b"], "stale": False}}
    text = render(listing, now=0.0)
    assert "report@b" in text and "fleet: replicas a, b (this is b)" in text
    listing["fleet"] = {"replica": "b", "replicas": ["a", "b"], "stale": True, "stale_since": 0.0,
                        "stale_reason": "etcd unreachable: http://127.0.0.1:1: cannot connect"}
    assert "fleet view STALE since" in render(listing, now=0.0)
    assert "showing what b has" in render(listing, now=0.0)
    del listing["fleet"]
    assert "@" not in render(listing, now=0.0) and "fleet" not in render(listing, now=0.0)  # one box: as before
