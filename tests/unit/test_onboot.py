"""The appliance's boot-time decisions (appliance/onboot.py), table by table: which NIC is "the first",
static address or DHCP, the turnkey config (accepted by the config loader), what a BOOTD config leaves out
and what the active config fills in, where a startup problem is in the file, the report, the banner, and
capability masks as names."""

import ipaddress
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from appliance.config import DhcpMode, parse_config
from appliance.onboot import AppliancePaths, NetworkPlan, Override, Report, apply_overrides, capability_names, \
    decide_overrides, ethernet_nics, journal_entry, journal_for_bootd, locate_problem, parse_network_line, parse_proc_status, parse_report, \
    plan_network, read_nics, render_banner, render_network_file, turnkey_config_text

RUNNING_LINE = re.compile(r"^bootd: running as user (\S+) \(uid (\d+)\), pid (\d+), capabilities (\S+), rss (\d+) MiB$")


def _config(tmp_path: Path, text: str):
    return parse_config(text, tmp_path / "bootd.yaml")


# --- the first NIC ---------------------------------------------------------------------------------------

def _fake_net(root: Path, entries: dict[str, dict]) -> Path:
    """A /sys/class/net look-alike: `type`, and `device`, `bridge`, `wireless` where given."""
    for name, facts in entries.items():
        entry = root / name
        entry.mkdir(parents=True)
        if "type" in facts:
            (entry / "type").write_text(f"{facts['type']}\n")
        for marker in ("device", "bridge", "wireless"):
            if facts.get(marker):
                (entry / marker).mkdir()
    return root


PHYSICAL = {"type": 1, "device": True}


@pytest.mark.parametrize("entries, expected", [
    pytest.param({"lo": {"type": 772}, "eth0": PHYSICAL}, ["eth0"], id="loopback-skipped"),
    pytest.param({"br0": {"type": 1, "bridge": True}, "enp0s3": PHYSICAL}, ["enp0s3"], id="bridge-skipped"),
    pytest.param({"veth1": {"type": 1}, "tap0": {"type": 1}, "enp1s0": PHYSICAL}, ["enp1s0"],
                 id="virtual-skipped: no device link"),
    pytest.param({"wlan0": {"type": 1, "device": True, "wireless": True}, "eth1": PHYSICAL}, ["eth1"],
                 id="wifi-skipped"),
    pytest.param({"ib0": {"type": 32, "device": True}, "eth3": PHYSICAL}, ["eth3"], id="not-ethernet-skipped"),
    pytest.param({"eth10": PHYSICAL, "eth2": PHYSICAL, "enp0s3": PHYSICAL, "enp10s0": PHYSICAL},
                 ["enp0s3", "enp10s0", "eth2", "eth10"], id="name-order-numbers-as-numbers"),
    pytest.param({"eth0": {"device": True}}, [], id="no-type-file"),
    pytest.param({"lo": {"type": 772}}, [], id="none"),
])
def test_ethernet_nics_from_sys_class_net(tmp_path, entries, expected):
    assert ethernet_nics(read_nics(_fake_net(tmp_path / "net", entries))) == expected


def test_missing_sys_class_net_is_no_nics(tmp_path):
    assert ethernet_nics(read_nics(tmp_path / "absent")) == []


# --- static address or DHCP ------------------------------------------------------------------------------

AUTHORITATIVE = """
listen: {address: 10.77.0.1}
dhcp: {mode: authoritative, subnet: 10.77.0.0/24, range: [10.77.0.100, 10.77.0.199], router: %s}
"""


