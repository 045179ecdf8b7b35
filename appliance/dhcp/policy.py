"""bootd.yaml -> the values DHCP decisions read (built at start and on reload, never per packet)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType

from appliance.config import Config
from appliance.dhcp.modes import DhcpMode
from appliance.dhcp.authoritative import AddressPolicy, Reservation
from appliance.dhcp.pxe import Firmware, MachinePolicy, PxePolicy
from appliance.mac import MacAddress


@dataclass(frozen=True, slots=True, kw_only=True)
class DhcpPolicies:
    mode: DhcpMode
    pxe: PxePolicy
    addresses: AddressPolicy | None  # authoritative mode only


def available_firmware(*directories: Path) -> frozenset[Firmware]:
    return frozenset(f for f in Firmware if any((d / f.value).is_file() for d in directories))


def claimed_macs(config: Config, selectable: frozenset[MacAddress] | None) -> frozenset[MacAddress] | None:
    """The MACs PXE is answered for: those some group could select (`selectable`; None: any MAC could be)
    and the configured machines with a boot file of their own."""
    if selectable is None:
        return None
    return selectable | frozenset(m.mac for m in config.machines if m.boot_file)


def build_policies(config: Config, available: frozenset[Firmware], *, http_port: int,
                   selectable: frozenset[MacAddress] | None = None) -> DhcpPolicies:
    """`http_port`: where bootd's HTTP server really listens (the config may say 0: any free port).
    `selectable`: the MACs some group could select (None: any MAC could be); see pxe.py rule 8."""
    dhcp = config.dhcp
    pxe = PxePolicy(
        available=available,
        uefi=MappingProxyType(dict(dhcp.uefi_arch)),
        default_uefi=dhcp.uefi,
        ipxe_detection=dhcp.ipxe_detection,
        only_known=dhcp.only_known,
        machines=MappingProxyType({m.mac: MachinePolicy(ignore=m.ignore, boot_file=m.boot_file,
                                                        secure_boot=m.secure_boot) for m in config.machines}),
        secure_boot=dhcp.secure_boot,
        claimed=claimed_macs(config, selectable),
        http_port=http_port,
    )
    addresses = None
    if dhcp.mode is DhcpMode.AUTHORITATIVE and dhcp.subnet is not None and dhcp.range is not None:
        addresses = AddressPolicy(
            subnet=dhcp.subnet, first=dhcp.range[0], last=dhcp.range[1], router=dhcp.router,
            dns_servers=dhcp.dns_servers, domain=config.domain, lease_seconds=dhcp.lease_seconds,
            extra_options=dhcp.options,
            reservations=MappingProxyType({
                m.mac: Reservation(ip=m.ip, hostname=m.name) for m in config.machines
                if isinstance(m.ip, IPv4Address) and not m.ignore}),
            ignored=frozenset(m.mac for m in config.machines if m.ignore),
        )
        addresses = replace(addresses, relayed=tuple(
            replace(addresses, subnet=pool.subnet, first=pool.range[0], last=pool.range[1], router=pool.router,
                    dns_servers=dhcp.dns_servers if pool.dns_servers is None else pool.dns_servers)
            for pool in dhcp.relay_pools))
    return DhcpPolicies(mode=dhcp.mode, pxe=pxe, addresses=addresses)
