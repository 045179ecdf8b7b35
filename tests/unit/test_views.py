"""What the views (/ui/, /api/v1/events, `bootd status`) are made of: event ids and the kept recent events,
a live view's bounded backlog, who may open a stream, and the words and table a person reads."""

from __future__ import annotations

import asyncio

import pytest

from appliance.events import (
    RECENT_EVENTS, BootConfigServed, DhcpServed, Event, EventBus, EventKind, ProgressTracker, StageMark,
    claim_hint, client_arch, describe_arch, failure_reason, stage_durations,
)
from appliance.http.stream import OpenStream, Refused, StreamSlots
from appliance.mac import MacAddress
from appliance.status import EXIT_MACHINE_FAILED, clean, exit_code, render

A = MacAddress("52:54:00:00:00:0a")


def ev(kind: EventKind = EventKind.DHCP, t: float = 0.0, detail: str = "x", ok: bool = True) -> Event:
    return Event(kind=kind, mac=A, peer="10.0.0.5", detail=detail, ok=ok, time=t)


# --- ids and resuming -------------------------------------------------------------------------------------

def test_events_get_increasing_ids_and_a_view_resumes_after_the_last_it_saw():
    bus = EventBus()
    for i in range(5):
        bus.publish(ev(t=float(i)))  # no loop: delivered at once
    assert bus.last_id == 5
    assert [(i, e.time) for i, e in bus.since(2)] == [(3, 2.0), (4, 3.0), (5, 4.0)]
    assert bus.since(5) == []


@pytest.mark.parametrize("since, why", [
    pytest.param(6, "an id this run never gave: the view saw an earlier run of bootd", id="future"),
    pytest.param(0, "the first events are no longer kept", id="forgotten"),
])
def test_a_view_that_missed_events_is_told_to_resync(since, why):
    bus = EventBus()
    for _ in range(RECENT_EVENTS + 5) if since == 0 else range(5):
        bus.publish(ev())
    assert bus.since(since) is None, why


def test_kept_events_are_cut_to_the_trackers_budget():
    bus = EventBus()
    bus.publish(ev(detail="x" * 100_000))
    [(_, kept)] = bus.since(0)
    assert len(kept.detail) <= 1024


async def test_a_view_that_falls_behind_is_marked_once_and_holds_at_most_its_backlog():
    bus = EventBus()
    stream = bus.stream(maxsize=3)
    for i in range(10):
        bus.publish(ev(t=float(i)))
    await asyncio.sleep(0)
    assert stream.queue.qsize() == 3 and stream.behind and stream.dropped == 7
    stream.catch_up()
    assert stream.queue.empty() and not stream.behind
    bus.publish(ev(t=99.0))
    await asyncio.sleep(0)
    assert stream.queue.get_nowait()[0] == 11
    bus.unsubscribe(stream)
    bus.publish(ev())
    await asyncio.sleep(0)
    assert stream.queue.empty()


# --- who may open a stream --------------------------------------------------------------------------------

class FakeTransport:
    def is_closing(self) -> bool:
        return False


class FakeRequest:
    transport = FakeTransport()


def open_from(slots: StreamSlots, peer: str) -> OpenStream | Refused:
    room = slots.admit(peer)
    if isinstance(room, Refused):
        return room
    if room is not None:
        room.close("made room")
    entry = OpenStream(peer, FakeRequest(), EventBus().stream(4))  # type: ignore[arg-type]
    slots.open[entry] = None
    return entry


def test_one_address_gets_429_past_its_share():
    slots = StreamSlots(max_streams=10, max_per_peer=2)
    assert all(isinstance(open_from(slots, "10.0.0.1"), OpenStream) for _ in range(2))
    refused = open_from(slots, "10.0.0.1")
    assert isinstance(refused, Refused) and refused.status == 429 and "10.0.0.1" in refused.reason
    assert isinstance(open_from(slots, "10.0.0.2"), OpenStream)


def test_at_the_cap_a_new_address_closes_the_oldest_stream_of_the_busiest_one():
    slots = StreamSlots(max_streams=4, max_per_peer=3)
    first = open_from(slots, "10.0.0.1")
    open_from(slots, "10.0.0.1")
    open_from(slots, "10.0.0.1")
    open_from(slots, "10.0.0.2")
    newcomer = open_from(slots, "10.0.0.3")
    assert isinstance(newcomer, OpenStream) and len(slots.open) == 4 and first not in slots.open
    assert first.reason == "made room" and slots.closed_for_room == 1
    # the newcomer holds as many as the busiest address: no one is closed for it
    balanced = StreamSlots(max_streams=2, max_per_peer=3)
    open_from(balanced, "10.0.0.1")
    open_from(balanced, "10.0.0.2")
    refused = open_from(balanced, "10.0.0.1")
    assert isinstance(refused, Refused) and refused.status == 503


# --- the words a person reads -----------------------------------------------------------------------------

def mark(kind: EventKind, detail: str, ok: bool, first: float = 0.0, last: float | None = None) -> StageMark:
    return StageMark(kind, first, first if last is None else last, detail, ok)


