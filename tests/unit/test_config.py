"""bootd.yaml: every mistake is reported with file, line and field."""

import ipaddress
from pathlib import Path

import pytest

from appliance.config import ConfigInvalid, Role, parse_config

GOOD = """\
state_dir: /var/lib/bootd/state
domain: example.com
names:
  provisioner: matchbox
  controllers: k8s
  workers: tectonic
http:
  port: 8080
  data_dir: data
machines:
  - {name: node1, mac: "52:54:00:a1:9c:ae", ip: 10.77.0.21, role: controller, profile: install-controller}
  - name: node2
    mac: 52:54:00:12:34:56
    ip: 10.77.0.22
    role: worker
    profile: install-worker
    metadata: {rack: r2, disks: [sda, sdb]}
"""


def parse(text: str):
    return parse_config(text, Path("/etc/bootd/bootd.yaml"))


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse(text)
    return [str(e) for e in info.value.errors]


def test_good_config_reads_into_dataclasses():
    config = parse(GOOD)
    assert config.domain == "example.com"
    assert config.http.port == 8080
    assert config.http.data_dir == Path("/etc/bootd/data")  # relative to the config file
    assert config.http.assets_root == Path("/etc/bootd/data/assets")
    node1, node2 = config.machines
    assert node1.mac == "52:54:00:a1:9c:ae" and node1.role is Role.CONTROLLER
    # YAML 1.1 would read this unquoted MAC as a base-60 integer; bootd reads the text.
    assert node2.mac == "52:54:00:12:34:56"
    assert str(node2.ip) == "10.77.0.22"
    assert dict(node2.metadata) == {"rack": "r2", "disks": ["sda", "sdb"]}
    assert config.fqdn("node1") == "node1.example.com"


@pytest.mark.parametrize("text, expected", [
    pytest.param("http:\n  port: 8080\nmachines:\n  - {name: a, mac: '52:54:zz:00:00:01'}\n",
                 "bootd.yaml:4: machines[0].mac: '52:54:zz:00:00:01' is not a MAC address", id="bad-mac"),
    pytest.param("htp:\n  port: 1\n", "bootd.yaml:1: htp: unknown key", id="unknown-top-key"),
    pytest.param("http:\n  prot: 1\n", "bootd.yaml:2: http.prot: unknown key", id="unknown-nested-key"),
    pytest.param("http:\n  port: 80\n  port: 81\n", "bootd.yaml:3: http.port: duplicate key (first given on line 2)",
                 id="duplicate-key"),
    pytest.param("http:\n  port: 99999\n", "bootd.yaml:2: http.port: 99999 is out of range (0 to 65535)",
                 id="port-range"),
    pytest.param("http:\n  port: eighty\n", "bootd.yaml:2: http.port: expected a whole number", id="port-type"),
    pytest.param("http:\n  enabled: maybe\n", "bootd.yaml:2: http.enabled: expected true or false", id="bool"),
    pytest.param("machines:\n  - {name: a, mac: '52:54:00:00:00:01', ip: 10.0.0.300}\n",
                 "bootd.yaml:2: machines[0].ip: '10.0.0.300' is not an IP address", id="bad-ip"),
    pytest.param("machines:\n  - {name: a, mac: '52:54:00:00:00:01'}\n  - {name: b, mac: '52-54-00-00-00-01'}\n",
                 "bootd.yaml:3: machines[1].mac: '52:54:00:00:00:01' is already used by the machine on line 2",
                 id="duplicate-mac"),
    pytest.param("machines:\n  - {name: a, mac: '52:54:00:00:00:01', ip: 10.0.0.5}\n"
                 "  - {name: b, mac: '52:54:00:00:00:02', ip: 10.0.0.5}\n",
                 "bootd.yaml:3: machines[1].ip: '10.0.0.5' is already used by the machine on line 2",
                 id="duplicate-ip"),
    pytest.param("machines:\n  - {name: a, mac: '52:54:00:00:00:01'}\n  - {name: A, mac: '52:54:00:00:00:02'}\n",
                 "bootd.yaml:3: machines[1].name: 'a' is already used by the machine on line 2",
                 id="duplicate-name"),
    pytest.param("machines:\n  - {name: node_1, mac: '52:54:00:00:00:01'}\n",
                 "bootd.yaml:2: machines[0].name: 'node_1' is not a valid host name", id="bad-hostname"),
    pytest.param("machines:\n  - {mac: '52:54:00:00:00:01'}\n", "bootd.yaml:2: machines[0].name: required",
                 id="missing-name"),
    pytest.param("machines:\n  - {name: a, mac: '52:54:00:00:00:01', role: boss}\n",
                 "bootd.yaml:2: machines[0].role: 'boss' is not one of: controller, worker", id="bad-role"),
    pytest.param("names:\n  controllers: k8s\nmachines:\n  - {name: k8s, mac: '52:54:00:00:00:01'}\n",
                 "bootd.yaml:4: machines[0].name: 'k8s' is already the names.controllers name", id="name-clash"),
    pytest.param("domain: exa mple.com\n", "bootd.yaml:1: domain: 'exa mple.com' is not a valid domain name",
                 id="bad-domain"),
    pytest.param("machines: {name: a}\n", "bootd.yaml:1: machines: expected a list", id="not-a-list"),
    pytest.param("http: [1, 2]\n", "bootd.yaml:1: http: expected a mapping", id="not-a-mapping"),
    pytest.param("http:\n  port: 80\n   data_dir: x\n", "bootd.yaml:3: (yaml): ", id="broken-yaml"),
    pytest.param("listen:\n  interface: eth0\n  interfaces: [eth1]\n",
                 "bootd.yaml:3: listen.interfaces: give either interface or interfaces, not both", id="listen-both"),
    pytest.param("", "bootd.yaml:1: (file): the config file is empty", id="empty"),
    pytest.param("api:\n  port: 8081\n  cert: /x\n", "bootd.yaml:3: api.cert: unknown key", id="api-key"),
    pytest.param("dhcp:\n  mode: proxy\n  ipxe_detection: option-175\n",
                 "bootd.yaml:3: dhcp.ipxe_detection: 'option-175' is not one of: any, user-class", id="bad-choice"),
])
def test_each_mistake_names_file_line_and_field(text, expected):
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_error_is_reported_at_once():
    errors = errors_of("htp: 1\nhttp:\n  port: x\nmachines:\n  - {name: a, mac: nope}\n")
    assert [e.split(":")[1] for e in errors] == ["1", "3", "5"]


