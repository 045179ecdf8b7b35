"""Per-machine configs: /ignition (raw Ignition 3.x or a Butane template), /generic, /cloud and /metadata."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web

from appliance.events import EventKind
from appliance.http.common import CONTEXT, Selection, failed, publish, select
from appliance.render import Refusal, Rendered, generic_for, ignition_for
from appliance.templates import format_value
from appliance.templates.data import template_data

logger = logging.getLogger(__name__)
INLINE_IGNITION_BYTES = 16 * 1024  # templates up to this size are rendered on the event loop (see ignition)

async def ignition(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    chosen = select(ctx, request)
    if chosen.profile is None or chosen.group is None:
        return failed(ctx, request, chosen.mac, EventKind.IGNITION, chosen.reason)
    data = template_data(chosen.group, chosen.labels.labels, request.rel_url.raw_query_string)
    # A worker thread: a Butane template with a large inline file takes seconds to render, translate and
    # compress (a 15 MB one: 8 s), and DHCP, TFTP and DNS share this event loop (the data dir is locked).
    # A small one takes well under a millisecond (its translation is kept: render.py), less than the hop to
    # a thread and back (which waits for the GIL under load): that one is rendered here.
    name = chosen.profile.ignition_id
    source = ctx.store.ignition(name) if name else None
    if source is not None and len(source) <= INLINE_IGNITION_BYTES:
        rendered = ignition_for(chosen.profile, ctx.store, data, source)
    else:
        rendered = await asyncio.to_thread(ignition_for, chosen.profile, ctx.store, data)
    return _serve(ctx, request, chosen, EventKind.IGNITION, rendered)


async def generic(request: web.Request) -> web.Response:
    return await _generic(request, cloud=False)


async def cloud(request: web.Request) -> web.Response:
    """Deprecated in matchbox, kept for old data dirs: a generic config that must be cloud-config or a script."""
    return await _generic(request, cloud=True)


async def _generic(request: web.Request, *, cloud: bool) -> web.Response:
    ctx = request.app[CONTEXT]
    chosen = select(ctx, request)
    if chosen.profile is None or chosen.group is None:
        return failed(ctx, request, chosen.mac, EventKind.GENERIC, chosen.reason)
    data = template_data(chosen.group, chosen.labels.labels, request.rel_url.raw_query_string)
    rendered = await asyncio.to_thread(generic_for, chosen.profile, ctx.store, data, cloud=cloud)  # as /ignition
    return _serve(ctx, request, chosen, EventKind.GENERIC, rendered)


def _serve(ctx, request: web.Request, chosen: Selection, kind: EventKind, result: Rendered | Refusal) -> web.Response:
    if isinstance(result, Refusal):  # the event is logged as a warning: the file, line and reason
        return failed(ctx, request, chosen.mac, kind, f"{chosen.reason}: {result.reason}")
    publish(ctx, request, chosen.mac, kind=kind, detail=f"{chosen.reason}: {result.detail}")
    return web.Response(body=result.body, content_type=result.content_type, charset=result.charset)


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