@pytest.mark.parametrize("text, nics, line, warning", [
    pytest.param("dhcp: {mode: proxy}", ["eth0", "eth1"], "eth0 dhcp", None, id="proxy: DHCP on the first NIC"),
    pytest.param("{}", ["enp0s3"], "enp0s3 dhcp", None, id="nothing-pinned"),
    pytest.param(AUTHORITATIVE % "10.77.0.1", ["eth0"], "eth0 static 10.77.0.1/24", None,
                 id="authoritative: static, the router is bootd itself"),
    pytest.param(AUTHORITATIVE % "10.77.0.254", ["eth0"], "eth0 static 10.77.0.1/24 gateway 10.77.0.254", None,
                 id="authoritative: static with a gateway"),
    pytest.param("listen: {interfaces: [eth1], address: 10.77.0.1}\n"
                 "dhcp: {mode: authoritative, subnet: 10.77.0.0/24, range: [10.77.0.100, 10.77.0.199]}",
                 ["eth0", "eth1"], "eth1 static 10.77.0.1/24", None, id="pinned-interface"),
    pytest.param("listen: {address: 192.0.2.5}\n"
                 "dhcp: {mode: authoritative, subnet: 10.77.0.0/24, range: [10.77.0.100, 10.77.0.199]}",
                 ["eth0"], "eth0 dhcp", "not inside dhcp.subnet", id="address-outside-subnet: a relay setup, DHCP"),
    pytest.param("listen: {address: 192.0.2.5}\ndhcp: {mode: proxy}", ["eth0"], "eth0 dhcp",
                 "reserve 192.0.2.5", id="proxy-with-pinned-address: DHCP, reserve it"),
    pytest.param("dhcp: {mode: authoritative, subnet: 10.77.0.0/24, range: [10.77.0.100, 10.77.0.199]}",
                 ["eth0"], "eth0 dhcp", "without listen.address", id="authoritative-without-address"),
    pytest.param("listen: {interfaces: [eth9]}", ["eth0"], "eth9 dhcp", "eth9 is not an Ethernet NIC",
                 id="pinned-interface-missing"),
    pytest.param("listen: {address: 'fd00::1'}\ndhcp: {mode: proxy}", ["eth0"], "eth0 dhcp", "reserve fd00::1",
                 id="ipv6-address: DHCP"),
])
def test_plan_network(tmp_path, text, nics, line, warning):
    plan, warnings = plan_network(_config(tmp_path, text), nics)
    assert plan is not None and plan.line() == line
    assert parse_network_line(plan.line()) == NetworkPlan(interface=plan.interface, address=plan.address,
                                                          gateway=plan.gateway)
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0]


def test_no_config_is_dhcp_on_the_first_nic_and_no_nic_is_no_network(tmp_path):
    plan, warnings = plan_network(None, ["eth0"])
    assert plan is not None and plan.line() == "eth0 dhcp" and warnings == []
    plan, warnings = plan_network(_config(tmp_path, "dhcp: {mode: proxy}"), [])
    assert plan is None and "no Ethernet NIC" in warnings[0]


def test_network_file_dhcp_and_static():
    dhcp = render_network_file(NetworkPlan(interface="enp0s3", why="by DHCP"), "/x/bootd.yaml")
    assert "[Match]\nName=enp0s3\n" in dhcp and "DHCP=ipv4" in dhcp and "ClientIdentifier=mac" in dhcp
    assert "Address=" not in dhcp
    static = render_network_file(NetworkPlan(interface="eth0", address=ipaddress.IPv4Interface("10.77.0.1/24"),
                                             gateway=ipaddress.IPv4Address("10.77.0.254"), why="pinned"), "/x")
    assert "Address=10.77.0.1/24\nGateway=10.77.0.254\n" in static and "DHCP" not in static
    no_gateway = render_network_file(NetworkPlan(interface="eth0", address=ipaddress.IPv4Interface("10.0.0.1/8")),
                                     "/x")
    assert "Gateway" not in no_gateway and "ConfigureWithoutCarrier=yes" in no_gateway


