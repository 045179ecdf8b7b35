"""Boot scripts: matchbox's /boot.ipxe, /ipxe and /grub byte for byte, and bootd's own /bootd.ipxe and
/bootd/ipxe.

Never hijack a machine: bootd's script (/bootd.ipxe) chains to /bootd/ipxe, which tells three answers
apart where matchbox's /ipxe has only "a script" or "404" (and a 404 would make bootd's script retry
forever, so a machine bootd has nothing for would never reach its own disk):
- boot: the machine's profile, byte for byte what /ipxe gives;
- nothing: no group selects the machine, or its profile has nothing to boot. A script that prints why and
  how to claim the machine, pauses so a person at the console can read it, and returns; bootd's script
  then exits iPXE with a failure status and the firmware tries its next boot device;
- broken: a group selects it but its profile is missing or invalid. The operator claimed this machine,
  so a script prints the problem and fails, and bootd's script retries until the data dir is fixed.
Only "bootd unreachable" (and broken) makes the script retry; "nothing for you" never does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from importlib import resources

import jinja2
from aiohttp import web

from appliance.events import BootConfigServed, EventKind
from appliance.http.common import (
    CONTEXT, Selection, failed, label_mac, publish, request_labels, select, select_choice, text_response,
)
from appliance.store import NetBoot

# matchbox's ipxeBootstrap: the chain URL is relative to where the script came from.
BOOT_IPXE = (
    "#!ipxe\n"
    "chain ipxe?uuid=${uuid}&mac=${mac:hexhyp}&domain=${domain}&hostname=${hostname}&serial=${serial}"
    "&arch=${buildarch:uristring}\n"
)
RETRY_SECONDS = 5
# bootd's route for the boot configuration, and the label keys bootd's script sends it: no other key ever
# reaches a group's selector from a client bootd's DHCP booted (DHCP's could-match rule relies on this).
BOOTD_CONFIG_PATH = "/bootd/ipxe"
SCRIPT_LABELS = ("uuid", "mac", "domain", "hostname", "serial", "arch")
# Seconds the "nothing for this machine" message stays on the console before the firmware moves on.
NOTHING_PAUSE_SECONDS = 5


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
    return _JINJA.get_template("bootd.ipxe.j2").render(server=server, retry_seconds=RETRY_SECONDS,
                                                       config_path=BOOTD_CONFIG_PATH)


class Verdict(StrEnum):
    BOOT = "boot"  # the profile's kernel, initrd and args
    NOTHING = "nothing"  # bootd has nothing for this machine: exit to the next boot device
    BROKEN = "broken"  # claimed, but its profile is missing or invalid: fail, and bootd's script retries


@dataclass(frozen=True, slots=True)
class BootdAnswer:
    """What /bootd/ipxe answers (always 200: the script's own outcome tells bootd's script what to do)."""

    verdict: Verdict
    script: str
    detail: str  # for the machine's progress and the log


def claim_hint(mac: str | None) -> str:
    """What to add to bootd.yaml so bootd boots this machine."""
    quoted = f'"{mac}"' if mac else "<its MAC>"
    return (f"to claim it, add under machines: in bootd.yaml: - {{name: NAME, mac: {quoted}, profile: PROFILE}}"
            " (or a group in the data dir's groups/ that selects it)")


def decide_bootd_config(chosen: Selection, *, pause_seconds: int = NOTHING_PAUSE_SECONDS) -> BootdAnswer:
    """The boot configuration bootd's script gets for a selection (pure)."""
    who = chosen.mac or "this machine"
    if chosen.group is None:
        hint = claim_hint(chosen.mac)
        detail = f"no profile for {who}: no group selects it; told to exit to its next boot device; {hint}"
        return BootdAnswer(Verdict.NOTHING, _nothing_script(who, "no group selects it", hint, pause_seconds), detail)
    if chosen.profile is None:
        return BootdAnswer(Verdict.BROKEN, _broken_script(who, chosen.reason), chosen.reason)
    boot = chosen.profile.boot
    if boot is None or not boot.kernel:
        why = f"{chosen.reason} has nothing to boot (no boot.kernel)"
        hint = f"to netboot it, give profile {chosen.profile.id!r} a boot section"
        detail = f"no profile for {who} to boot: {why}; told to exit to its next boot device; {hint}"
        return BootdAnswer(Verdict.NOTHING, _nothing_script(who, why, hint, pause_seconds), detail)
    return BootdAnswer(Verdict.BOOT, render_ipxe(boot), chosen.reason)


