"""The values of `dns.records` (A, AAAA, CNAME, PTR, TXT, MX, SRV): parsed once, the same way for the config
check and for the zone, so a value `bootd check` accepts is one the zone builds. Imports nothing of bootd's:
the config checks its records here without reaching into the zone."""

from __future__ import annotations

import ipaddress

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RD, SRV, TXT, A


def record_data(rtype: str, value: str, domain: str) -> tuple[int, RD]:
    """(QTYPE, dnslib rdata) of an extra record; ValueError (or TypeError, IndexError) for a bad value."""
    kind = rtype.upper()
    target = lambda text: text if text.endswith(".") else f"{text}.{domain}."  # noqa: E731
    # Addresses are parsed by ipaddress, as build_zone reads them for PTR records: dnslib alone accepted
    # `01.2.3.4`, which `bootd check` passed and the zone then refused at start.
    if kind == "A":
        return QTYPE.A, A(str(ipaddress.IPv4Address(value)))
    if kind == "AAAA":
        return QTYPE.AAAA, AAAA(str(ipaddress.IPv6Address(value)))
    if kind == "CNAME":
        return QTYPE.CNAME, CNAME(target(value))
    if kind == "PTR":
        return QTYPE.PTR, PTR(target(value))
    if kind == "TXT":
        return QTYPE.TXT, TXT([value[i:i + 255].encode() for i in range(0, max(len(value), 1), 255)])
    if kind == "MX":
        preference, host = value.split()
        return QTYPE.MX, MX(target(host), int(preference))
    if kind == "SRV":
        priority, weight, port, host = value.split()
        return QTYPE.SRV, SRV(int(priority), int(weight), int(port), target(host))
    raise ValueError(f"unsupported record type {rtype!r}")


def check_extra_record(rtype: str, value: str) -> str | None:
    """Why `value` is not a valid `rtype` record, or None."""
    try:
        record_data(rtype, value, "example.com")
    except (ValueError, TypeError, IndexError) as exc:
        return str(exc) or f"not a valid {rtype} value"
    return None
