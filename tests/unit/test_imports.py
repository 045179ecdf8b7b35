"""What `bootd run` loads to start: the heavy libraries only when the config uses them (start time and idle RSS,
issue 16; bench/startup.py measures both). grpc (the read-write API, the etcd store) costs about 0.4 s and 10 MB;
scapy is `bootd probe`'s; pyroute2 (5-6 MB) not at all (interface addresses and neighbours come from netlink
dumps of the standard library's, appliance/net.py); cryptography's x509 (7-8 MB) only at the API's first
call (appliance/api/service.py, caller_of); appliance.onboot only for `bootd appliance` (the parser reads its
defaults from appliance/onboot_defaults.py); the asset tracker and its fetchers only with assets.track."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def loaded_after(code: str, watched: set[str]) -> list[str]:
    """The modules of `watched` (packages or module names) that `code` leaves loaded, in a fresh interpreter."""
    probe = (f"import json, sys; {code}; watched = {sorted(watched)!r}; "
             "print(json.dumps(sorted(m for m in sys.modules if m in watched or m.split('.')[0] in watched)))")
    loaded = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert loaded.returncode == 0, loaded
    return json.loads(loaded.stdout)


def test_starting_without_api_or_etcd_imports_neither_grpc_nor_scapy():
    code = "from appliance import cli, daemon"
    assert loaded_after(code, {"grpc", "scapy", "google"}) == []


def test_starting_imports_neither_pyroute2_nor_cryptography_nor_onboot():
    # the parser is built as `bootd run` builds it; the interface addresses are read as _start_dns reads them
    code = ("import argparse, asyncio; from appliance import cli, daemon, net; "
            "cli._add_appliance_commands(argparse.ArgumentParser().add_subparsers()); "
            "asyncio.run(net.interface_addresses(('lo',)))")
    assert loaded_after(code, {"pyroute2", "cryptography", "appliance.onboot", "appliance.assets.track",
                               "appliance.assets.fetch"}) == []


def test_the_api_imports_cryptography_only_at_its_first_call():
    code = "from appliance.api import service"
    assert loaded_after(code, {"cryptography"}) == []


def test_interface_addresses_match_pyroute2s():
    """The netlink dump that replaced pyroute2 at start finds what pyroute2 finds, interface by interface."""
    import asyncio
    import ipaddress

    from pyroute2 import IPRoute

    from appliance import net

    with IPRoute() as ipr:
        expected = [(a["index"], ipaddress.ip_address(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")))
                    for a in ipr.get_addr()]
        names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
    assert sorted(net._netlink_addresses(), key=str) == sorted(expected, key=str)
    for index, name in names.items():
        wanted = [a for i, a in expected if i == index and not a.is_link_local and not a.is_loopback]
        got = asyncio.run(net.interface_addresses((name,)))
        assert sorted(got, key=str) == sorted(wanted, key=str) and [a.version for a in got] == sorted(a.version for a in got)


def test_an_unknown_interface_is_named():
    import asyncio

    from appliance import net

    with pytest.raises(OSError, match="no interface 'nosuch0'"):
        asyncio.run(net.interface_addresses(("nosuch0",)))


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a network namespace: root")
def test_neighbour_lookup_reads_the_kernels_table_without_pyroute2():
    """NeighbourTable (netlink dump of the standard library's) finds what `ip neigh` holds, IPv4 and IPv6,
    and nothing for an entry without a link-layer address; run in a namespace of its own."""
    name = f"bootd-test-neigh-{os.getpid()}"
    commands = [["ip", "netns", "add", name],
                ["ip", "-n", name, "link", "add", "n0", "type", "veth", "peer", "name", "n1"],
                ["ip", "-n", name, "link", "set", "n0", "up"],
                ["ip", "-n", name, "neigh", "add", "10.5.0.7", "dev", "n0", "lladdr", "52:54:00:aa:bb:cc", "nud", "permanent"],
                ["ip", "-n", name, "neigh", "add", "fd00::7", "dev", "n0", "lladdr", "52:54:00:aa:bb:cd", "nud", "permanent"],
                ["ip", "-n", name, "neigh", "add", "10.5.0.8", "dev", "n0", "nud", "noarp"]]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, timeout=30)
        code = ("import asyncio; from appliance.net import NeighbourTable; t = NeighbourTable(); "
                "print([str(asyncio.run(t.lookup(ip))) for ip in ('10.5.0.7', 'fd00::7', '10.5.0.8', '10.5.0.9', 'x')], "
                "t.failures, 'pyroute2' in __import__('sys').modules)")
        out = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", code], check=True, cwd=ROOT,
                             capture_output=True, text=True, timeout=60).stdout
        assert out.strip() == "['52:54:00:aa:bb:cc', '52:54:00:aa:bb:cd', 'None', 'None', 'None'] 0 False"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True, timeout=30)
