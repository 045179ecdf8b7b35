"""The event bus never blocks or raises; the tracker keeps stages in order and stays within its cap."""

import asyncio

from appliance.events import (
    HISTORY, MACHINE_BUDGET, MAX_DETAIL_CHARS, MAX_REPORT_CHARS, BootConfigServed, DhcpServed, Event, EventBus,
    EventKind, MachineReport, ProgressTracker, asset_path, dhcp_served,
)
from appliance.mac import MacAddress

A = MacAddress("52:54:00:00:00:0a")


def ev(kind: EventKind, mac: str | None = A, t: float = 0.0, ok: bool = True, peer: str = "10.0.0.5") -> Event:
    return Event(kind=kind, mac=MacAddress(mac) if mac else None, peer=peer, detail=kind.value, ok=ok, time=t)


def test_stages_in_order_with_times_and_a_new_boot_after_boot_config():
    tracker = ProgressTracker()
    for t, kind in enumerate([EventKind.DHCP, EventKind.TFTP, EventKind.DHCP, EventKind.BOOT_SCRIPT,
                              EventKind.BOOT_CONFIG, EventKind.KERNEL, EventKind.IGNITION]):
        tracker.record(ev(kind, t=float(t)))
    view = tracker.get(A).as_json(known=False)
    assert [s["stage"] for s in view["stages"]] == ["dhcp", "tftp", "boot-script", "boot-config", "kernel", "ignition"]
    assert view["stages"][0]["time"] == 0.0 and view["stages"][0]["count"] == 2
    assert view["boots"] == 1 and view["ip"] == "10.0.0.5"
    tracker.record(ev(EventKind.DHCP, t=10.0))  # the installed machine reboots
    view = tracker.get(A).as_json(known=False)
    assert view["boots"] == 2 and [s["stage"] for s in view["stages"]] == ["dhcp"]


def test_failed_step_is_shown_with_its_reason():
    tracker = ProgressTracker()
    tracker.record(ev(EventKind.IGNITION, ok=False))
    view = tracker.get(A).as_json(known=False)
    assert view["ok"] is False and view["stages"][0]["detail"] == "ignition"


def test_cap_evicts_oldest_unknown_machine_first():
    tracker = ProgressTracker(max_machines=3)
    known = MacAddress("52:54:00:00:00:01")
    tracker.set_known([(known, "node1")])
    tracker.record(ev(EventKind.DHCP, mac=known, t=0))
    for i, t in ((2, 1), (3, 2), (4, 3)):
        tracker.record(ev(EventKind.DHCP, mac=f"52:54:00:00:00:0{i}", t=t))
    macs = [m.mac for m in tracker.machines()]
    assert known in macs and "52:54:00:00:00:02" not in macs and len(macs) == 3
    assert tracker.evicted == 1
    assert tracker.get(known).name == "node1"


def test_cap_evicts_oldest_known_when_all_are_known():
    tracker = ProgressTracker(max_machines=2)
    macs = [MacAddress(f"52:54:00:00:00:0{i}") for i in range(3)]
    tracker.set_known((m, f"n{i}") for i, m in enumerate(macs))
    for t, mac in enumerate(macs):
        tracker.record(ev(EventKind.DHCP, mac=mac, t=t))
    assert [m.mac for m in tracker.machines()] == macs[1:]


def test_ip_to_mac_is_learned_from_events_but_never_for_loopback():
    tracker = ProgressTracker()
    tracker.record(ev(EventKind.DHCP, peer="10.0.0.9"))
    tracker.record(ev(EventKind.DHCP, mac="52:54:00:00:00:0b", peer="127.0.0.1"))
    assert tracker.mac_for_ip("10.0.0.9") == A
    assert tracker.mac_for_ip("127.0.0.1") is None


def test_negative_neighbour_lookups_are_remembered_for_a_while():
    now = [100.0]
    tracker = ProgressTracker(clock=lambda: now[0])
    tracker.lookup_failed("10.0.0.7")
    assert not tracker.should_look_up("10.0.0.7")
    now[0] += ProgressTracker.NEGATIVE_TTL + 1
    assert tracker.should_look_up("10.0.0.7")


def test_kernel_and_initrd_downloads_are_recognised_from_the_boot_config():
    tracker = ProgressTracker()
    tracker.record(BootConfigServed(kind=EventKind.BOOT_CONFIG, mac=A, peer=None, detail="", time=1.0,
                                    kernel="${bootd}/assets/k/vmlinuz", initrds=("--name main /assets/k/initrd.img",)))
    assert tracker.asset_kind(A, "k/vmlinuz") is EventKind.KERNEL
    assert tracker.asset_kind(A, "k/initrd.img") is EventKind.INITRD
    assert tracker.asset_kind(A, "k/other") is EventKind.ASSET
    assert tracker.asset_kind(None, "k/vmlinuz") is EventKind.ASSET


def test_asset_path_forms():
    assert asset_path("http://10.0.0.1:8080/assets/a/b?x=1") == "a/b"
    assert asset_path("/image/kernel") is None


async def test_bus_delivers_in_batches_and_drops_past_the_bound():
    bus = EventBus(max_pending=3)
    seen: list[Event] = []
    bus.add_sink(seen.append)
    stream = bus.stream(maxsize=2)
    for i in range(5):
        bus.publish(ev(EventKind.DHCP, t=float(i)))
    assert seen == [] and bus.dropped == 2  # publish only queued; the flush runs on the loop
    await asyncio.sleep(0)
    assert [e.time for e in seen] == [0.0, 1.0, 2.0]
    assert stream.dropped == 1 and (await stream.queue.get())[1].time == 0.0


