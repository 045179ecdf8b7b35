"""What a power request is and what each machine's answer is: plain values, shared by the daemon and the CLI
(they travel as JSON over the read-write API)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class PowerAction(StrEnum):
    STATUS = "status"
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"  # off, then on (both waited for)
    REPROVISION = "reprovision"  # a one-time PXE boot override, then a power cycle (or power on when off)


class BmcFailed(Exception):
    """One machine's request failed; the message is the one line the operator reads (no password in it)."""


def scrub(text: str, password: str) -> str:
    """`text` without `password` in it: a library's error could quote what it sent."""
    return text.replace(password, "***") if password else text


def wait_for_power(read_state: Callable[[], str], want: str, *, where: str, timeout: float) -> None:
    """Poll the BMC until it reports `want`: BMCs answer a power request before they carry it out, and "off"
    must mean the BMC said off."""
    deadline = time.monotonic() + timeout
    while read_state() != want:
        if time.monotonic() > deadline:
            raise BmcFailed(f"{where}: asked for power {want}, still not {want} after {timeout:g} s")
        time.sleep(0.5)


MAX_WHO = 64  # characters of the requester's name kept (the client chooses it)
MAX_MACHINES = 4096  # names in one request (the progress tracker's machine bound)


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerRequest:
    action: PowerAction
    machines: tuple[str, ...] = ()  # names from bootd.yaml
    all: bool = False  # every machine with a bmc
    requested_by: str = ""  # the CLI's user, as the client says (the certificate names the client)

    def __post_init__(self) -> None:
        if self.all == bool(self.machines):
            raise ValueError("name machines, or ask for all of them")

    def encode(self) -> bytes:
        return json.dumps({"action": self.action.value, "machines": list(self.machines), "all": self.all,
                           "requested_by": self.requested_by}).encode()

    @classmethod
    def decode(cls, data: bytes) -> PowerRequest:
        """ValueError for anything that is not a request."""
        try:
            obj = json.loads(data)
            machines = obj["machines"]
            who = obj.get("requested_by", "")
            if not (isinstance(machines, list) and all(isinstance(m, str) for m in machines)
                    and isinstance(who, str) and isinstance(obj.get("all", False), bool)):
                raise ValueError("bad field types")
            # names are logged and echoed: nothing that could start a log line or steer a terminal
            if len(machines) > MAX_MACHINES or not all(0 < len(m) <= 253 and m.isprintable() for m in machines):
                raise ValueError("machine names must be printable, at most 253 characters, at most "
                                 f"{MAX_MACHINES} of them")
            who = "".join(c for c in who if c.isprintable())[:MAX_WHO]
            return cls(action=PowerAction(obj["action"]), machines=tuple(machines), all=obj.get("all", False),
                       requested_by=who)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a power request: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerOutcome:
    machine: str
    ok: bool
    message: str  # what was done, or what failed
    state: str | None = None  # "on" or "off" as the BMC last said
    seconds: float = 0.0

    def line(self) -> str:
        """For a terminal: a BMC's words (an error's detail) cannot move the cursor or start another line."""
        text = f"{self.machine}: {self.message}"
        return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def encode_outcomes(outcomes: list[PowerOutcome]) -> bytes:
    return json.dumps({"outcomes": [{"machine": o.machine, "ok": o.ok, "message": o.message, "state": o.state,
                                     "seconds": round(o.seconds, 3)} for o in outcomes]}).encode()


def decode_outcomes(data: bytes) -> list[PowerOutcome]:
    return [PowerOutcome(machine=o["machine"], ok=o["ok"], message=o["message"], state=o["state"],
                         seconds=o["seconds"]) for o in json.loads(data)["outcomes"]]
