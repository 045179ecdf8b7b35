"""`bootd status`: the machines' progress as a table in a terminal, for the appliance's console and SSH.

It shows what /ui/ shows, from the same JSON (/api/v1/machines, kept current with /api/v1/events): the
views compute nothing of their own. Piped, it prints plain text once; on a terminal, `--watch` redraws on
every event and each second (for the time since power-on). Its exit code says whether every machine's
last boot is going well (0) or one failed (EXIT_MACHINE_FAILED), so scripts can wait on it.

Every text from the server is cleaned of control characters before it reaches the terminal: a client
chooses its labels and its report, and an escape sequence in them must not move the cursor or retitle
the window of the operator reading it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from typing import Any, TextIO

from appliance.config import Config

EXIT_MACHINE_FAILED = 3  # past cli's 1 (not done) and 2 (usage): a script can tell "failed" from "unreachable"
FETCH_SECONDS = 10.0
REDRAW_SECONDS = 1.0  # the time since power-on moves on
RECONNECT_SECONDS = 2.0

RED, GREEN, BOLD, RESET = "\x1b[31m", "\x1b[32m", "\x1b[1m", "\x1b[0m"
CLEAR = "\x1b[H\x1b[2J"


class StatusError(Exception):
    pass


def default_endpoint(config: Config) -> str:
    """The local bootd's HTTP address, as this host reaches it (every address: loopback)."""
    address = config.http.address
    host = "127.0.0.1" if address is None or address.is_unspecified else str(address)
    if address is not None and isinstance(ip_address(host), IPv6Address):
        host = f"[{host}]"
    return f"http://{host}:{config.http.port}"


