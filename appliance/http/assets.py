"""/assets/: files from the assets root with Range, HEAD, conditional GET and sendfile (aiohttp's FileResponse).

Confinement: the decoded path may not hold NUL (400), `..`, `.` or backslashes, and its real path (symlinks
resolved) must stay inside the assets root (404 otherwise), as Go's http.Dir confines matchbox's.
Directories are listed like Go's FileServer lists them (`<pre>` of links), or serve their index.html.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from appliance.events import EventKind
from appliance.http.common import CONTEXT, not_found, publish
from appliance.paths import OutsideRoot, confine

logger = logging.getLogger(__name__)


def resolve_asset(root: Path, tail: str) -> Path:
    """The file or directory `tail` names below `root`; raises OutsideRoot."""
    # `.` and empty segments name the same place (Go's path.Clean drops them too); `..` is refused below.
    name = "/".join(part for part in tail.split("/") if part not in ("", "."))
    return confine(root, name) if name else root


async def asset(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    tail = request.match_info.get("tail", "")
    if "\0" in tail:
        logger.warning("%s: refused an asset path with NUL: %r", request.remote, tail[:200])
        raise web.HTTPBadRequest(text="invalid path\n")
    root = ctx.config.http.assets_root
    try:
        path = resolve_asset(root, tail)
        is_dir = path.is_dir()
    except OutsideRoot as exc:
        logger.warning("%s: refused asset path %r: %s", request.remote, tail[:200], exc)
        return not_found()
    except OSError as exc:  # a name the file system refuses (too long): nothing is there to serve
        logger.warning("%s: refused asset path %r...: %s", request.remote, tail[:200], exc.strerror)
        return not_found()
    if is_dir:
        if tail and not tail.endswith("/"):
            raise web.HTTPMovedPermanently(location=request.path + "/")
        index = path / "index.html"
        if not index.is_file():
            return web.Response(text=directory_listing(path), content_type="text/html")
        path = index
    elif not path.is_file():
        # A profile naming an asset that is not there: the machine stops here; say so in its progress.
        mac = ctx.tracker.mac_for_ip(request.remote or "")
        name = "/".join(part for part in tail.split("/") if part not in ("", "."))
        publish(ctx, request, None, kind=ctx.tracker.asset_kind(mac, name), ok=False,
                detail=f"/assets/{name}: not found under {root}")
        return not_found()
    relative = str(path.relative_to(root)) if path.is_relative_to(root) else tail

    def sent(response: web.StreamResponse) -> None:
        kind = ctx.tracker.asset_kind(ctx.tracker.mac_for_ip(request.remote or ""), relative)
        detail = f"/assets/{relative} ({response.content_length} bytes, status {response.status})"
        publish(ctx, request, None, kind=kind, detail=detail)

    return TrackedFileResponse(path, sent)


class TrackedFileResponse(web.FileResponse):
    """A FileResponse (sendfile, Range, conditional GET) that reports a GET once the file has been sent.

    aiohttp prepares the response after the handler returns; preparing it in the handler would send twice."""

    def __init__(self, path: Path, on_sent: Callable[[web.StreamResponse], None]) -> None:
        super().__init__(path)
        self._on_sent = on_sent

    async def prepare(self, request: web.BaseRequest):
        writer = await super().prepare(request)
        if request.method == "GET" and self.status in (200, 206):
            self._on_sent(self)
        return writer


def directory_listing(path: Path) -> str:
    lines = ["<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n"]
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        name = entry.name + ("/" if entry.is_dir() else "")
        lines.append(f'<a href="{quote(name)}">{html.escape(name)}</a>\n')
    lines.append("</pre>\n")
    return "".join(lines)


async def firmware(request: web.Request) -> web.StreamResponse:
    """/firmware/<name>: the iPXE binaries, for UEFI HTTP boot (DHCP hands out this URL)."""
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    try:
        path = confine(ctx.config.firmware_dir, name)
        is_file = path.is_file()
    except OutsideRoot as exc:
        logger.warning("%s: refused firmware path %r: %s", request.remote, name[:200], exc)
        return not_found()
    except OSError as exc:  # a name the file system refuses (too long)
        logger.warning("%s: refused firmware path %r...: %s", request.remote, name[:200], exc.strerror)
        return not_found()
    if not is_file:
        # a boot_file URL naming a binary that is not there (DHCP never offers a missing one of its own):
        # the firmware stops here; say so in its progress
        publish(ctx, request, None, kind=EventKind.FIRMWARE, ok=False,
                detail=f"/firmware/{name} over HTTP: not found in {ctx.config.firmware_dir}")
        return not_found()
    return TrackedFileResponse(path, lambda response: publish(
        ctx, request, None, kind=EventKind.FIRMWARE,
        detail=f"/firmware/{name} over HTTP ({response.content_length} bytes)"))
