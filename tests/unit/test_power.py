"""Power's pure parts: which machines a request reaches, the request's decoding, and how power events shape a
machine's progress (a PXE request starts a new boot; status, on, off only mark the power state)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import BmcConfig, BmcProtocol, Machine
from appliance.events import Event, EventKind, MachineProgress, PowerEvent
from appliance.mac import MacAddress
from appliance.power.model import PowerAction, PowerOutcome, PowerRequest, scrub
from appliance.power.runner import Target, targets

BMC = BmcConfig(protocol=BmcProtocol.IPMI, address="10.0.0.5", port=623, username="admin",
                password_file=Path("/etc/bootd/bmc.pw"))
MACHINES = (Machine(name="a", mac=MacAddress("52:54:00:00:00:01"), bmc=BMC),
            Machine(name="b", mac=MacAddress("52:54:00:00:00:02")),
            Machine(name="c", mac=MacAddress("52:54:00:00:00:03"), bmc=BMC))


def names(plan: list) -> list[tuple[str, bool]]:
    return [(p.machine.name, True) if isinstance(p, Target) else (p.machine, False) for p in plan]


@pytest.mark.parametrize("request_, expected", [
    pytest.param(PowerRequest(action=PowerAction.STATUS, all=True), [("a", True), ("c", True)], id="all-with-bmc"),
    pytest.param(PowerRequest(action=PowerAction.ON, machines=("c", "A", "b", "x", "c")),
                 [("c", True), ("a", True), ("b", False), ("x", False)], id="named-in-order-once"),
])
def test_targets_are_the_machines_asked_for(request_, expected):
    assert names(targets(request_, MACHINES)) == expected


def test_all_without_any_bmc_says_so():
    plan = targets(PowerRequest(action=PowerAction.ON, all=True), MACHINES[1:2])
    assert plan == [PowerOutcome(machine="(all)", ok=False, message="no machine in bootd.yaml has a bmc:")]


@pytest.mark.parametrize("body", [b"", b"\xff", b"[]", b'{"action": "explode", "machines": ["a"]}',
                                  b'{"action": "on", "machines": "a"}', b'{"action": "on", "machines": []}',
                                  b'{"action": "on", "machines": ["a"], "all": true}',
                                  b'{"action": "on", "machines": ["a"], "requested_by": 5}',
                                  b'{"action": "on", "machines": ["a\\nFAKE LOG LINE"]}',
                                  b'{"action": "on", "machines": [""]}'])
def test_a_request_that_is_not_one_is_a_value_error(body):
    with pytest.raises(ValueError):
        PowerRequest.decode(body)


def test_requester_is_cut_and_cleaned():
    request = PowerRequest.decode(b'{"action": "reprovision", "machines": ["a"], "requested_by": "eve\\u001b[2J\\n' +
                                  b"x" * 100 + b'"}')
    assert request.requested_by.startswith("eve[2J") and len(request.requested_by) == 64
    assert PowerRequest.decode(request.encode()) == request


def test_an_outcome_line_is_one_line_of_plain_text():
    assert PowerOutcome(machine="a", ok=False, message="refused (\x1b[2Jgone\nx)").line() == "a: refused (\\x1b[2Jgone\\nx)"


def test_scrub_removes_the_password():
    assert scrub("login as admin/hunter22 failed", "hunter22") == "login as admin/*** failed"
    assert scrub("text", "") == "text"


def progress() -> MachineProgress:
    p = MachineProgress(MacAddress("52:54:00:00:00:01"), "a", 0.0, 0.0)
    for t, kind in enumerate((EventKind.DHCP, EventKind.BOOT_SCRIPT, EventKind.BOOT_CONFIG, EventKind.REPORT)):
        p.record(Event(kind=kind, mac=p.mac, peer=None, detail=kind.value, time=float(t + 1)))
    return p


def power(detail: str, t: float, **kw) -> PowerEvent:
    return PowerEvent(kind=EventKind.POWER, mac=MacAddress("52:54:00:00:00:01"), peer=None, detail=detail, time=t, **kw)


def test_a_pxe_request_starts_a_new_boot_and_its_outcome_updates_it():
    p = progress()
    p.record(power("PXE boot requested by alice", 10.0, timeline=True, new_boot=True))
    assert p.boots == 2 and [s.kind for s in p.stages] == [EventKind.POWER]
    p.record(power("PXE boot requested by alice: powered on", 11.0, timeline=True, state="on"))
    p.record(Event(kind=EventKind.DHCP, mac=p.mac, peer=None, detail="offer", time=12.0))
    assert p.boots == 2 and [s.kind for s in p.stages] == [EventKind.POWER, EventKind.DHCP]
    assert p.stages[0].detail.endswith("powered on") and p.power == "on"
    assert p.as_json(known=True)["power"] == {"state": "on", "time": 11.0}


def test_status_on_off_mark_the_power_state_and_leave_the_boot_alone():
    p = progress()
    assert p.record(power("power status asked by bob: on", 10.0, state="on"))  # news: the state changed
    assert not p.record(power("power status asked by bob: on", 11.0, state="on"))
    assert p.record(power("power off requested by bob: failed: wrong password", 12.0, ok=False))
    assert [s.kind for s in p.stages] == [EventKind.DHCP, EventKind.BOOT_SCRIPT, EventKind.BOOT_CONFIG,
                                          EventKind.REPORT]
    assert p.boots == 1 and p.power == "on" and p.power_seen == 11.0 and len(p.history) == 7