def _nothing_script(who: str, why: str, hint: str, pause_seconds: int) -> str:
    # Returns (status 0) to bootd's script, which then exits iPXE: see bootd.ipxe.j2.
    return ("#!ipxe\n"
            f"echo bootd: nothing to boot for {_script_text(who)}: {_script_text(why)}\n"
            f"echo bootd: {_script_text(hint)}\n"
            f"echo bootd: leaving network boot in {pause_seconds} s: the firmware tries its next boot device\n"
            f"sleep {pause_seconds} ||\n")


def _broken_script(who: str, reason: str) -> str:
    # Fails, so bootd's script's chain fails and it retries (after a pause and a DHCP renewal).
    return ("#!ipxe\n"
            f"echo bootd: cannot boot {_script_text(who)}: {_script_text(reason)}\n"
            "exit 1\n")


def _script_text(text: str) -> str:
    """`text` made safe as the words of an iPXE `echo`: printable ASCII only, and nothing iPXE reads as a
    setting (`${`), a command separator (`||`, `&&`, `;`) or a comment (`#`). Names come from files an
    operator wrote and from what the client sent, so they are never trusted as script."""
    out = "".join(c if 32 <= ord(c) < 127 and c not in "$|&;#" else "?" for c in text)
    return out[:300]


def server_address(request: web.Request) -> str:
    """host:port of the socket the request came in on: the address the client can reach bootd at."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return request.host
    host, port = sockname[0], sockname[1]
    if ipaddress.ip_address(host.split("%")[0]).version == 6:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def chosen_ids(chosen: Selection) -> dict[str, str | None]:
    """The group and profile ids of a boot config's event (the views show them)."""
    return {"group": chosen.group.id if chosen.group else None, "profile": chosen.profile.id if chosen.profile else None}


async def boot_ipxe(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    publish(ctx, request, label_mac(request_labels(request)), kind=EventKind.BOOT_SCRIPT, detail=request.path)
    return text_response(BOOT_IPXE)


async def bootd_ipxe(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    publish(ctx, request, label_mac(request_labels(request)), kind=EventKind.BOOT_SCRIPT, detail=request.path)
    return text_response(render_bootd_script(server_address(request)))


async def bootd_config(request: web.Request) -> web.Response:
    """GET /bootd/ipxe: what bootd's script chains to (see the module docstring)."""
    ctx = request.app[CONTEXT]
    chosen = select(ctx, request)
    answer = decide_bootd_config(chosen)
    detail = f"{request.path}: {answer.detail}"
    if answer.verdict is Verdict.BOOT:
        boot = chosen.profile.boot if chosen.profile else None
        assert boot is not None
        publish(ctx, request, chosen.mac, BootConfigServed, kind=EventKind.BOOT_CONFIG, detail=detail,
                kernel=boot.kernel, initrds=boot.initrd, **chosen_ids(chosen))
    else:
        publish(ctx, request, chosen.mac, kind=EventKind.BOOT_CONFIG, detail=detail, ok=False)
    return text_response(answer.script)


async def ipxe(request: web.Request) -> web.Response:
    return _boot_config(request, render_ipxe)


async def grub(request: web.Request) -> web.Response:
    return _boot_config(request, render_grub)


def _boot_config(request: web.Request, render) -> web.Response:
    ctx = request.app[CONTEXT]
    choice = select_choice(ctx, request)
    chosen = choice.selection
    mac = chosen.mac
    if chosen.profile is None:
        return failed(ctx, request, mac, EventKind.BOOT_CONFIG, f"{request.path}: {chosen.reason}")
    boot = chosen.profile.boot
    if boot is None:
        return failed(ctx, request, mac, EventKind.BOOT_CONFIG, f"{request.path}: {chosen.reason}: profile has no boot")
    body = choice.body(render, boot)  # rendered once per choice: the script depends on the profile alone
    publish(ctx, request, mac, BootConfigServed, kind=EventKind.BOOT_CONFIG, detail=f"{request.path}: {chosen.reason}",
            kernel=boot.kernel, initrds=boot.initrd, **chosen_ids(chosen))
    return text_response(body)
