"""Telling a person that a machine's firmware refused the unsigned iPXE bootd sent it (Secure Boot).

DHCP cannot see whether a firmware enforces Secure Boot, and a firmware that refuses an image says nothing
on the network. What bootd does see: the iPXE binary was sent whole (TFTP, or HTTP for UEFI HTTP boot), and
the machine's next DHCP request comes from its firmware again (no `ipxe-script` answer: not from iPXE),
without iPXE ever having asked for bootd's script. iPXE asks DHCP as iPXE within a second or two of
starting, so that sequence means the binary did not start; enforced Secure Boot is the common reason (a
broken binary or a firmware bug are the others, which is why the words say "most likely").
This watches the event stream (a bus sink) and adds that reason to the binary's step of the machine's
progress, where the views and `bootd status` show failures.
"""

from __future__ import annotations

from appliance.events import Event, EventBus, EventKind
from appliance.mac import MacAddress

# the unsigned iPXE builds bootd hands to UEFI machines (BIOS has no Secure Boot)
UNSIGNED = ("ipxe.efi", "ipxe-i386.efi", "snp.efi", "snp-arm32.efi")
_SENT_PREFIXES = {EventKind.TFTP: "sent ", EventKind.FIRMWARE: "/firmware/"}


def sent_binary(event: Event) -> str | None:
    """The unsigned iPXE binary this event says was delivered whole, if any."""
    prefix = _SENT_PREFIXES.get(event.kind)
    if prefix is None or not event.ok or not event.detail.startswith(prefix):
        return None
    name = event.detail[len(prefix):].split(":")[0].split()[0]
    return name if name in UNSIGNED else None


def refusal_reason(binary: str) -> str:
    return (f"{binary} was sent but did not start: the machine's firmware asked for a boot again instead of "
            "iPXE. Most likely its Secure Boot is on and refused the unsigned iPXE; give the machine "
            "`secure_boot: true` in bootd.yaml (Debian's signed shim and GRUB; `bootd firmware fetch --signed`) "
            "or turn Secure Boot off in its firmware settings")


class RefusedBinaryWatch:
    def __init__(self, bus: EventBus, max_machines: int = 4096) -> None:
        self._bus = bus
        self._pending: dict[MacAddress, tuple[EventKind, str]] = {}  # MAC -> (the step, the binary) not yet run
        self._max = max_machines

    def see(self, event: Event) -> None:
        mac = event.mac
        if mac is None:
            return
        if (binary := sent_binary(event)) is not None:
            if len(self._pending) >= self._max:
                self._pending.clear()  # a bound, not a policy: the next DHCP of each is simply not judged
            self._pending[mac] = (event.kind, binary)
        elif event.kind is EventKind.BOOT_SCRIPT:
            self._pending.pop(mac, None)  # iPXE ran
        elif event.kind is EventKind.DHCP and "ipxe-script" not in event.detail and mac in self._pending:
            kind, binary = self._pending.pop(mac)
            self._bus.publish(Event(kind=kind, mac=mac, peer=None, ok=False, detail=refusal_reason(binary)))
