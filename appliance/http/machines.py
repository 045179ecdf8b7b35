"""The machines' provisioning progress as JSON: GET /api/v1/machines and /api/v1/machines/{mac}."""

from __future__ import annotations

from aiohttp import web

from appliance.http.common import CONTEXT
from appliance.mac import try_parse_mac


async def list_machines(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    tracker = ctx.tracker
    seen = {m.mac for m in tracker.machines()}
    machines = [m.as_json(known=tracker.is_known(m.mac)) for m in tracker.machines()]
    # Configured machines that have not been seen yet are listed too, with no stage.
    for machine in ctx.config.machines:
        if machine.mac not in seen:
            machines.append(_unseen(machine.mac, machine.name))
    return web.json_response({
        "machines": machines,
        "events_dropped": ctx.bus.dropped,
        "machines_evicted": tracker.evicted,
    })


async def get_machine(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    mac = try_parse_mac(request.match_info["mac"])
    if mac is None:
        return web.json_response({"error": f"{request.match_info['mac']!r} is not a MAC address"}, status=400)
    progress = ctx.tracker.get(mac)
    if progress is not None:
        return web.json_response(progress.as_json(known=ctx.tracker.is_known(mac), events=True))
    configured = ctx.config.machine_by_mac(mac)
    if configured is not None:
        return web.json_response(_unseen(mac, configured.name))
    return web.json_response({"error": f"no machine {mac} has been seen"}, status=404)


def _unseen(mac: str, name: str) -> dict[str, object]:
    return {"mac": mac, "name": name, "known": True, "ip": None, "first_seen": None, "last_seen": None,
            "boots": 0, "stage": None, "ok": True, "stages": [], "events": []}


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTEXT].stats())
