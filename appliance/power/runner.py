"""One power request for several machines at once: who is asked what, in worker threads with a deadline each,
and the events that put each request and its outcome in the machine's progress."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance.config import BmcConfig, BmcProtocol, Machine
from appliance.events import EventKind, PowerEvent
from appliance.power.model import BmcFailed, PowerAction, PowerOutcome, PowerRequest

logger = logging.getLogger(__name__)

# A BMC gets this long for each of its steps (login, a boot override, a power change to be seen), and a
# machine's whole request ends at DEADLINE_SECONDS: a reprovision is about four steps.
STEP_SECONDS = 15.0
DEADLINE_SECONDS = 60.0
# Worker threads for BMC requests. A thread whose machine passed its deadline runs on until the library gives
# up (its own timeouts are STEP_SECONDS), so a burst of dead BMCs takes at most this many threads.
MAX_WORKERS = 32
_workers = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="bmc")


@dataclass(frozen=True, slots=True)
class Target:
    machine: Machine
    bmc: BmcConfig


def targets(request: PowerRequest, machines: Sequence[Machine]) -> list[Target | PowerOutcome]:
    """Each machine the request names (or every machine with a bmc), in the order asked: a Target, or the
    outcome that says why it cannot be asked."""
    by_name = {m.name: m for m in machines}
    if request.all:
        chosen: list[Machine | str] = [m for m in machines if m.bmc is not None]
        if not chosen:
            return [PowerOutcome(machine="(all)", ok=False, message="no machine in bootd.yaml has a bmc:")]
    else:
        chosen = [by_name.get(name.lower(), name) for name in dict.fromkeys(request.machines)]
    out: list[Target | PowerOutcome] = []
    for item in chosen:
        if isinstance(item, str):
            out.append(PowerOutcome(machine=item, ok=False, message="no machine of that name in bootd.yaml"))
        elif item.bmc is None:
            out.append(PowerOutcome(machine=item.name, ok=False,
                                    message="no bmc: in bootd.yaml for this machine (add bmc: {protocol, address, "
                                            "username, password_file})"))
        else:
            out.append(Target(item, item.bmc))
    return out


def read_password(bmc: BmcConfig, environ: dict[str, str] | os._Environ = os.environ) -> str:
    if bmc.password_file is not None:
        try:
            text = Path(bmc.password_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BmcFailed(f"password_file {bmc.password_file}: cannot read: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
        password = text.rstrip("\r\n")
        if not password:
            raise BmcFailed(f"password_file {bmc.password_file} is empty")
        return password
    assert bmc.password_env is not None  # the config reader requires one of the two
    password = environ.get(bmc.password_env, "")
    if not password:
        raise BmcFailed(f"password_env {bmc.password_env} is not set in bootd's environment")
    return password


def open_bmc(bmc: BmcConfig, password: str, timeout: float):
    if bmc.protocol is BmcProtocol.IPMI:
        from appliance.power.ipmi import IpmiBmc

        return IpmiBmc(bmc, password, timeout)
    from appliance.power.redfish import RedfishBmc

    return RedfishBmc(bmc, password, timeout)


def act(bmc: BmcConfig, action: PowerAction, step_seconds: float = STEP_SECONDS) -> tuple[str, str]:
    """Blocking: ask the BMC; (the power state it reported last, what was done). BmcFailed says what failed."""
    client = open_bmc(bmc, read_password(bmc), step_seconds)
    try:
        was = client.power_state()
        if action is PowerAction.STATUS:
            return was, was
        if action is PowerAction.ON:
            if was != "on":
                client.power_on()
            return "on", "powered on" if was != "on" else "on already"
        if action is PowerAction.OFF:
            if was != "off":
                client.power_off()
            return "off", "powered off" if was != "off" else "off already"
        done = []
        if action is PowerAction.REPROVISION:
            done.append(f"{client.where}: {client.pxe_once()}")
        if was == "on":
            client.power_off()
            done.append("powered off")
        client.power_on()
        done.append("powered on")
        return "on", ", ".join(done)
    finally:
        client.close()


def _describe(action: PowerAction, who: str) -> str:
    if action is PowerAction.REPROVISION:
        return f"PXE boot requested by {who}"
    if action is PowerAction.STATUS:
        return f"power status asked by {who}"
    return f"power {action.value} requested by {who}"


async def run_request(request: PowerRequest, machines: Sequence[Machine], publish: Callable[[PowerEvent], None],
                      who: str, deadline: float = DEADLINE_SECONDS,
                      step_seconds: float = STEP_SECONDS) -> list[PowerOutcome]:
    """Every machine's request at once; each outcome once its BMC answered or its deadline passed."""
    loop = asyncio.get_running_loop()

    async def one(target: Target) -> PowerOutcome:
        machine, action = target.machine, request.action
        what = _describe(action, who)
        started = time.monotonic()
        if action is PowerAction.REPROVISION:  # the new boot's timeline starts at the request
            publish(PowerEvent(kind=EventKind.POWER, mac=machine.mac, peer=None, detail=what, timeline=True,
                               new_boot=True))
        try:
            state, done = await asyncio.wait_for(
                loop.run_in_executor(_workers, act, target.bmc, action, step_seconds), deadline)
            outcome = PowerOutcome(machine=machine.name, ok=True, state=state, message=done,
                                   seconds=time.monotonic() - started)
        except BmcFailed as exc:
            outcome = PowerOutcome(machine=machine.name, ok=False, message=str(exc),
                                   seconds=time.monotonic() - started)
        except TimeoutError:  # asyncio.wait_for past the deadline
            outcome = PowerOutcome(machine=machine.name, ok=False, seconds=time.monotonic() - started,
                                   message=f"{target.bmc.protocol.value} {target.bmc.address}:{target.bmc.port}: "
                                           f"no outcome within {deadline:g} s")
        detail = f"{what}: {outcome.message}" if outcome.ok else f"{what}: failed: {outcome.message}"
        publish(PowerEvent(kind=EventKind.POWER, mac=machine.mac, peer=None, detail=detail, ok=outcome.ok,
                           state=outcome.state, timeline=action is PowerAction.REPROVISION))
        return outcome

    planned = targets(request, machines)
    asked = [one(item) for item in planned if isinstance(item, Target)]
    answered = iter(await asyncio.gather(*asked))
    outcomes = []
    by_name = {m.name: m for m in machines}
    for item in planned:
        if isinstance(item, Target):
            outcomes.append(next(answered))
            continue
        outcomes.append(item)
        if (machine := by_name.get(item.machine)) is not None:  # a configured machine without a bmc
            publish(PowerEvent(kind=EventKind.POWER, mac=machine.mac, peer=None, ok=False,
                               detail=f"{_describe(request.action, who)}: failed: {item.message}"))
    return outcomes