# --- the turnkey config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("nic, assets", [
    pytest.param("enp0s3", None, id="first-nic"),
    pytest.param("eth0", Path("/media/BOOTD/data/assets"), id="with-bootd-assets"),
    pytest.param(None, None, id="no-nic"),
    pytest.param("no", None, id="a-name-yaml-1.1-calls-false"),
    pytest.param("e#th:0", None, id="a-name-with-yaml-punctuation"),
])
def test_turnkey_config_is_accepted_by_load_config(tmp_path, nic, assets):
    text = turnkey_config_text(nic=nic, state_dir=Path("/var/lib/bootd/state"),
                               firmware_dir=Path("/usr/lib/bootd/firmware"), assets_dir=assets)
    config = _config(tmp_path, text)
    assert config.dhcp.mode is DhcpMode.PROXY
    assert config.listen.interfaces == ((nic,) if nic else ())
    assert config.listen.address is None  # the address comes from the network's DHCP server
    assert config.tftp.enabled and config.tftp.port == 69
    assert config.http.enabled and config.http.port == 8080 and config.http.data_dir == tmp_path / "data"
    assert config.http.assets_root == (assets or tmp_path / "data" / "assets")
    assert not config.dns.enabled and not config.api.enabled
    assert config.state_dir == Path("/var/lib/bootd/state")
    assert config.firmware_dir == Path("/usr/lib/bootd/firmware")


# --- what a BOOTD config leaves out ----------------------------------------------------------------------

USER_CONFIG = """\
# a comment
domain: example.com
dhcp:
  mode: proxy
machines:
  - {name: node1, mac: "52:54:00:a1:9c:ae", ip: 10.77.0.21, profile: install}
  - name: no
    mac: 52:54:00:b2:2f:86
    metadata: {rack: "r2", count: 3, on: yes}
"""


def _paths(tmp_path: Path) -> AppliancePaths:
    return AppliancePaths(bootd_dir=tmp_path / "BOOTD", state_dir=tmp_path / "state",
                          firmware_dir=tmp_path / "firmware")


@pytest.mark.parametrize("text, fields, warning", [
    pytest.param(USER_CONFIG, ["state_dir", "dhcp.firmware_dir", "http.data_dir"], None, id="nothing-given"),
    pytest.param("state_dir: /elsewhere\ndhcp: {firmware_dir: /nowhere}\nhttp: {data_dir: d}\n", [],
                 "outside the state partition", id="given-values-kept"),
    pytest.param("http: {enabled: false}\n", ["state_dir", "dhcp.firmware_dir"], None, id="no-http-no-data-dir"),
])
def test_overrides_only_for_keys_left_out(tmp_path, text, fields, warning):
    config = _config(tmp_path / "staging", text)
    overrides, warnings = decide_overrides(config, yaml.compose(text), paths=_paths(tmp_path),
                                           staging=tmp_path / "staging", bootd_assets=None)
    assert [o.field for o in overrides] == fields
    assert (warning is None) == (not warnings)
    if warning:
        assert any(warning in w for w in warnings)
        assert any("dhcp.firmware_dir /nowhere does not exist" in w for w in warnings)


def test_assets_from_bootd_when_it_has_them(tmp_path):
    overrides, _ = decide_overrides(_config(tmp_path, "{}"), yaml.compose("{}"), paths=_paths(tmp_path),
                                    staging=tmp_path, bootd_assets=Path("/media/BOOTD/data/assets"))
    assert Override(field="http.assets_dir", value="/media/BOOTD/data/assets",
                    why="served from BOOTD itself: assets are big, the state partition small") in overrides


@pytest.mark.parametrize("text", [
    pytest.param(USER_CONFIG, id="sections-given"),
    pytest.param("dhcp:\nhttp:\n", id="null-sections"),
    pytest.param("{domain: example.com, dhcp: {mode: proxy}}", id="flow-style"),
])
def test_overrides_fill_in_and_keep_every_given_value(tmp_path, text):
    overrides = [Override(field="state_dir", value="/var/lib/bootd/state", why="w"),
                 Override(field="dhcp.firmware_dir", value="/usr/lib/bootd/firmware", why="w"),
                 Override(field="http.data_dir", value="data", why="w")]
    before = _config(tmp_path, text)
    effective = apply_overrides(text, overrides, Path("/media/BOOTD/bootd.yaml"))
    after = _config(tmp_path, effective)
    assert after.state_dir == Path("/var/lib/bootd/state")
    assert after.firmware_dir == Path("/usr/lib/bootd/firmware")
    assert after.http.data_dir == tmp_path / "data"
    lines_aside = [[replace(m, line=0) for m in c.machines] for c in (before, after)]  # the header moves them
    assert lines_aside[0] == lines_aside[1] and after.domain == before.domain and after.dhcp.mode == before.dhcp.mode
    assert effective.startswith("# The active config, written by `bootd appliance prepare` from /media/BOOTD/")


