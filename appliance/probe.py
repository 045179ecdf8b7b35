"""`bootd probe -i IFACE`: who answers DHCP on this segment? One PXE DISCOVER, every answer listed.

It sends the DISCOVER a BIOS PXE ROM sends (option 93, `PXEClient`, a random MAC from the locally
administered range so no real machine's lease is touched) and lists each DHCP server (an address in
yiaddr) and proxy-DHCP server (no address, boot options) that answers within the timeout. scapy crafts
and sniffs here: this is a one-shot diagnostic, not a hot path.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeAnswer:
    source: str
    server_id: str
    kind: str  # "dhcp" (offers an address) or "proxy-dhcp" (boot options only)
    offered_ip: str | None
    next_server: str
    boot_file: str
    vendor_class: str

    def line(self) -> str:
        what = f"offers {self.offered_ip}" if self.offered_ip else "no address"
        boot = self.boot_file or "-"
        return (f"{self.kind:10s} server {self.server_id:15s} from {self.source:15s} {what:20s} "
                f"next-server {self.next_server:15s} boot {boot} {self.vendor_class}".rstrip())


def probe(interface: str, timeout: float = 3.0, arch: int = 0) -> list[ProbeAnswer]:
    from scapy.all import AsyncSniffer, conf, sendp  # noqa: PLC0415  (heavy; only this command needs it)
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    conf.verb = 0
    mac = bytes([0x02]) + os.urandom(5)  # locally administered, unicast
    xid = random.getrandbits(32)
    discover = (
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
        / BOOTP(op=1, chaddr=mac, xid=xid, flags=0x8000)
        / DHCP(options=[("message-type", "discover"), ("vendor_class_id", f"PXEClient:Arch:{arch:05d}:UNDI:002001"),
                        (93, arch.to_bytes(2, "big")), (94, b"\x01\x02\x01"), (97, b"\x00" + os.urandom(16)),
                        ("param_req_list", [1, 3, 6, 15, 43, 54, 60, 66, 67]), "end"])
    )
    # No BPF filter string: scapy would need tcpdump to compile one. The Python filter is enough for a probe.
    listening = threading.Event()
    sniffer = AsyncSniffer(iface=interface, store=True, started_callback=listening.set,
                           lfilter=lambda p: BOOTP in p and p[BOOTP].xid == xid and p[BOOTP].op == 2)
    sniffer.start()
    if not listening.wait(5):
        raise OSError(f"cannot capture on {interface}")
    sendp(discover, iface=interface)
    sniffer.join(timeout)
    results = sniffer.stop() if sniffer.running else sniffer.results
    answers = []
    for packet in results or []:
        bootp = packet[BOOTP]
        options = {o[0]: o[1] for o in packet[DHCP].options if isinstance(o, tuple)} if DHCP in packet else {}
        offered = bootp.yiaddr if bootp.yiaddr != "0.0.0.0" else None
        vendor = options.get("vendor_class_id", b"")
        boot_file = bootp.file.rstrip(b"\0").decode(errors="replace") or (
            options.get("boot-file-name", b"") or b"").rstrip(b"\0").decode(errors="replace")
        answers.append(ProbeAnswer(
            source=packet[IP].src, server_id=str(options.get("server_id", "?")),
            kind="dhcp" if offered else "proxy-dhcp", offered_ip=offered, next_server=bootp.siaddr,
            boot_file=boot_file, vendor_class=vendor.decode(errors="replace") if isinstance(vendor, bytes) else str(vendor),
        ))
    return answers
