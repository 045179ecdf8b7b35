"""The files bootd serves over TFTP to Debian's signed network GRUB (the Secure Boot chain: shim -> GRUB).

What GRUB asks for (seen from OVMF with Secure Boot enforced): Debian's grubnetx64.efi.signed is built with
the prefix /grub and without GRUB's http module (and a GRUB under Secure Boot loads no module from outside
its image), so everything after shim comes over TFTP, by absolute names (the arm64 GRUB of Debian's
installer has the prefix /debian-installer/arm64/grub and asks for the same files there):
  /grub/x86_64-efi/{command,fs,crypto,terminal}.lst   module lists (served empty: every module is built in)
  /grub/grub.cfg                                      bootd's bootstrap, below: names the machine
  /grub/machines/<MAC>                                bootd's /grub route (matchbox's) for that MAC
  /assets/<path>                                      the profile's kernel and initrd (the assets root)
Only these names are answered this way; every other absolute name stays refused (tftp/files.py).

A GRUB profile is written as matchbox's GRUB profiles are: kernel and initrd as paths on the boot server
(`/assets/vmlinuz`), args naming bootd as `${bootd}` (set here to bootd's HTTP address, for what the booted
system fetches) and the machine as GRUB's `${net_default_mac}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.events import BootConfigServed, EventKind, PeerPublisher
from appliance.http.boot import chosen_ids, claim_hint, render_grub
from appliance.http.common import choose
from appliance.mac import try_parse_mac
from appliance.store import DataDir, labels_from_query

logger = logging.getLogger(__name__)

GRUB_PREFIX = "/grub"
# the prefixes Debian's signed network GRUBs are built with: grub-efi-amd64-signed's, and the arm64 one the
# installer's netboot package ships (seen from AAVMF)
PREFIXES = (GRUB_PREFIX, "/debian-installer/arm64/grub")
MACHINES = f"{GRUB_PREFIX}/machines/"
ASSETS = "/assets/"
BOOTSTRAPS = frozenset(f"{prefix}/grub.cfg" for prefix in PREFIXES)
MODULE_LISTS = frozenset(f"{prefix}/{platform}/{name}" for prefix in PREFIXES for platform in ("x86_64-efi", "arm64-efi")
                         for name in ("command.lst", "fs.lst", "crypto.lst", "terminal.lst"))


def bootstrap(http_port: int) -> bytes:
    """/grub/grub.cfg: where GRUB's config is, and ${bootd} for the profile's args. GRUB's root is the TFTP
    server it was loaded from (`tftp,<address>`); its address is bootd's."""
    return (
        "# bootd: the machine's boot config is bootd's /grub (its profile), read over TFTP\n"
        "regexp --set=1:bootd_server '^tftp,(.+)$' \"$root\"\n"
        "if [ -z \"$bootd_server\" ]; then set bootd_server=\"$net_default_server\"; fi\n"
        f"set bootd=\"http://$bootd_server:{http_port}\"\n"
        "export bootd\n"
        "echo \"bootd: reading the boot config of $net_default_mac from $root\"\n"
        f"configfile \"{MACHINES}$net_default_mac\"\n"
    ).encode()


def nothing_config(why: str) -> bytes:
    """A config that says why there is nothing to boot and returns to the firmware (its next boot option)."""
    text = "".join(c if 32 <= ord(c) < 127 and c not in "\"$\\" else "?" for c in why)[:300]
    return f'echo "bootd: {text}"\nsleep 5\nexit 1\n'.encode()


class NetworkGrub:
    """`TftpFiles.generated`: the GRUB names above -> their content (None: not one of ours)."""

    def __init__(self, *, http_port: int, store: Callable[[], DataDir], publisher: PeerPublisher) -> None:
        self._bootstrap = bootstrap(http_port)
        self._store = store
        self._publisher = publisher

    def __call__(self, name: str) -> bytes | None:
        if name in BOOTSTRAPS:
            return self._bootstrap
        if name in MODULE_LISTS:
            return b""
        if name.startswith(MACHINES):
            return self._machine_config(name[len(MACHINES):])
        return None

    def _machine_config(self, text: str) -> bytes:
        mac = try_parse_mac(text)
        if mac is None:
            return nothing_config(f"{text[:40]!r} is not a MAC address")
        chosen = choose(self._store(), labels_from_query(f"mac={mac}"))
        boot = chosen.profile.boot if chosen.profile is not None else None
        where = f"{GRUB_PREFIX} over TFTP"
        if boot is None or not boot.kernel:
            why = chosen.reason if chosen.profile is None else f"{chosen.reason} has nothing to boot"
            hint = f"; {claim_hint(mac)}" if chosen.group is None else ""
            self._publisher.publish(None, mac, kind=EventKind.BOOT_CONFIG, ok=False, detail=f"{where}: {why}{hint}")
            return nothing_config(f"nothing to boot for {mac}: {why}")
        self._publisher.publish(None, mac, BootConfigServed, kind=EventKind.BOOT_CONFIG,
                                detail=f"{where}: {chosen.reason}", kernel=boot.kernel, initrds=boot.initrd,
                                **chosen_ids(chosen))
        return render_grub(boot).encode()


def tftp_event_kind(publisher: PeerPublisher, name: str, peer: str) -> EventKind:
    """A TFTP transfer's step: the machine's kernel or initrd when GRUB fetched its profile's assets."""
    if not name.startswith(ASSETS):
        return EventKind.TFTP
    tracker = publisher.tracker
    return tracker.asset_kind(tracker.mac_for_ip(peer), name[len(ASSETS):])
