"""Boot scripts: matchbox's /boot.ipxe, /ipxe and /grub byte for byte, and bootd's own /bootd.ipxe."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from importlib import resources

import jinja2
from aiohttp import web

from appliance.events import BootConfigServed, EventKind
from appliance.http.common import CONTEXT, failed, label_mac, publish, request_labels, select, text_response
from appliance.store import NetBoot

# matchbox's ipxeBootstrap: the chain URL is relative to where the script came from.
BOOT_IPXE = (
    "#!ipxe\n"
    "chain ipxe?uuid=${uuid}&mac=${mac:hexhyp}&domain=${domain}&hostname=${hostname}&serial=${serial}"
    "&arch=${buildarch:uristring}\n"
)
RETRY_SECONDS = 5


def render_ipxe(boot: NetBoot) -> str:
    """matchbox's ipxeTemplate: one space before each arg, one `initrd` line per initrd, no escaping."""
    args = "".join(f" {arg}" for arg in boot.args)
    initrds = "".join(f"\ninitrd {initrd}" for initrd in boot.initrd)
    return f"#!ipxe\nkernel {boot.kernel}{args}{initrds}\nboot\n"


def render_grub(boot: NetBoot) -> str:
    """matchbox's grubTemplate: kernel quoted, args not, each initrd quoted after two spaces."""
    args = "".join(f" {arg}" for arg in boot.args)
    initrds = "".join(f' "{initrd}"' for initrd in boot.initrd)
    entries = []
    for title, linux, initrd in (("CoreOS (EFI)", "linuxefi", "initrdefi"), ("CoreOS (BIOS)", "linux", "initrd")):
        entries.append(
            f'menuentry "{title}" {{\n'
            f'echo "Loading kernel"\n'
            f'{linux} "{boot.kernel}"{args}\n'
            f'echo "Loading initrd"\n'
            f"{initrd} {initrds}\n"
            "}\n"
        )
    return "default=0\nfallback=1\ntimeout=1\n" + "".join(entries)


_JINJA = jinja2.Environment(
    loader=jinja2.FunctionLoader(lambda name: resources.files("appliance.templates").joinpath(name).read_text()),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


@lru_cache(maxsize=64)
def render_bootd_script(server: str) -> str:
    """bootd's iPXE script for a server reached at `server` (host:port)."""
    return _JINJA.get_template("bootd.ipxe.j2").render(server=server, retry_seconds=RETRY_SECONDS)


def server_address(request: web.Request) -> str:
    """host:port of the socket the request came in on: the address the client can reach bootd at."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return request.host
    host, port = sockname[0], sockname[1]
    if ipaddress.ip_address(host.split("%")[0]).version == 6:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


async def boot_ipxe(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    publish(ctx, request, label_mac(request_labels(request)), kind=EventKind.BOOT_SCRIPT, detail=request.path)
    return text_response(BOOT_IPXE)


async def bootd_ipxe(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    publish(ctx, request, label_mac(request_labels(request)), kind=EventKind.BOOT_SCRIPT, detail=request.path)
    return text_response(render_bootd_script(server_address(request)))


async def ipxe(request: web.Request) -> web.Response:
    return _boot_config(request, render_ipxe)


async def grub(request: web.Request) -> web.Response:
    return _boot_config(request, render_grub)


def _boot_config(request: web.Request, render) -> web.Response:
    ctx = request.app[CONTEXT]
    chosen = select(ctx, request)
    mac = chosen.mac
    if chosen.profile is None:
        return failed(ctx, request, mac, EventKind.BOOT_CONFIG, f"{request.path}: {chosen.reason}")
    boot = chosen.profile.boot
    if boot is None:
        return failed(ctx, request, mac, EventKind.BOOT_CONFIG, f"{request.path}: {chosen.reason}: profile has no boot")
    body = render(boot)
    publish(ctx, request, mac, BootConfigServed, kind=EventKind.BOOT_CONFIG, detail=f"{request.path}: {chosen.reason}",
            kernel=boot.kernel, initrds=boot.initrd)
    return text_response(body)