@pytest.mark.parametrize("problem, line", [
    pytest.param("bootd.yaml: http.data_dir: /media/BOOTD/nodata is not a directory", 3, id="nested-key"),
    pytest.param("bootd.yaml: api.cert_file: /x does not exist", 5, id="another-section"),
    pytest.param("bootd.yaml: api: writes go to http.data_dir", 4, id="a-section"),
    pytest.param("bootd.yaml: http.assets_dir: missing", 2, id="key-not-given: its section"),
])
def test_startup_problems_located_in_the_file(problem, line):
    text = "domain: example.com\nhttp:\n  data_dir: nodata\napi:\n  cert_file: x\n"
    located = locate_problem(problem, yaml.compose(text), "/media/BOOTD/bootd.yaml")
    assert located.startswith(f"/media/BOOTD/bootd.yaml:{line}: ")
    assert located.endswith(problem.split(": ", 2)[2])


# --- report and banner -----------------------------------------------------------------------------------

def test_report_reads_back_what_it_wrote():
    report = Report(summary="BOOTD config has 2 errors, kept the last good one from 2026-12-02 12:00 UTC",
                    active="/var/lib/bootd/config/bootd.yaml (applied 2026-12-02 12:00 UTC)",
                    network="eth0 static 10.77.0.1/24 gateway 10.77.0.254",
                    choices=("dhcp.firmware_dir: /usr/lib/bootd/firmware (not in bootd.yaml: ...)",),
                    warnings=("w: with: colons",),
                    errors=("/media/BOOTD/bootd.yaml:3: dhcp.mode: 'x' is not one of: off, proxy",
                            "/media/BOOTD/bootd.yaml:9: machines[1].mac: 'y' is not a MAC address"))
    assert parse_report(report.text()) == report


def test_banner_turnkey_shows_the_live_address_what_is_served_and_the_progress(tmp_path):
    config = _config(tmp_path, turnkey_config_text(nic="enp0s3", state_dir=Path("/s"), firmware_dir=Path("/f"),
                                                   assets_dir=None))
    report = Report(summary="no bootd.yaml on BOOTD: turnkey proxy-DHCP on enp0s3", network="enp0s3 dhcp")
    text = render_banner(report, config)
    assert "address:  \\4{enp0s3} on enp0s3 (DHCP from the network's server)" in text
    assert "serving:  proxy-DHCP on enp0s3, TFTP :69, HTTP :8080, 0 machines, no DNS" in text
    assert "progress: http://\\4{enp0s3}:8080/api/v1/machines" in text
    assert "config:   no bootd.yaml on BOOTD: turnkey proxy-DHCP on enp0s3" in text
    assert "bootd: running" not in text


