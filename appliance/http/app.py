"""The aiohttp application: matchbox's read-only routes plus bootd's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from appliance.http import assets, boot, configs, machines, stream, ui
from appliance.http.common import CONTEXT, HttpContext, not_found, text_response

if TYPE_CHECKING:
    from appliance.metrics import Metrics

__all__ = ["HttpContext", "make_app"]


async def home(request: web.Request) -> web.Response:
    # matchbox's homeHandler: the body its liveness probes have always seen.
    return text_response("matchbox\n")


async def fallback(request: web.Request) -> web.Response:
    return not_found()


# What a machine's boot config is chosen and rendered from: with the etcd store these wait for the latest edit.
FRESH_PATHS = frozenset({"/ipxe", "/grub", "/ignition", "/metadata", "/generic", "/cloud"})


@web.middleware
async def fresh_store(request: web.Request, handler):
    """store.backend etcd: an edit acknowledged by any replica before this request is served by it (one
    linearizable revision read, then the watch caught up; bounded, and from the copy when etcd is lost)."""
    if request.path in FRESH_PATHS:
        await request.app[CONTEXT].store.fresh()  # type: ignore[attr-defined] - EtcdStore's
    return await handler(request)


async def assets_root(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently(location="/assets/")


def make_app(context: HttpContext, metrics: Metrics | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[CONTEXT] = context
    app[stream.STREAMS] = stream.StreamSlots()
    app[stream.ENCODER] = stream.Encoder(context)
    app.on_shutdown.append(stream.close_streams)
    if getattr(context.store, "fresh", None) is not None:  # the etcd store (a reload keeps the backend)
        app.middlewares.append(fresh_store)
    get = app.router.add_get
    get("/", home)
    get("/boot.ipxe", boot.boot_ipxe)
    get("/boot.ipxe.0", boot.boot_ipxe)  # dnsmasq's pxe-service appends .0 to the boot file name
    get("/bootd.ipxe", boot.bootd_ipxe)
    get(boot.BOOTD_CONFIG_PATH, boot.bootd_config)
    get("/ipxe", boot.ipxe)
    get("/grub", boot.grub)
    get("/ignition", configs.ignition)
    get("/metadata", configs.metadata)
    get("/generic", configs.generic)
    get("/cloud", configs.cloud)
    get("/assets", assets_root)
    get("/assets/{tail:.*}", assets.asset)
    get("/api/v1/machines", machines.list_machines)
    get("/api/v1/machines/{mac}", machines.get_machine)
    get("/api/v1/stats", machines.stats)
    get("/api/v1/events", stream.events)
    get("/ui", ui.ui_root)
    get("/ui/{name:[^/]*}", ui.ui_file)
    app.router.add_post("/api/v1/machines/{mac}/report", machines.report)
    get("/firmware/{name}", assets.firmware)
    if metrics is not None:  # every request counted by its route's pattern
        app.middlewares.append(metrics.middleware)
        app.on_startup.append(metrics.on_startup)
        if context.config.metrics.port is None:  # else only on a listener of its own (the daemon's)
            get("/metrics", metrics.scrape)
    get("/{tail:.*}", fallback)
    return app
