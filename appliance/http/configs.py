"""Per-machine configs: /ignition (raw Ignition 3.x) and /metadata."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web

from appliance.events import EventKind
from appliance.http.common import CONTEXT, failed, publish, select, text_response
from appliance.ignition import InvalidIgnition, check_raw_ignition
from appliance.templates import format_value
from appliance.templates.data import template_data

logger = logging.getLogger(__name__)

RAW_IGNITION_SUFFIXES = (".ign", ".ignition")


async def ignition(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    chosen = select(ctx, request)
    mac = chosen.mac
    if chosen.profile is None:
        return failed(ctx, request, mac, EventKind.IGNITION, chosen.reason)
    name = chosen.profile.ignition_id
    if not name:
        return failed(ctx, request, mac, EventKind.IGNITION, f"{chosen.reason}: profile names no ignition_id")
    data = ctx.store.ignition(name)
    if data is None:
        return failed(ctx, request, mac, EventKind.IGNITION, f"{chosen.reason}: ignition/{name} is missing")
    if not name.endswith(RAW_IGNITION_SUFFIXES):
        return failed(ctx, request, mac, EventKind.IGNITION,
                      f"{chosen.reason}: ignition/{name} is a Butane/template config, which this bootd "
                      "version does not render; serve raw Ignition (.ign) instead")
    try:
        config = check_raw_ignition(data)
    except InvalidIgnition as exc:
        logger.warning("ignition/%s is invalid: %s", name, exc)
        return failed(ctx, request, mac, EventKind.IGNITION, f"{chosen.reason}: ignition/{name} is invalid: {exc}")
    publish(ctx, request, mac, kind=EventKind.IGNITION,
            detail=f"{chosen.reason}: ignition/{name} (spec {config.version}, served as {config.served_version})")
    return text_response(config.body, "application/json")


async def metadata(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    chosen = select(ctx, request)
    mac = chosen.mac
    if chosen.group is None:
        return failed(ctx, request, mac, EventKind.METADATA, chosen.reason)
    data = template_data(chosen.group, chosen.labels.labels, request.rel_url.raw_query_string)
    publish(ctx, request, mac, kind=EventKind.METADATA, detail=f"group {chosen.group.id!r}")
    # matchbox sets this exact (misspelt) type; its tests assert it.
    return web.Response(body=render_env_file(data).encode(), headers={"Content-Type": "plain/text"})


def render_env_file(data: Mapping[str, Any]) -> str:
    """matchbox's renderAsEnvFile: KEY=value per leaf, nested keys joined by `_`, lists and nulls left out.

    matchbox prints the lines in Go's random map order; bootd sorts them.
    """
    return "".join(f"{key}={value}\n" for key, value in sorted(_env_lines("", data)))


def _env_lines(prefix: str, data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for key, value in data.items():
        name = (prefix + key).upper()
        if isinstance(value, Mapping):
            yield from _env_lines(name + "_", value)
        elif isinstance(value, (str, bool, int, float)):
            yield name, format_value(value)
