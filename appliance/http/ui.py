"""GET /ui/: the live progress page. Its files are package data (appliance/ui/), served from a fixed list:
no path from the request reaches the file system, and nothing is fetched from elsewhere (the page works on
a provisioning network with no internet)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from appliance.http.common import not_found

FILES = {
    "": ("index.html", "text/html"),
    "index.html": ("index.html", "text/html"),
    "app.js": ("app.js", "text/javascript"),
    "style.css": ("style.css", "text/css"),
}
# The page runs only its own script and talks only to this server: whatever a machine's name or a
# client's labels contain, it cannot load or run anything else.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
}


@cache
def page_file(name: str) -> bytes:
    return resources.files("appliance.ui").joinpath(name).read_bytes()


async def ui_root(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently(location="/ui/")


async def ui_file(request: web.Request) -> web.Response:
    known = FILES.get(request.match_info.get("name", ""))
    if known is None:
        return not_found()
    name, content_type = known
    return web.Response(body=page_file(name), content_type=content_type, charset="utf-8", headers=HEADERS)
