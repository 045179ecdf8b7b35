"""Authoritative DHCP with the DHCP clients Linux machines really run besides busybox udhcpc (test_dhcp.py):
ISC dhclient and dhcpcd, each in a client namespace of its own on one bridge, against a real bootd. Each gets
its lease with the pool's options (a reserved machine its address and name), gets the same address back
when it starts again with its saved lease (INIT-REBOOT: a REQUEST for the address it had), and its RELEASE
frees the address in bootd's lease file."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.test_dhcp import AUTHORITATIVE, start_bootd

pytestmark = pytest.mark.netns

RESERVED_MAC = "52:54:00:aa:00:31"
OTHER_MAC = "52:54:00:bb:00:31"
# The clients' hook: what the client was told, one file per interface and reason; for a new address it also
# configures it (as the clients' own scripts would), so that the RELEASE, sent by unicast, has a route.
HOOK = """#!/bin/sh
env | sort > "{dir}/$interface.$reason.env"
case "$reason" in BOUND|REBOOT) [ -n "$new_ip_address" ] && ip addr replace "$new_ip_address/24" dev "$interface" ;; esac
exit 0
"""


def told(directory: Path, interface: str, reason: str) -> dict[str, str]:
    path = directory / f"{interface}.{reason}.env"
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def wait_for(path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def leases_on_disk(state: Path) -> dict[str, str]:
    return {lease["mac"]: lease["ip"] for lease in json.loads((state / "leases.json").read_text())["leases"]}


def test_isc_dhclient_and_dhcpcd_get_leases_reservations_reboots_and_releases(bridged_netlab, tmp_path):
    lab = bridged_netlab
    reserved = lab.add_client(mac=RESERVED_MAC)
    other = lab.add_client(mac=OTHER_MAC)
    machines = f'  - {{name: node1, mac: "{RESERVED_MAC}", ip: 192.0.2.21, role: controller}}\n'
    hooks = tmp_path / "told"
    hooks.mkdir()
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK.format(dir=hooks))
    hook.chmod(0o755)
    dhclient = ["dhclient", "-4", "-sf", str(hook), "-lf", str(tmp_path / "dhclient.leases"),
                "-pf", str(tmp_path / "dhclient.pid"), reserved.ifname]
    # dhcpcd keeps its lease in /var/lib/dhcpcd/<interface>.lease: the lab's interface names are its own
    dhcpcd_lease = Path(f"/var/lib/dhcpcd/{other.ifname}.lease")
    dhcpcd = ["dhcpcd", "-4", "-B", "-f", "/dev/null", "-c", str(hook), "-L", "-A", "-t", "20",
              "-o", "domain_name", "-o", "domain_name_servers", "-o", "host_name", other.ifname]
    bootd = start_bootd(lab, tmp_path, AUTHORITATIVE, machines)
    try:
        # ISC dhclient, the reserved machine: its address and name, the pool's options
        result = lab.run(reserved.ns, [*dhclient[:2], "-1", *dhclient[2:]], timeout=60)
        bound = told(hooks, reserved.ifname, "BOUND")
        assert bound.get("new_ip_address") == "192.0.2.21", result.stderr
        assert bound["new_host_name"] == "node1" and bound["new_domain_name"] == "lab.test"
        assert bound["new_routers"] == "192.0.2.1" and bound["new_subnet_mask"] == "255.255.255.0"
        assert bound["new_domain_name_servers"] == "192.0.2.1" and bound["new_dhcp_lease_time"] == "3600"
        assert bound["new_dhcp_server_identifier"] == "192.0.2.1" and bound["new_interface_mtu"] == "1500"

        # dhcpcd, a machine bootd does not know: the first address of the range
        runner = lab.start(other.ns, dhcpcd)
        wait_for(hooks / f"{other.ifname}.BOUND.env")
        got = told(hooks, other.ifname, "BOUND")
        assert got.get("new_ip_address") == "192.0.2.100", got
        assert got["new_routers"] == "192.0.2.1" and got["new_dhcp_lease_time"] == "3600"
        assert got["new_domain_name"] == "lab.test" and got["new_domain_name_servers"] == "192.0.2.1"

        # both leases are on disk (each ACK left after its journal line did)
        assert bootd.stop() == 0
        assert leases_on_disk(tmp_path / "state") == {RESERVED_MAC: "192.0.2.21", OTHER_MAC: "192.0.2.100"}
        bootd = start_bootd(lab, tmp_path, AUTHORITATIVE, machines)

        # dhcpcd is told to release: its RELEASE frees 192.0.2.100
        lab.run(other.ns, ["dhcpcd", "-4", "-k", other.ifname], timeout=30)
        assert runner.wait(30) == 0
        # it starts again with no lease: an address again, from the range
        dhcpcd_lease.unlink(missing_ok=True)
        (hooks / f"{other.ifname}.BOUND.env").unlink()
        runner = lab.start(other.ns, dhcpcd)
        wait_for(hooks / f"{other.ifname}.BOUND.env")
        assert told(hooks, other.ifname, "BOUND").get("new_ip_address") == "192.0.2.100"
        lab.run(other.ns, ["dhcpcd", "-4", "-k", other.ifname], timeout=30)
        runner.wait(30)

        # dhclient starts again with its lease file: INIT-REBOOT, the same address, ACKed
        os.kill(int((tmp_path / "dhclient.pid").read_text()), signal.SIGTERM)  # the daemon -1 left
        result = lab.run(reserved.ns, [*dhclient[:2], "-1", *dhclient[2:]], timeout=60)
        assert told(hooks, reserved.ifname, "REBOOT").get("new_ip_address") == "192.0.2.21", result.stderr
        # and releases it
        result = lab.run(reserved.ns, [*dhclient[:2], "-r", *dhclient[2:]], timeout=60)
        assert result.returncode == 0, result.stderr
    finally:
        dhcpcd_lease.unlink(missing_ok=True)
        stopped = bootd.stop()
    assert stopped == 0
    assert leases_on_disk(tmp_path / "state") == {}, "both RELEASEs freed their addresses"
