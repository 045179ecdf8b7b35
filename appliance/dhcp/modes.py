"""The DHCP service's policy choices, owned by DHCP: bootd.yaml names them (config.py parses into these) and
the decisions in pxe.py and policy.py read them. Imports nothing of bootd's."""

from __future__ import annotations

from enum import StrEnum


class DhcpMode(StrEnum):
    OFF = "off"
    PROXY = "proxy"  # beside the site's DHCP server: boot options only
    AUTHORITATIVE = "authoritative"  # the only DHCP server: addresses too


class IpxeDetection(StrEnum):
    ANY = "any"  # option 77 `iPXE` or option 175: every iPXE gets the HTTP script (no TFTP round at all)
    # only option 77 `iPXE`, as dnsmasq's `dhcp-userclass=set:ipxe,iPXE` recipes do: an iPXE ROM that sends
    # another user class is chained to bootd's iPXE over TFTP (an old NIC ROM replaced by a current build)
    USER_CLASS = "user-class"


class UefiStrategy(StrEnum):
    BINL = "binl"  # no option 43 on 67; the client asks again on 4011 (dnsmasq, pixiecore)
    DIRECT = "direct"  # option 43 {6: 0x08}: boot the file straight away (smee)