def test_banner_static_with_errors_and_running_line(tmp_path):
    config = _config(tmp_path, AUTHORITATIVE % "10.77.0.1" + "domain: example.com\ndns: {port: 53}\n")
    errors = tuple(f"/media/BOOTD/bootd.yaml:{n}: machines[{n}].mac: 'a\\b' is not a MAC address" for n in range(12))
    report = Report(summary="BOOTD config has 12 errors, kept the last good one from 2026-12-02 12:00 UTC",
                    network="eth0 static 10.77.0.1/24", errors=errors, warnings=("w",))
    running = ("bootd: running as user bootd (uid 998), pid 412, capabilities cap_net_bind_service,cap_net_raw, "
               "rss 42 MiB")
    text = render_banner(report, config, running=running)
    assert "address:  10.77.0.1/24 on eth0 (static, from bootd.yaml)" in text
    assert "authoritative-DHCP on every interface, DNS :53 (example.com), HTTP :8080, 0 machines" in text
    assert "progress: http://10.77.0.1:8080/api/v1/machines" in text
    assert "/media/BOOTD/bootd.yaml:0: machines[0].mac: 'a\\\\b' is not a MAC address" in text  # agetty: \\ is \
    assert "machines[9]" in text and "machines[10]" not in text and "... and 2 more" in text
    assert "1 warnings" in text
    assert RUNNING_LINE.match(text.splitlines()[-2 if text.endswith("\n\n") else -1])


def test_banner_without_config_says_nothing_is_served():
    report = Report(summary="BOOTD config has 1 error, and there is no last good one: bootd serves nothing",
                    network="eth0 dhcp", errors=("/media/BOOTD/bootd.yaml:1: (yaml): bad",))
    text = render_banner(report, None)
    assert "serving:  nothing" in text and "progress" not in text and "(yaml): bad" in text


# --- /proc/PID/status ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask, names", [
    pytest.param(0, (), id="none"),
    pytest.param(0x2400, ("cap_net_bind_service", "cap_net_raw"), id="bootd's-two"),
    pytest.param(1 << 21, ("cap_sys_admin",), id="sys-admin"),
    pytest.param((1 << 41) - 1, None, id="root-on-linux-5.9+: all 41"),
    pytest.param(1 << 45, ("cap_45",), id="newer-than-the-table"),
])
def test_capability_names(mask, names):
    decoded = capability_names(mask)
    if names is None:
        assert len(decoded) == 41 and decoded[0] == "cap_chown" and decoded[-1] == "cap_checkpoint_restore"
    else:
        assert decoded == names


STATUS = """Name:\tbootd
Umask:\t0077
State:\tS (sleeping)
Pid:\t412
Uid:\t998\t998\t998\t998
Gid:\t998\t998\t998\t998
VmRSS:\t   43212 kB
CapInh:\t0000000000000000
CapPrm:\t0000000000002400
CapEff:\t0000000000002400
CapBnd:\t0000000000002400
"""


def test_proc_status_to_the_running_line():
    facts = parse_proc_status(412, STATUS, user_name=lambda uid: {998: "bootd"}[uid])
    assert facts.line() == ("bootd: running as user bootd (uid 998), pid 412, capabilities "
                            "cap_net_bind_service,cap_net_raw, rss 42 MiB")
    assert RUNNING_LINE.match(facts.line())
    unnamed = parse_proc_status(412, STATUS, user_name=lambda uid: {}[uid])
    assert unnamed.user == "998"
    with pytest.raises(ValueError, match="CapEff"):
        parse_proc_status(412, "Uid:\t0\t0\t0\t0\n")


# --- journald's native protocol --------------------------------------------------------------------------

def test_journal_entry_plain_and_with_a_newline():
    assert journal_entry([("MESSAGE", "a: b"), ("PRIORITY", "3")]) == b"MESSAGE=a: b\nPRIORITY=3\n"
    assert journal_entry([("MESSAGE", "two\nlines")]) == b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\n"


def test_errors_go_to_bootd_units_journal():
    report = Report(summary="BOOTD config has 1 error, and there is no last good one: bootd serves nothing",
                    errors=("/media/BOOTD/bootd.yaml:3: dhcp.mode: 'x' is not one of: off, proxy",))
    entries = journal_for_bootd(report)
    assert len(entries) == 2
    assert b"OBJECT_SYSTEMD_UNIT=bootd.service\n" in entries[1] and b"PRIORITY=3\n" in entries[1]
    assert b"MESSAGE=error: /media/BOOTD/bootd.yaml:3: dhcp.mode: 'x' is not one of: off, proxy\n" in entries[1]