def test_yes_and_no_are_names_not_booleans():
    config = parse("machines:\n  - {name: no, mac: '52:54:00:00:00:01'}\n")
    assert config.machines[0].name == "no"


@pytest.mark.parametrize("rtype, value", [
    ("A", "01.2.3.4"), ("A", "1.2.3.4"), ("A", "1.2.3"), ("A", "256.1.1.1"), ("A", "::1"), ("AAAA", "::1"),
    ("AAAA", "1.2.3.4"), ("AAAA", "fe80::1%eth0"), ("AAAA", "::ffff:1.2.3.4"), ("MX", "10 mail"), ("MX", "mail"),
    ("SRV", "0 0 2380 node1"), ("SRV", "0 0 x node1"), ("TXT", ""), ("CNAME", "k8s"), ("PTR", "x"),
])
def test_a_record_the_config_accepts_is_one_the_zone_builds(rtype, value):
    """Whatever `bootd check` accepts, `bootd run` accepts: an A record `01.2.3.4` passed the check (dnslib
    took it) and then stopped the daemon at start (ipaddress did not)."""
    from appliance.dns.zone import ExtraRecord, build_zone

    text = f"domain: example.com\ndns:\n  records:\n    - {{name: x, type: {rtype}, value: \"{value}\"}}\n"
    try:
        config = parse(text)
    except ConfigInvalid:
        return  # refused by the check, with file, line and field: the runtime never sees it
    records = [ExtraRecord(name=r.name, rtype=r.rtype, value=r.value) for r in config.dns.records]
    build_zone(config, [ipaddress.ip_address("10.77.0.1")], extra=records)


def test_check_start_and_reload_build_the_runtime_tables_too(monkeypatch, tmp_path):
    """startup_problems (bootd check, the start, every reload) builds the zone and the DHCP tables once, so a
    value the parser lets by but a builder refuses is a config problem, not a crash at start or at SIGHUP."""
    import appliance.daemon as daemon

    config = parse_config(f"domain: example.com\nhttp: {{enabled: false, data_dir: {tmp_path}}}\n"
                          "dns: {port: 5353}\ndhcp: {mode: proxy}\n", tmp_path / "bootd.yaml")
    assert daemon.startup_problems(config) == []

    def refuse(*args, **kwargs):
        raise ValueError("no zone for you")

    monkeypatch.setattr(daemon, "build_zone", refuse)
    monkeypatch.setattr(daemon, "build_policies", refuse)
    assert daemon.startup_problems(config) == [
        "bootd.yaml: dns: the zone cannot be built: no zone for you",
        "bootd.yaml: dhcp: the DHCP tables cannot be built: no zone for you"]