async def test_a_failing_sink_does_not_reach_the_publisher_or_other_sinks():
    bus = EventBus()
    seen: list[Event] = []

    def broken(_event: Event) -> None:
        raise RuntimeError("bug")

    bus.add_sink(broken)
    bus.add_sink(seen.append)
    bus.publish(ev(EventKind.DHCP))
    await asyncio.sleep(0)
    assert len(seen) == 1 and bus.sink_errors == 1


def test_a_late_event_takes_its_place_by_request_time_and_does_not_start_a_new_boot():
    tracker = ProgressTracker()
    tracker.record(ev(EventKind.DHCP, t=1.0))
    tracker.record(ev(EventKind.BOOT_CONFIG, t=3.0))
    tracker.record(ev(EventKind.BOOT_SCRIPT, t=2.0))  # its MAC came from the neighbour table, after /ipxe
    view = tracker.get(A).as_json(known=False)
    assert [s["stage"] for s in view["stages"]] == ["dhcp", "boot-script", "boot-config"] and view["boots"] == 1


# --- what clients can make bootd remember is bounded in bytes (issue 13, finding 1) --------------------------

def report(mac: str, t: float, size: int) -> MachineReport:
    fields = tuple((f"k{i}", "x" * 4096) for i in range(size // 4096))
    return MachineReport(kind=EventKind.REPORT, mac=MacAddress(mac), peer=None, detail="d" * 5000, time=t,
                         fields=fields)


def test_an_event_is_kept_cut_to_the_detail_and_report_budgets():
    tracker = ProgressTracker()
    tracker.record(report("52:54:00:00:00:01", 1.0, 128 * 1024))
    progress = tracker.get(MacAddress("52:54:00:00:00:01"))
    kept = progress.history[-1]
    assert len(kept.detail) == MAX_DETAIL_CHARS and kept.detail.endswith("\u2026")
    assert sum(len(k) + len(v) for k, v in kept.fields) == MAX_REPORT_CHARS
    assert sum(len(k) + len(v) for k, v in progress.report.items()) == MAX_REPORT_CHARS


def test_the_proxy_paths_dhcp_event_is_the_dataclasss_own():
    """dhcp_served builds a DhcpServed without its __init__ (proxy-DHCP's hot path): every field the dataclass
    has must be set, to what the keyword constructor gives (a field added to Event or DhcpServed and not to
    dhcp_served fails here: an unset slot raises on reading)."""
    fast = dhcp_served(A, "10.0.0.5", "proxy OFFER", 7, 12.5)
    slow = DhcpServed(kind=EventKind.DHCP, mac=A, peer="10.0.0.5", detail="proxy OFFER", arch=7, time=12.5)
    assert type(fast) is DhcpServed and fast == slow
    assert [getattr(fast, name) for name in DhcpServed.__dataclass_fields__] == \
        [getattr(slow, name) for name in DhcpServed.__dataclass_fields__]
    assert dhcp_served(A, None, "x", None, 1.0) == DhcpServed(kind=EventKind.DHCP, mac=A, peer=None, detail="x", time=1.0)


def test_one_machine_keeps_at_most_its_budget_however_often_it_reports():
    tracker = ProgressTracker()
    for t in range(200):
        tracker.record(report("52:54:00:00:00:02", float(t), 16 * 1024))
    progress = tracker.get(MacAddress("52:54:00:00:00:02"))
    assert progress.cost <= MACHINE_BUDGET and len(progress.history) < HISTORY
    assert progress.history[-1].time == 199.0  # the newest stay
    assert progress.cost == tracker.cost  # the sum the tracker keeps is the machines' own


def test_invented_macs_cannot_grow_the_tracker_past_its_budget_and_configured_machines_stay():
    tracker = ProgressTracker(budget=1024 * 1024)
    tracker.set_known([(MacAddress("52:54:00:aa:00:01"), "node1")])
    tracker.record(ev(EventKind.DHCP, mac="52:54:00:aa:00:01", t=0.0))
    for i in range(4096):
        for t in range(4):
            tracker.record(report(f"02:00:00:00:{i >> 8:02x}:{i & 0xff:02x}", 1.0 + i + t / 10, 16 * 1024))
        assert tracker.cost <= tracker.budget
    assert tracker.get(MacAddress("52:54:00:aa:00:01")) is not None
    assert tracker.evicted > 3000 and tracker.get(MacAddress("02:00:00:00:0f:ff")) is not None
    assert tracker.cost == sum(m.cost for m in tracker.machines())


def test_a_detail_with_control_characters_is_logged_on_one_line(caplog):
    from appliance.events import log_event

    event = Event(kind=EventKind.REPORT, mac=MacAddress("52:54:00:00:00:07"), peer=None,
                  detail="reported: x=1\n2026-12-02 INFO appliance: forged line\r")
    with caplog.at_level("INFO", logger="appliance.events"):
        log_event(event)
    [record] = caplog.records
    assert "\n" not in record.getMessage() and "\r" not in record.getMessage()
    assert "x=1\\n2026-12-02 INFO appliance: forged line\\r" in record.getMessage()
