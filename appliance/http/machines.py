"""The machines' provisioning progress as JSON: GET /api/v1/machines and /api/v1/machines/{mac}.

This JSON is the one data model of the views: /ui/ and `bootd status` show it, and compute nothing else."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from appliance.events import EventKind, MachineReport
from appliance.http.common import CONTEXT, publish
from appliance.mac import try_parse_mac

MAX_REPORT_BYTES = 16 * 1024
MAX_FIELD_CHARS = 4096
# A report is one small JSON object: a client that has not sent it whole by then is too slow (or means to
# hold the connection), and is answered 408.
REPORT_BODY_SECONDS = 10.0


async def list_machines(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    tracker = ctx.tracker
    seen = {m.mac for m in tracker.machines()}
    machines = [m.as_json(known=tracker.is_known(m.mac)) for m in tracker.machines()]
    if ctx.fleet is not None:  # each step's replica
        machines = [ctx.fleet.row(m, row) for m, row in zip(tracker.machines(), machines)]
    # Configured machines that have not been seen yet are listed too, with no stage.
    for machine in ctx.config.machines:
        if machine.mac not in seen:
            machines.append(_unseen(machine.mac, machine.name))
    listing = {
        "machines": machines,
        "now": time.time(),  # the views count a machine's time since power-on from this clock
        "last_event_id": ctx.bus.last_id,  # a live view's stream starts after it (/api/v1/events?since=)
        "events_dropped": ctx.bus.dropped,
        "machines_evicted": tracker.evicted,
        "bytes_kept": tracker.cost,  # an estimate; clients cannot make it pass bytes_budget
        "bytes_budget": tracker.budget,
    }
    if ctx.fleet is not None:  # this replica, the others, and whether the view is current
        listing["fleet"] = ctx.fleet.as_json()
    return web.json_response(listing)


async def get_machine(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    mac = try_parse_mac(request.match_info["mac"])
    if mac is None:
        return web.json_response({"error": f"{request.match_info['mac']!r} is not a MAC address"}, status=400)
    progress = ctx.tracker.get(mac)
    if progress is not None:
        row = progress.as_json(known=ctx.tracker.is_known(mac), events=True)
        if ctx.fleet is not None:
            row = ctx.fleet.row(progress, row)
        return web.json_response({**row, "now": time.time()})
    configured = ctx.config.machine_by_mac(mac)
    if configured is not None:
        return web.json_response(_unseen(mac, configured.name))
    return web.json_response({"error": f"no machine {mac} has been seen"}, status=404)


def _unseen(mac: str, name: str) -> dict[str, object]:
    return {"mac": mac, "name": name, "known": True, "ip": None, "first_seen": None, "last_seen": None,
            "boots": 0, "stage": None, "ok": True, "stages": [], "report": None, "events": [], "arch": None,
            "firmware": None, "group": None, "profile": None, "boot_started": None, "last_event": None,
            "failure": None, "claim": None}


async def report(request: web.Request) -> web.Response:
    """POST /api/v1/machines/{mac}/report: a machine says it reached its system, and what it saw (a JSON
    object of short strings, e.g. the sha256 of its Ignition config and its kernel command line). The one
    write the read-only port accepts: it changes the machine's progress and nothing on disk."""
    ctx = request.app[CONTEXT]
    mac = try_parse_mac(request.match_info["mac"])
    if mac is None:
        return web.json_response({"error": f"{request.match_info['mac']!r} is not a MAC address"}, status=400)
    if request.content_length is not None and request.content_length > MAX_REPORT_BYTES:
        return web.json_response({"error": f"a report is at most {MAX_REPORT_BYTES} bytes"}, status=413)
    try:
        async with asyncio.timeout(REPORT_BODY_SECONDS):
            body = await read_body(request.content, MAX_REPORT_BYTES + 1)
    except TimeoutError:
        return web.json_response({"error": f"the report was not sent within {REPORT_BODY_SECONDS:.0f} s"},
                                 status=408)
    except ConnectionResetError:  # the client left before its whole body came: nobody to answer
        return web.json_response({"error": "the connection closed before the report's end"}, status=400)
    if len(body) > MAX_REPORT_BYTES:
        return web.json_response({"error": f"a report is at most {MAX_REPORT_BYTES} bytes"}, status=413)
    try:
        fields = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return web.json_response({"error": f"not JSON: {exc}"}, status=400)
    except RecursionError:  # [[[[... within the size limit: json's C decoder recurses per level
        return web.json_response({"error": "not JSON: nested too deeply"}, status=400)
    if not isinstance(fields, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float, bool))
                                               for k, v in fields.items()):
        return web.json_response({"error": "expected a JSON object of strings and numbers"}, status=400)
    clean = tuple((k[:64], str(v)[:MAX_FIELD_CHARS]) for k, v in list(fields.items())[:32])
    summary = ", ".join(f"{printable(k)}={printable(v[:80])}" for k, v in clean)
    publish(ctx, request, mac, MachineReport, kind=EventKind.REPORT, detail=f"reported: {summary}", fields=clean)
    return web.json_response({"ok": True})


def printable(text: str) -> str:
    """`text` for the log line: control characters (a newline would forge a line of the text log) as '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


async def read_body(content: web.StreamReader, limit: int) -> bytes:
    """The body up to `limit` bytes; `StreamReader.read(n)` returns what has arrived so far, which for a
    body sent in two segments is its first part."""
    body = b""
    while len(body) < limit and (chunk := await content.read(limit - len(body))):
        body += chunk
    return body


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTEXT].stats())
