"""/metrics' pieces: every drop reason the code gives has a series of its own, a boot stage is timed once per
boot, the `metrics:` section reads strictly (the daemon, the traffic and promtool: tests/integration/test_metrics.py)."""

import re
from ipaddress import ip_address
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.exposition import generate_latest

from appliance.config import ConfigInvalid, MetricsConfig, parse_config
from appliance.events import Event, EventKind, ProgressTracker
from appliance.mac import MacAddress
from appliance.metrics import (
    DHCP_DROP_REASONS, DNS_DROP_REASONS, TFTP_DROP_REASONS, TFTP_REFUSE_REASONS, Metrics, ServiceStats,
)

APPLIANCE = Path(__file__).parents[2] / "appliance"
A = MacAddress("52:54:00:00:00:0a")


@pytest.mark.parametrize("files, pattern, fixed", [
    pytest.param(["dhcp/pxe.py", "dhcp/authoritative.py", "dhcp/leases.py", "dhcp/packet.py", "dhcp/server.py",
                  "dhcp/etcd_leases.py"],
                 r'(?:Ignore|MalformedPacket)\("([a-z0-9-]+)"|dropped\["([a-z0-9-]+)"\]', DHCP_DROP_REASONS, id="dhcp"),
    pytest.param(["tftp/protocol.py", "tftp/server.py"], r'MalformedPacket\((?:"([a-z0-9-]+)"|"[a-z0-9-]+" if [^)]* else '
                 r'"([a-z0-9-]+)")|dropped\["([a-z0-9-]+)"\]', TFTP_DROP_REASONS, id="tftp-dropped"),
    pytest.param(["tftp/protocol.py", "tftp/server.py"], r'Refuse\([^\n]*, "([a-z0-9-]+)"\)', TFTP_REFUSE_REASONS,
                 id="tftp-refused"),
    pytest.param(["dns/server.py"], r'stats\.dropped\["([a-z0-9-]+)"\]', DNS_DROP_REASONS, id="dns"),
])
def test_every_reason_the_code_gives_has_a_series_of_its_own(files, pattern, fixed):
    """A reason missing from its set would be counted as "other": bounded still, but the operator loses why."""
    found = set()
    for match in re.finditer(pattern, "\n".join((APPLIANCE / f).read_text() for f in files)):
        found |= {g for g in match.groups() if g}
    assert found and found <= set(fixed), found - set(fixed)


def test_the_conditional_and_formatted_tftp_reasons_are_in_the_set():
    # tftp/protocol.py: MalformedPacket("bad-opcode" if ... else "short") and Refuse(..., f"bad-{name}") for the
    # four options it reads
    assert {"bad-opcode", "short"} <= set(TFTP_DROP_REASONS)
    assert {f"bad-{name}" for name in ("blksize", "windowsize", "timeout", "tsize")} <= set(TFTP_REFUSE_REASONS)


def ev(kind: EventKind, t: float, ok: bool = True) -> Event:
    return Event(kind=kind, mac=A, peer=None, detail=kind.value, ok=ok, time=t)


def stage_counts(metrics: Metrics) -> dict[str, tuple[float, float]]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        if family.name == "bootd_boot_stage_seconds":
            for sample in family.samples:
                stage = sample.labels["stage"]
                if sample.name.endswith("_count") and sample.value:
                    out[stage] = (sample.value, out.get(stage, (0, 0))[1])
                elif sample.name.endswith("_sum") and stage in out:
                    out[stage] = (out[stage][0], sample.value)
    return out


def test_each_stage_is_timed_from_power_on_once_per_boot():
    tracker = ProgressTracker()
    metrics = Metrics(services=ServiceStats, tracker=tracker)
    sinks = [tracker.record, metrics.stage_timer]  # the daemon's order: the tracker first
    for event in [ev(EventKind.DHCP, 100.0), ev(EventKind.DHCP, 101.0), ev(EventKind.TFTP, 103.0),
                  ev(EventKind.BOOT_SCRIPT, 104.0, ok=False),  # failed: not reached yet
                  ev(EventKind.BOOT_SCRIPT, 105.5), ev(EventKind.BOOT_SCRIPT, 106.0),
                  ev(EventKind.BOOT_CONFIG, 107.0), ev(EventKind.KERNEL, 110.0)]:
        for sink in sinks:
            sink(event)
    assert stage_counts(metrics) == {"dhcp": (1, 0.0), "tftp": (1, 3.0), "boot-script": (1, 5.5),
                                     "boot-config": (1, 7.0), "kernel": (1, 10.0)}
    for event in [ev(EventKind.DHCP, 200.0), ev(EventKind.BOOT_SCRIPT, 202.0)]:  # the installed system reboots
        for sink in sinks:
            sink(event)
    assert stage_counts(metrics)["boot-script"] == (2, 7.5) and stage_counts(metrics)["dhcp"] == (2, 0.0)


def test_machines_by_stage_are_counted_at_scrape_time():
    tracker = ProgressTracker()
    metrics = Metrics(services=ServiceStats, tracker=tracker)
    tracker.record(ev(EventKind.DHCP, 1.0))
    tracker.record(Event(kind=EventKind.KERNEL, mac=MacAddress("52:54:00:00:00:0b"), peer=None, detail="", ok=False,
                         time=2.0))
    text = generate_latest(metrics.registry).decode()
    assert 'bootd_machines{stage="dhcp"} 1.0' in text and 'bootd_machines{stage="kernel"} 1.0' in text
    assert "bootd_machines_failed 1.0" in text
    assert "bootd_requests_received_total" not in text  # no service runs


HTTP = "http:\n  port: 8080\n"


@pytest.mark.parametrize("text, expected", [
    pytest.param(HTTP, MetricsConfig(), id="absent: on the HTTP port"),
    pytest.param(HTTP + "metrics:\n  port: 9100\n", MetricsConfig(port=9100), id="port"),
    pytest.param(HTTP + "metrics:\n  address: 127.0.0.1\n  port: 0\n",
                 MetricsConfig(address=ip_address("127.0.0.1"), port=0), id="address-and-any-free-port"),
    pytest.param("http:\n  address: 10.0.0.1\n  port: 8080\nmetrics:\n  address: 127.0.0.1\n  port: 8080\n",
                 MetricsConfig(address=ip_address("127.0.0.1"), port=8080), id="http-port-on-another-address"),
])
def test_metrics_section_reads(text, expected):
    assert parse_config(text, Path("bootd.yaml")).metrics == expected


@pytest.mark.parametrize("text, error", [
    pytest.param("metrics:\n  address: 127.0.0.1\n", "bootd.yaml:4: metrics.port: required", id="no-port"),
    pytest.param("metrics:\n  port: -1\n", "bootd.yaml:4: metrics.port: expected a whole number", id="negative"),
    pytest.param("metrics:\n  port: 8080\n", "bootd.yaml:4: metrics.port: 8080 is http.port", id="http-port"),
    pytest.param("metrics:\n  port: 9100\n  address: nowhere\n", "bootd.yaml:5: metrics.address: 'nowhere' is not an "
                 "IP address", id="bad-address"),
    pytest.param("metrics: [9100]\n", "bootd.yaml:3: metrics: expected a mapping", id="a-list"),
])
def test_a_bad_metrics_section_names_file_line_field(text, error):
    with pytest.raises(ConfigInvalid) as caught:
        parse_config(HTTP + text, Path("bootd.yaml"))
    assert any(str(e).startswith(error) for e in caught.value.errors), caught.value.errors
