"""Never hijack a machine: which machines bootd has nothing for, decided from the MAC alone (DHCP) and from
the labels (bootd's /bootd/ipxe), and the scripts that send such a machine on to its next boot device."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

import pytest

from appliance.config import load_config
from appliance.dhcp.authoritative import AddressPolicy, decide_dhcp
from appliance.dhcp.leases import LeaseTable
from appliance.dhcp.policy import build_policies
from appliance.dhcp.pxe import BootOffer, Firmware, Ignore, PxePolicy
from appliance.http.boot import (
    SCRIPT_LABELS, Verdict, decide_bootd_config, render_bootd_script, render_ipxe,
)
from appliance.http.common import Selection
from appliance.mac import MacAddress
from appliance.store import Group, NetBoot, Profile, RequestLabels, match_scope
from tests.unit.test_dhcp import IPXE_77, SERVER, boot, pxe

A = MacAddress("52:54:00:77:00:10")  # the MAC tests.unit.test_dhcp's packets carry
B = MacAddress("52:54:00:77:00:11")


def group(gid: str, **selector: str) -> Group:
    return Group(id=gid, profile="p", selector=MappingProxyType(selector))


# --- DHCP: could any group ever select this MAC? ---------------------------------------------------------

@pytest.mark.parametrize("groups, macs, any_mac", [
    pytest.param([], set(), False, id="no-groups"),
    pytest.param([group("a", mac=A)], {A}, False, id="mac-groups-only"),
    pytest.param([group("a", mac=A), group("b", mac=B, hostname="x")], {A, B}, False, id="mac-and-more"),
    pytest.param([group("a", mac=A), group("default")], {A}, True, id="default-group"),
    pytest.param([group("u", uuid="1234")], set(), True, id="uuid-selector-any-mac"),
    pytest.param([group("i", os="installed", role="worker")], set(), False,
                 id="selector-on-a-label-the-script-never-sends"),
    pytest.param([group("e", os="")], set(), True, id="empty-value-matches-an-absent-label"),
    pytest.param([group("u", MAC=A)], set(), False, id="MAC-key-the-script-never-sends"),
])
def test_match_scope(groups, macs, any_mac):
    scope = match_scope(groups, SCRIPT_LABELS)
    assert (set(scope.macs), scope.any_mac) == (macs, any_mac)
    assert scope.could_match(A) == (any_mac or A in macs)


def test_script_sends_exactly_the_labels_the_scope_assumes():
    script = render_bootd_script("10.77.0.1:8080")
    query = re.search(r"/bootd/ipxe\?(\S+)", script).group(1)
    assert tuple(pair.split("=")[0] for pair in query.split("&")) == SCRIPT_LABELS


CLAIMS_NOTHING = PxePolicy(available=frozenset(Firmware), http_port=8080, claimed=frozenset())
CLAIMS_B = PxePolicy(available=frozenset(Firmware), http_port=8080, claimed=frozenset({B}))
CLAIMS_A = PxePolicy(available=frozenset(Firmware), http_port=8080, claimed=frozenset({A}))
CLAIMS_ANY = PxePolicy(available=frozenset(Firmware), http_port=8080, claimed=None)


@pytest.mark.parametrize("p, policy, answered", [
    pytest.param(pxe(0), CLAIMS_NOTHING, False, id="bios-no-groups"),
    pytest.param(pxe(7), CLAIMS_B, False, id="uefi-another-machines-group"),
    pytest.param(pxe(0, 1, IPXE_77), CLAIMS_B, False, id="ipxe-another-machines-group"),
    pytest.param(pxe(0), CLAIMS_A, True, id="bios-its-group"),
    pytest.param(pxe(0, 1, IPXE_77), CLAIMS_ANY, True, id="ipxe-default-group"),
])
def test_proxy_answers_only_machines_a_group_could_select(p, policy, answered):
    decision = boot(p, policy)
    if answered:
        assert isinstance(decision, BootOffer)
    else:
        assert isinstance(decision, Ignore) and decision.reason == "no-profile" and decision.mac == A
        assert f'- {{name: NAME, mac: "{A}", profile: PROFILE}} (or' in decision.detail  # how to claim it


def test_authoritative_gives_an_unclaimed_pxe_client_its_address_but_no_boot_file():
    addresses = AddressPolicy(subnet=IPv4Network("10.77.0.0/24"), first=IPv4Address("10.77.0.100"),
                              last=IPv4Address("10.77.0.110"))
    answer = decide_dhcp(pxe(0), LeaseTable(), addresses, CLAIMS_NOTHING, SERVER, 1000.0)
    assert answer.ip == IPv4Address("10.77.0.100") and answer.reply.file == b""
    assert isinstance(answer.boot, Ignore) and answer.boot.reason == "no-profile"
    claimed = decide_dhcp(pxe(0), LeaseTable(), addresses, CLAIMS_A, SERVER, 1000.0)
    assert claimed.reply.file == b"undionly.kpxe"


def test_configured_boot_file_claims_its_machine(tmp_path):
    (tmp_path / "bootd.yaml").write_text(
        "dhcp: {mode: proxy}\nmachines:\n"
        f'  - {{name: odd, mac: "{A}", boot_file: special.efi}}\n'
        f'  - {{name: plain, mac: "{B}"}}\n')
    config = load_config(tmp_path / "bootd.yaml")
    policies = build_policies(config, frozenset(Firmware), http_port=8080, selectable=frozenset())
    assert policies.pxe.claimed == frozenset({A})
    assert build_policies(config, frozenset(Firmware), http_port=8080, selectable=None).pxe.claimed is None


# --- HTTP: what /bootd/ipxe tells bootd's script ------------------------------------------------------

KERNEL = NetBoot(kernel="/assets/vmlinuz", initrd=("/assets/initrd",), args=("console=ttyS0",))


def selection(group: Group | None, profile: Profile | None, mac: str | None = A, reason: str = "why") -> Selection:
    return Selection(RequestLabels({"mac": mac} if mac else {}), mac, group, profile, reason)


@pytest.mark.parametrize("chosen, verdict", [
    pytest.param(selection(None, None, reason="no group matches labels {}"), Verdict.NOTHING, id="no-group"),
    pytest.param(selection(group("g"), None, reason="group 'g' (groups/g.json): profile 'p' not found"),
                 Verdict.BROKEN, id="missing-profile"),
    pytest.param(selection(group("g"), Profile(id="p")), Verdict.NOTHING, id="profile-without-boot"),
    pytest.param(selection(group("g"), Profile(id="p", boot=NetBoot(kernel=""))), Verdict.NOTHING, id="empty-kernel"),
    pytest.param(selection(group("g"), Profile(id="p", boot=KERNEL)), Verdict.BOOT, id="boot"),
])
def test_bootd_config_verdicts(chosen, verdict):
    answer = decide_bootd_config(chosen, pause_seconds=5)
    assert answer.verdict is verdict
    lines = answer.script.splitlines()
    assert lines[0] == "#!ipxe"
    if verdict is Verdict.BOOT:
        assert answer.script == render_ipxe(KERNEL)  # exactly what /ipxe gives
    elif verdict is Verdict.NOTHING:
        # says why, pauses, and returns status 0: no exit, no chain, nothing that could fail or loop
        assert lines[1].startswith(f"echo bootd: nothing to boot for {A}: ")
        assert lines[-1] == "sleep 5 ||" and not any(l.split()[0] in ("exit", "chain", "goto") for l in lines[1:])
        assert "no profile for" in answer.detail and "next boot device" in answer.detail
    else:
        assert lines[-1] == "exit 1"  # fails, so bootd's script retries
        assert "profile 'p' not found" in answer.script


def test_unclaimed_detail_says_what_to_add():
    answer = decide_bootd_config(selection(None, None))
    assert f'add under machines: in bootd.yaml: - {{name: NAME, mac: "{A}", profile: PROFILE}}' in answer.detail
    assert f'mac: "{A}"' in answer.script


@pytest.mark.parametrize("hostile", ["x\nchain http://evil/", "${net0/ip}", "a || reboot", "a && b", "a ; b", "# c"])
def test_echoed_text_cannot_become_script(hostile):
    answer = decide_bootd_config(selection(group("g"), None, reason=hostile))
    lines = answer.script.splitlines()
    assert len(lines) == 3 and lines[2] == "exit 1"
    for token in ("${", "||", "&&", ";", "#", "\n"):
        assert token not in lines[1]


def test_bootd_script_exits_when_the_chain_comes_back_and_retries_when_it_fails():
    commands = [l for l in render_bootd_script("10.77.0.1:8080").splitlines() if l and not l.startswith("#")]
    chain = next(i for i, l in enumerate(commands) if l.startswith("chain "))
    assert commands[chain].endswith("|| goto retry")
    assert commands[chain + 1] == "exit 1"  # nothing for this machine: leave iPXE, failure status for UEFI
    assert commands[chain + 2] == ":retry" and commands[-1] == "goto chain"