@pytest.mark.parametrize("stages, reason", [
    pytest.param([mark(EventKind.DHCP, "offer", True)], None, id="going-well"),
    pytest.param([mark(EventKind.KERNEL, "/assets/vmlinuz: not found under /var/lib/bootd/assets", False)],
                 "kernel asset missing: /assets/vmlinuz", id="kernel-missing"),
    pytest.param([mark(EventKind.INITRD, "/assets/i.img: not found under /srv", False)],
                 "initrd asset missing: /assets/i.img", id="initrd-missing"),
    pytest.param([mark(EventKind.ASSET, "/assets/x: not found under /srv", False)],
                 "an asset missing: /assets/x", id="other-asset"),
    pytest.param([mark(EventKind.BOOT_CONFIG, "/ipxe: no group matches labels {}", False)],
                 "boot-config failed: /ipxe: no group matches labels {}", id="no-group"),
    pytest.param([mark(EventKind.DHCP, "not answered: unknown-machine", False, 0.0),
                  mark(EventKind.IGNITION, "spec 2.2.0", False, 5.0)],
                 "ignition failed: spec 2.2.0", id="the-latest-failure"),
])
def test_failure_reason_in_words(stages, reason):
    assert failure_reason(stages) == reason


def test_stage_durations_run_to_the_next_stage_and_the_last_to_its_latest_event():
    stages = [mark(EventKind.DHCP, "", True, 0.0, 0.5), mark(EventKind.TFTP, "", True, 2.0, 9.0),
              mark(EventKind.KERNEL, "", True, 10.0, 14.0)]
    assert stage_durations(stages) == [2.0, 8.0, 4.0]
    assert stage_durations([]) == []


@pytest.mark.parametrize("option, code, described", [
    pytest.param(b"\x00\x00", 0, ("BIOS", "BIOS"), id="bios"),
    pytest.param(b"\x00\x07", 7, ("EFI_X64", "UEFI"), id="uefi-x64"),
    pytest.param(b"\x00\x10\x00\x07", 16, ("HTTP_X64", "UEFI HTTP"), id="uefi-http-first-of-a-list"),
    pytest.param(b"\x00\x63", 99, ("arch 99", None), id="unknown-code"),
    pytest.param(b"\x07", None, (None, None), id="too-short"),
    pytest.param(None, None, (None, None), id="absent"),
])
def test_architecture_and_firmware_kind_from_option_93(option, code, described):
    assert client_arch(option) == code
    assert describe_arch(code) == described


def test_the_machine_row_carries_what_the_views_show():
    tracker = ProgressTracker()
    tracker.record(DhcpServed(kind=EventKind.DHCP, mac=A, peer=None, detail="offer", time=1.0, arch=7))
    tracker.record(BootConfigServed(kind=EventKind.BOOT_CONFIG, mac=A, peer="10.0.0.5", detail="/ipxe", time=2.0,
                                    kernel="/assets/vmlinuz", group="workers", profile="install"))
    tracker.record(Event(kind=EventKind.KERNEL, mac=A, peer="10.0.0.5", ok=False, time=3.5,
                         detail="/assets/vmlinuz: not found under /srv/assets"))
    row = tracker.get(A).as_json(known=False)
    assert (row["arch"], row["firmware"], row["group"], row["profile"]) == ("EFI_X64", "UEFI", "workers", "install")
    assert row["boot_started"] == 1.0 and row["stage"] == "kernel" and row["ok"] is False
    assert row["failure"] == "kernel asset missing: /assets/vmlinuz"
    assert row["last_event"] == {"stage": "kernel", "time": 3.5, "ok": False,
                                 "detail": "/assets/vmlinuz: not found under /srv/assets"}
    assert [s["duration"] for s in row["stages"]] == [1.0, 1.5, 0.0]
    assert row["claim"] == claim_hint(A) == '- {name: machine-00000a, mac: "52:54:00:00:00:0a"}'
    assert tracker.get(A).as_json(known=True)["claim"] is None


# --- bootd status's table ---------------------------------------------------------------------------------

def listing(*machines: dict) -> dict:
    return {"machines": list(machines), "now": 100.0, "last_event_id": 0}


def machine(name: str | None, mac: str, **kw) -> dict:
    return {"name": name, "mac": mac, "ip": None, "stage": None, "failure": None, "claim": None, "arch": None,
            "firmware": None, "group": None, "profile": None, "boot_started": None, "last_seen": None,
            "last_event": None, **kw}


def test_status_table_failures_claims_and_exit_code():
    ok = machine("node1", "52:54:00:00:00:01", stage="kernel", boot_started=40.0, arch="BIOS", firmware="BIOS",
                 last_event={"stage": "kernel", "detail": "/assets/k (5 bytes, status 200)", "ok": True, "time": 41.0})
    bad = machine("node2", "52:54:00:00:00:02", stage="kernel", boot_started=10.0, last_seen=12.5,
                  failure="kernel asset missing: /assets/k")
    stranger = machine(None, "52:54:00:00:00:03", stage="dhcp", claim='- {name: machine-000003, mac: "x"}')
    text = render(listing(ok, bad, stranger), now=100.0)
    lines = text.splitlines()
    assert lines[1].startswith("node1") and "BIOS BIOS" in lines[1] and "1m00s" in lines[1]
    assert "FAILED kernel" in lines[2] and "2.5s" in lines[2]  # a failed boot's clock stops at its last event
    assert "node2: kernel asset missing: /assets/k" in lines
    assert '  - {name: machine-000003, mac: "x"}' in lines
    assert "\x1b" not in text
    assert "\x1b[31m" in render(listing(bad), now=100.0, color=True)
    assert exit_code(listing(ok, stranger)) == 0 and exit_code(listing(ok, bad)) == EXIT_MACHINE_FAILED


def test_client_text_cannot_drive_the_terminal():
    assert clean("a\x1b]0;title\x07b\nc") == "a?]0;title?b?c"