def fetch_listing(endpoint: str) -> dict[str, Any]:
    url = endpoint.rstrip("/") + "/api/v1/machines"
    try:
        with urllib.request.urlopen(url, timeout=FETCH_SECONDS) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{url}: HTTP {exc.code} (is this bootd?)") from None
    except urllib.error.URLError as exc:
        raise StatusError(f"cannot reach bootd at {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise StatusError(f"{url}: {exc}") from None


# --- what is shown: pure functions of the listing ---------------------------------------------------------

def clean(text: object) -> str:
    """`text` without control characters (each shown as '?'), for a terminal."""
    return "".join(c if c.isprintable() else "?" for c in str(text if text is not None else ""))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def elapsed(machine: dict[str, Any], now: float) -> float | None:
    started = machine.get("boot_started")
    if started is None:
        return None
    finished = machine.get("stage") == "report" or machine.get("failure")
    return (machine.get("last_seen") or now if finished else now) - started


def failed(listing: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in listing.get("machines", []) if m.get("failure")]


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    width: int  # at most; the last column takes what is left of the line


COLUMNS = (Column("NAME", 20), Column("MAC", 17), Column("IP", 15), Column("ARCH/FIRMWARE", 17),
           Column("GROUP/PROFILE", 24), Column("STAGE", 20), Column("SINCE ON", 8), Column("LAST EVENT", 0))


def render(listing: dict[str, Any], *, now: float, width: int = 160, color: bool = False) -> str:
    """The table, then a line per failed machine (why) and per unknown one (how to claim it)."""
    machines = listing.get("machines", [])
    fleet = listing.get("fleet")  # with the etcd store: every replica's machines
    rows = []
    for m in machines:
        last = m.get("last_event") or {}
        rows.append([
            clean(m.get("name") or "(unknown)"), clean(m.get("mac")), clean(m.get("ip") or ""),
            clean(" ".join(filter(None, (m.get("arch"), m.get("firmware"))))),
            clean("/".join(filter(None, (m.get("group"), m.get("profile"))))),
            clean(("FAILED " if m.get("failure") else "") + (m.get("stage") or "-")
                  + (f" (power {m['power']['state']})" if m.get("power") else "")  # as its BMC last said
                  + (f"@{served}" if fleet and (served := current_replica(m)) else "")),  # which replica served it
            duration(elapsed(m, now)),
            clean(f"{last.get('stage', '')}: {last.get('detail', '')}" if last else ""),
        ])
    widths = [min(c.width, max([len(c.title), *(len(r[i]) for r in rows)])) if c.width else 0
              for i, c in enumerate(COLUMNS)]
    widths[-1] = max(10, width - sum(widths[:-1]) - 2 * (len(COLUMNS) - 1))

    def line(cells: list[str]) -> str:
        return "  ".join(cut(text, w).ljust(w) for text, w in zip(cells, widths)).rstrip()

    out = [line([c.title for c in COLUMNS])]
    for m, row in zip(machines, rows):
        text = line(row)
        if color and m.get("failure"):
            text = f"{RED}{text}{RESET}"
        elif color and m.get("stage") == "report":
            text = f"{GREEN}{text}{RESET}"
        out.append(text)
    stages: dict[str, int] = {}
    for m in machines:
        stages[m.get("stage") or "not seen"] = stages.get(m.get("stage") or "not seen", 0) + 1
    bad = failed(listing)
    summary = f"{len(machines)} machines: " + ", ".join(f"{n} {s}" for s, n in stages.items())
    out.append("")
    out.append(summary + (f"; {len(bad)} FAILED" if bad else ""))
    for m in bad:
        reason = f"{clean(m.get('name') or m.get('mac'))}: {clean(m['failure'])}"
        out.append(f"{RED}{reason}{RESET}" if color else reason)
    if fleet:
        out.append(fleet_line(fleet))
    unknown = [m for m in machines if m.get("claim")]
    if unknown:
        out.append("not in bootd.yaml; to claim them, add under machines:")
        out.extend(f"  {clean(m['claim'])}" for m in unknown)
    return "\n".join(out) + "\n"


def current_replica(machine: dict[str, Any]) -> str | None:
    """The replica that served the machine's current stage (the fleet view's rows name one per stage)."""
    stages = machine.get("stages") or []
    return stages[-1].get("replica") if stages and isinstance(stages[-1], dict) else None


def fleet_line(fleet: dict[str, Any]) -> str:
    """Which replicas the view merges, and whether it is current (etcd reachable) or stale since when."""
    here = clean(fleet.get("replica"))
    replicas = ", ".join(clean(r) for r in fleet.get("replicas") or [])
    if not fleet.get("stale"):
        return f"fleet: replicas {replicas} (this is {here})"
    since = fleet.get("stale_since")
    when = time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return (f"fleet view STALE since {when}: {clean(fleet.get('stale_reason'))}; showing what {here} has "
            f"(replicas {replicas})")


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "\u2026"


def exit_code(listing: dict[str, Any]) -> int:
    return EXIT_MACHINE_FAILED if failed(listing) else 0


# --- the command ------------------------------------------------------------------------------------------

def run(endpoint: str, *, watch: bool, out: TextIO = sys.stdout) -> int:
    """Print the table once (or, with --watch on a terminal, until Ctrl-C); the exit code of the last view."""
    listing = fetch_listing(endpoint)
    if not (watch and out.isatty()):
        out.write(render(listing, now=listing.get("now", time.time()), width=_width(out)))
        out.flush()
        return exit_code(listing)
    return asyncio.run(Watch(endpoint, listing, out).run())


def _width(out: TextIO) -> int:
    return shutil.get_terminal_size((160, 40)).columns if out.isatty() else 160


class Watch:
    """The live view: the listing, changed row by row by the event stream; redrawn on change and each second."""

    def __init__(self, endpoint: str, listing: dict[str, Any], out: TextIO) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.listing = listing
        self.out = out
        self.offset = listing.get("now", time.time()) - time.time()  # server clock - ours
        self.last_id = listing.get("last_event_id", 0)
        self.connected = False
        self.changed = asyncio.Event()

    async def run(self) -> int:
        follower = asyncio.create_task(self._follow())
        try:
            while True:
                self._draw()
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), REDRAW_SECONDS)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the main task
            return exit_code(self.listing)
        finally:
            follower.cancel()

    def _draw(self) -> None:
        now = time.time() + self.offset
        state = "live" if self.connected else "reconnecting"
        head = f"{BOLD}bootd status{RESET} {clean(self.endpoint)}  {state}  {time.strftime('%H:%M:%S')}  (Ctrl-C ends)\n\n"
        self.out.write(CLEAR + head + render(self.listing, now=now, width=_width(self.out), color=True))
        self.out.flush()

    def _update(self, machine: dict[str, Any]) -> None:
        machines = self.listing.setdefault("machines", [])
        for i, known in enumerate(machines):
            if known.get("mac") == machine.get("mac"):
                machines[i] = machine
                break
        else:
            machines.append(machine)

    async def _follow(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=FETCH_SECONDS, sock_read=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(f"{self.endpoint}/api/v1/events",
                                           headers={"Last-Event-ID": str(self.last_id)}) as response:
                        if response.status != 200:
                            raise aiohttp.ClientError(f"HTTP {response.status}")
                        self.connected = True
                        self.changed.set()
                        await self._read(response)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    pass
                self.connected = False
                self.changed.set()
                await asyncio.sleep(RECONNECT_SECONDS)  # bootd restarting: try again, as EventSource does

    async def _read(self, response: Any) -> None:
        name, data, event_id = "message", "", None
        async for raw in response.content:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "":
                if event_id and event_id.isdigit():
                    self.last_id = int(event_id)
                if name == "machine" and data:
                    self._update(json.loads(data)["machine"])
                    self.changed.set()
                elif name == "resync":
                    listing = await asyncio.to_thread(fetch_listing, self.endpoint)
                    self.listing = listing
                    self.last_id = listing.get("last_event_id", self.last_id)
                    self.changed.set()
                name, data, event_id = "message", "", None
