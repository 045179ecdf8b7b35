"""/metrics through the real daemon: real DHCP (scapy-crafted PXE packets), TFTP (curl and a client that never
answers), DNS (dig) and HTTP (curl) traffic from a client namespace, the scrape parsed with prometheus_client's
own parser and checked by promtool (Debian's prometheus package); counters must be exactly what was sent.
100,000 requests with random MACs, paths and names must not add a single series after the first 1,000.
`metrics.port` serves /metrics apart from the boot port; a bad `metrics:` section is named by file, line, field.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.dhcp import BOOTP, DHCP

from tests.bootd_process import BootdProcess
from tests.integration.test_dhcp import pxe_packet
from tests.integration.test_http import write
from tests.metrics_load import dns_query
from tests.netns import NetLab

ROOT = Path(__file__).parents[2]
SERVER = "192.0.2.1"
HELLO = bytes(range(256)) * 5 + bytes(220)  # 1,500 bytes: three 512-byte TFTP blocks, the last one short

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, read by prometheus_client's own parser, keyed by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped[name, frozenset(labels.items())]


def promtool() -> str:
    """tests/setup.sh puts promtool beside the venv's python (taken out of Debian's prometheus package, whose
    install would start a Prometheus server); one on PATH does too."""
    beside = Path(sys.prefix) / "bin" / "promtool"
    return str(beside) if beside.exists() else (shutil.which("promtool") or "promtool")


def promtool_check(text: str) -> None:
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def lab_config(tmp_path: Path, *, extra: str = "") -> Path:
    data = tmp_path / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/k"}})
    write(data / "groups/default.json", {"id": "default", "profile": "p"})
    for name in ("undionly.kpxe", "ipxe.efi"):
        write(tmp_path / "state/firmware" / name, os.urandom(4096))
    write(tmp_path / "tftproot/hello.bin", HELLO)
    path = tmp_path / "bootd.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\ndomain: lab.test\n"
        f"http:\n  address: {SERVER}\n  port: 8080\n  data_dir: {data}\n"
        "dhcp:\n  mode: proxy\n"
        # one retransmission, 2 s after the first DATA: a client that never answers fails 2 + 4 s later
        f"tftp:\n  root: {tmp_path / 'tftproot'}\n  timeout: 2\n  retries: 1\n"
        f"dns:\n  address: {SERVER}\n  records:\n    - {{name: x, type: A, value: 192.0.2.99}}\n" + extra)
    return path


@pytest.fixture
def lab(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with NetLab(f"bm{os.getpid() % 100000}") as netlab:
        client = netlab.add_client("192.0.2.10/24")
        bootd = BootdProcess(lab_config(tmp_path), lab=netlab, ns=netlab.server_ns).start()
        yield netlab, client, bootd
        assert bootd.stop() == 0


def plain_discover(mac: str) -> bytes:
    """An ordinary DHCP client's DISCOVER: no PXE options, not proxy DHCP's to answer."""
    return bytes(BOOTP(op=1, chaddr=bytes.fromhex(mac), xid=1) / DHCP(options=[("message-type", "discover"), "end"]))


def probe(lab: NetLab, ns: str, *payloads: bytes, to: str, bind: str = "0.0.0.0:0", expect: int, wait: float = 5.0,
          iface: str | None = None) -> list[dict]:
    argv = [sys.executable, "-m", "tests.udp_probe", "--bind", bind, "--to", to, "--wait", str(wait),
            "--expect", str(expect), *([f"--iface={iface}"] if iface else []), *(p.hex() for p in payloads)]
    result = lab.run(ns, argv, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert len(answers) == expect, answers
    return answers


def scrape(lab: NetLab, ns: str, url: str = f"http://{SERVER}:8080/metrics") -> str:
    result = lab.run(ns, ["curl", "-sf", "--max-time", "30", url], timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_counters_match_what_the_clients_sent(lab, tmp_path):
    netlab, client, bootd = lab
    mac = client.mac  # the client's own MAC: its TFTP and HTTP requests are the same machine's steps
    # DHCP 67: two runts and a plain (non-PXE) DISCOVER dropped, three PXE DISCOVERs answered. One socket, in
    # order: when the third OFFER is back, bootd has read all six.
    probe(netlab, client.ns, b"\x01" * 10, b"\x01" * 100, plain_discover("525400777777"),
          *[pxe_packet(mac, "discover", 0, xid=n) for n in range(3)], to="255.255.255.255:67", bind="0.0.0.0:68",
          expect=3, iface=client.ifname)
    # 4011: a runt dropped, the UEFI firmware's REQUEST answered (bootd learns the client's IP is this MAC)
    probe(netlab, client.ns, b"\x01" * 10, pxe_packet(mac, "request", 7, ciaddr=client.address, flags=0),
          to=f"{SERVER}:4011", bind=f"{client.address}:4011", expect=1)
    # TFTP: a client that asks and never acknowledges (DATA 1 is sent again once, then the transfer fails),
    # a whole file, a missing file, a request that is not one (answered with an ERROR, counted as dropped)
    silent = netlab.start(client.ns, [sys.executable, "-m", "tests.udp_probe", "--to", f"{SERVER}:69", "--bind",
                                      "0.0.0.0:0", "--expect", "2", "--wait", "10",
                                      (b"\0\1hello.bin\0octet\0").hex()], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    fetched = netlab.run(client.ns, ["curl", "-sf", "--max-time", "20", f"tftp://{SERVER}/hello.bin"], text=False)
    assert fetched.returncode == 0 and fetched.stdout == HELLO, fetched.stderr
    assert netlab.run(client.ns, ["curl", "-s", "--max-time", "20", f"tftp://{SERVER}/missing.bin"]).returncode != 0
    probe(netlab, client.ns, b"\0\5\0\0", to=f"{SERVER}:69", expect=1)
    # DNS: a runt dropped (no answer), then a name of the zone answered; dig's NXDOMAIN answered
    probe(netlab, client.ns, b"\0" * 5, dns_query("x.lab.test", 7), to=f"{SERVER}:53", expect=1)
    dig = netlab.run(client.ns, ["dig", f"@{SERVER}", "+tries=1", "+time=10", "nothing.lab.test"])
    assert "status: NXDOMAIN" in dig.stdout, dig.stdout
    # HTTP: a boot script, two 404s on two routes, a request aiohttp cannot parse (400)
    for url, code in ((f"/boot.ipxe?mac={mac}", "200"), ("/no/such/page", "404"),
                      ("/api/v1/machines/52:54:00:99:99:99", "404")):
        result = netlab.run(client.ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                        f"http://{SERVER}:8080{url}"])
        assert result.stdout == code, (url, result.stdout)
    bad = netlab.run(client.ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "B@D",
                                 f"http://{SERVER}:8080/"])
    assert bad.stdout == "400", bad.stdout
    answers, _ = silent.communicate(timeout=30)
    assert [a["data"][:8] for a in json.loads(answers)] == ["00030001"] * 2  # DATA 1, then DATA 1 again
    bootd.wait_for_log(lambda line: "no answer after 1 retries" in line.get("message", ""), timeout=20)

    text = scrape(netlab, client.ns)
    promtool_check(text)
    scraped = samples(text)
    expected = {
        ("bootd_requests_received_total", "dhcp"): 6, ("bootd_requests_answered_total", "dhcp"): 3,
        ("bootd_requests_received_total", "proxy-dhcp"): 2, ("bootd_requests_answered_total", "proxy-dhcp"): 1,
        ("bootd_requests_received_total", "tftp"): 4, ("bootd_requests_answered_total", "tftp"): 3,
        ("bootd_requests_received_total", "dns"): 3, ("bootd_requests_answered_total", "dns"): 2,
        # the scrape itself is received and not answered yet; the unparseable one was answered 400
        ("bootd_requests_received_total", "http"): 5, ("bootd_requests_answered_total", "http"): 4,
    }
    assert {key: value(scraped, key[0], service=key[1]) for key in expected} == expected
    dropped = {(labels["service"], labels["reason"]): n for (name, labels_), n in scraped.items()
               if name == "bootd_requests_dropped_total" and n for labels in [dict(labels_)]}
    assert dropped == {("dhcp", "short-packet"): 2, ("dhcp", "not-pxe"): 1, ("proxy-dhcp", "short-packet"): 1,
                       ("tftp", "not-a-request"): 1, ("dns", "short"): 1, ("http", "malformed"): 1}
    assert {labels: n for (name, labels), n in scraped.items() if name == "bootd_tftp_refused_total" and n} == {
        frozenset({("reason", "not-found")}): 1}
    # DATA packets and retransmissions as bootd told them per transfer in the machine's timeline (curl's ACKs
    # come in well within the 2 s timeout, but how fast is not this test's business): the silent client got
    # DATA 1 twice, curl the file's three blocks and whatever went again
    view = json.loads(netlab.run(client.ns, ["curl", "-sf", f"http://{SERVER}:8080/api/v1/machines/{mac}"]).stdout)
    figures = [tuple(map(int, found.groups())) for event in view["events"] if event["stage"] == "tftp"
               and (found := re.search(r"(\d+) DATA, (\d+) retransmitted", event["detail"]))]
    assert len(figures) == 2 and (2, 1) in figures and max(data for data, _ in figures) >= 3, figures
    tftp = {name: n for (name, labels), n in scraped.items() if name.startswith("bootd_tftp_") and not labels}
    assert tftp == {"bootd_tftp_transfers_started_total": 2, "bootd_tftp_transfers_active": 0,
                    "bootd_tftp_sent_bytes_total": len(HELLO),
                    "bootd_tftp_data_packets_total": sum(data for data, _ in figures),
                    "bootd_tftp_retransmissions_total": sum(again for _, again in figures)}
    assert value(scraped, "bootd_tftp_transfers_finished_total", outcome="completed") == 1
    assert value(scraped, "bootd_tftp_transfers_finished_total", outcome="failed") == 1
    http = {(dict(labels)["route"], dict(labels)["code"]): n for (name, labels), n in scraped.items()
            if name == "bootd_http_requests_total"}
    assert http == {("/boot.ipxe", "200"): 1, ("/{tail}", "404"): 1, ("/api/v1/machines/{mac}", "404"): 1}
    assert value(scraped, "bootd_http_request_duration_seconds_count", route="/boot.ipxe") == 1
    assert value(scraped, "bootd_http_request_duration_seconds_bucket", route="/boot.ipxe", le="+Inf") == 1
    assert value(scraped, "bootd_http_request_duration_seconds_count", route="/metrics") == 0
    assert all(n == 0 for (name, _), n in scraped.items() if name == "bootd_internal_errors_total")
    # the machine: DHCP, then TFTP (its IP is its MAC since 4011), then its boot script; TFTP failed last
    stages = {dict(labels)["stage"]: n for (name, labels), n in scraped.items()
              if name == "bootd_boot_stage_seconds_count" and n}
    assert stages == {"dhcp": 1, "tftp": 1, "boot-script": 1}
    assert value(scraped, "bootd_boot_stage_seconds_sum", stage="dhcp") == 0  # the boot's first step
    machines = {dict(labels)["stage"]: n for (name, labels), n in scraped.items() if name == "bootd_machines" and n}
    assert machines == {"boot-script": 1}
    assert value(scraped, "bootd_machines_failed") == 1
    assert value(scraped, "bootd_build_info", version="0.1.0", python=sys.version.split()[0]) == 1
    assert value(scraped, "process_resident_memory_bytes") > 0


def test_100k_random_requests_add_no_series(lab):
    netlab, client, bootd = lab

    def load(count: int, seed: int) -> dict:
        result = netlab.run(client.ns, [sys.executable, "-m", "tests.metrics_load", "--server", SERVER, "--iface",
                                        client.ifname, "--client-ip", client.address, "--count", str(count),
                                        "--seed", str(seed)], cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["lost"] == 0, report  # every request of each kind was answered
        return report

    first = load(1_000, seed=1)
    scrape(netlab, client.ns)  # a scrape is a request too: its own series is there from the first one on
    after_first = samples(scrape(netlab, client.ns))
    rest = load(99_000, seed=2)
    text = scrape(netlab, client.ns)
    after_all = samples(text)
    assert set(after_all) == set(after_first), (set(after_all) ^ set(after_first))
    promtool_check(text)
    print(f"first 1,000: {first['seconds']} s, next 99,000: {rest['seconds']} s; {len(after_all)} series")
    for service in ("dhcp", "proxy-dhcp", "tftp", "dns"):
        sent = first["sent"][service] + rest["sent"][service]
        assert value(after_all, "bootd_requests_received_total", service=service) == sent, service
        assert value(after_all, "bootd_requests_answered_total", service=service) == sent, service
    http_sent = first["sent"]["http"] + rest["sent"]["http"]
    scrapes = 3  # two answered, the last one in progress
    assert value(after_all, "bootd_requests_received_total", service="http") == http_sent + scrapes
    routed = sum(n for (name, labels), n in after_all.items() if name == "bootd_http_requests_total")
    assert routed == http_sent + scrapes - 1
    codes = {code: n for code, n in first["http_codes"].items()}
    for code, n in rest["http_codes"].items():
        codes[code] = codes.get(code, 0) + n
    assert {code: sum(n for (name, labels), n in after_all.items() if name == "bootd_http_requests_total"
                      and dict(labels)["code"] == code and dict(labels)["route"] != "/metrics")
            for code in codes} == codes  # the responses the client read, by code
    assert sum(first["sent"].values()) + sum(rest["sent"].values()) == 100_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def loopback_config(tmp_path: Path, metrics: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "bootd.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n"
                    f"http:\n  address: 127.0.0.1\n  port: 0\n  data_dir: {tmp_path / 'data'}\n" + metrics)
    return path


def test_metrics_port_apart_from_the_boot_port_and_reloads_counted(tmp_path):
    path = loopback_config(tmp_path, "metrics:\n  address: 127.0.0.1\n  port: 0\n")
    bootd = BootdProcess(path).start()
    try:
        [boot] = [a for a in bootd.addresses if a.startswith("http://") and not a.endswith("/metrics")]
        [metrics] = [a for a in bootd.addresses if a.endswith("/metrics")]
        assert metrics != f"{boot}/metrics"
        assert get(f"{boot}/metrics")[0] == 404  # not on the boot network's port
        assert get(metrics.removesuffix("/metrics") + "/api/v1/machines")[0] == 404  # only /metrics over there
        status, content_type, text = get(metrics)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        promtool_check(text)
        scraped = samples(text)
        # the boot port counted its 404; the metrics port's own requests are not boot traffic
        assert value(scraped, "bootd_http_requests_total", route="/{tail}", code="404") == 1
        assert value(scraped, "bootd_requests_received_total", service="http") == 1
        assert value(scraped, "bootd_config_reloads_total", result="success") == 0
        assert value(scraped, "bootd_config_last_reload_successful") == 1
        status, content_type, text = get(metrics, accept="application/openmetrics-text; version=1.0.0")
        assert content_type.startswith("application/openmetrics-text") and text.endswith("# EOF\n")

        # a new metrics port applies at the next start (as http's does); the rest of the reload applies now
        loopback_config(tmp_path, f"metrics:\n  address: 127.0.0.1\n  port: {free_port()}\n")
        mark = len(bootd.lines)
        bootd.send(signal.SIGHUP)
        bootd.wait_for_log(lambda line: line.get("message", "").startswith("reloaded"), start=mark)
        assert any("a change of metrics address or port takes effect at the next restart" in line.get("message", "")
                   for line in bootd.lines[mark:])
        assert get(metrics)[0] == 200
        path.write_text(path.read_text() + "no_such_key: 1\n")
        mark = len(bootd.lines)
        bootd.send(signal.SIGHUP)
        bootd.wait_for_log(lambda line: "reload refused: keeping" in line.get("message", ""), start=mark)
        scraped = samples(get(metrics)[2])
        assert value(scraped, "bootd_config_reloads_total", result="success") == 1
        assert value(scraped, "bootd_config_reloads_total", result="failure") == 1
        assert value(scraped, "bootd_config_last_reload_successful") == 0
        assert 0 < value(scraped, "bootd_config_last_reload_success_timestamp_seconds") <= value(
            scraped, "bootd_config_last_reload_timestamp_seconds")
    finally:
        assert bootd.stop() == 0


def test_metrics_on_the_boot_port_without_a_metrics_section(tmp_path):
    bootd = BootdProcess(loopback_config(tmp_path, "")).start()
    try:
        status, content_type, text = get(bootd.url("/metrics"))
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        promtool_check(text)
        assert not [a for a in bootd.addresses if a.endswith("/metrics")]
        status, _, text = get(bootd.url("/metrics"))
        assert value(samples(text), "bootd_http_requests_total", route="/metrics", code="200") == 1
    finally:
        assert bootd.stop() == 0


@pytest.mark.parametrize("section, line, message", [
    pytest.param("metrics:\n  address: 127.0.0.1\n", 6, "metrics.port: required", id="no-port"),
    pytest.param("metrics:\n  port: 99999\n", 6, "metrics.port: 99999 is out of range (0 to 65535)", id="port-range"),
    pytest.param("metrics:\n  port: {http}\n", 6, "metrics.port: {http} is http.port", id="the-http-port"),
    pytest.param("metrics:\n  port: 9100\n  path: /m\n", 7, "metrics.path: unknown key", id="unknown-key"),
    pytest.param("metrics: 9100\n", 5, "metrics: expected a mapping", id="not-a-mapping"),
])
def test_a_bad_metrics_section_is_named_by_file_line_field(tmp_path, section, line, message):
    http_port = free_port()
    (tmp_path / "data").mkdir()
    path = tmp_path / "bootd.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n"
                    f"http:\n  address: 127.0.0.1\n  port: {http_port}\n"  # lines 2-4; the section starts on 5
                    + section.format(http=http_port))
    result = subprocess.run([sys.executable, "-m", "appliance", "run", "-c", str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"bootd.yaml:{line}: {message.format(http=http_port)}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_promtool_is_here():
    assert shutil.which(promtool()), "promtool: from Debian's prometheus package (tests/setup.sh installs it)"
