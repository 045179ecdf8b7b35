"""DNS driven by dig (bind9-dnsutils) against `bootd run` on loopback; forwarding to a dnsmasq upstream;
100,000 mutated queries."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from dnslib import DNSRecord

from tests.bootd_process import BootdProcess

CONFIG = """\
domain: example.com
listen: {{address: 10.77.0.1}}
names: {{provisioner: matchbox, controllers: k8s, workers: tectonic}}
http: {{address: 127.0.0.1, port: 0, data_dir: {data}}}
dns:
  address: 127.0.0.1
  port: 0
  records:
{records}
{forward}
machines:
  - {{name: node1, mac: "52:54:00:a1:9c:ae", ip: 10.77.0.21, role: controller}}
  - {{name: node2, mac: "52:54:00:b2:2f:86", ip: 10.77.0.22, role: worker}}
  - {{name: node3, mac: "52:54:00:c3:61:77", ip: "fd77::23", role: worker}}
"""
MANY = "".join(f"    - {{name: many, type: A, value: 10.1.0.{i}}}\n" for i in range(1, 61))


def start(tmp: Path, forward: str = "") -> BootdProcess:
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "bootd.yaml").write_text(CONFIG.format(data=tmp / "data", records=MANY, forward=forward))
    bootd = BootdProcess(tmp / "bootd.yaml").start()
    bootd.dns_port = int(next(a for a in bootd.addresses if a.startswith("dns://")).rsplit(":", 1)[1])
    return bootd


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    bootd = start(tmp_path_factory.mktemp("dns"))
    yield bootd
    assert bootd.stop() == 0


def dig(bootd: BootdProcess, *args: str) -> str:
    result = subprocess.run(["dig", "@127.0.0.1", "-p", str(bootd.dns_port), "+time=2", "+tries=1", *args],
                            capture_output=True, text=True, timeout=30)
    return result.stdout


def short(bootd: BootdProcess, *args: str) -> list[str]:
    return sorted(dig(bootd, "+short", *args).split())


def flags_and_status(output: str) -> tuple[str, str]:
    header = next(line for line in output.splitlines() if "->>HEADER<<-" in line)
    flags = next(line for line in output.splitlines() if line.startswith(";; flags:"))
    return header.split("status: ")[1].split(",")[0], flags.split(";")[2].split(":")[1].strip()


def test_a_aaaa_ptr_soa_ns(dns):
    assert short(dns, "node1.example.com") == ["10.77.0.21"]
    assert short(dns, "matchbox.example.com") == ["10.77.0.1"]
    assert short(dns, "k8s.example.com") == ["10.77.0.21"]
    assert short(dns, "tectonic.example.com", "AAAA") == ["fd77::23"]
    assert short(dns, "-x", "10.77.0.22") == ["node2.example.com."]
    assert short(dns, "-x", "fd77::23") == ["node3.example.com."]
    assert short(dns, "example.com", "NS") == ["matchbox.example.com."]
    assert dig(dns, "+short", "example.com", "SOA").split()[:2] == ["matchbox.example.com.", "hostmaster.example.com."]


@pytest.mark.parametrize("args, status, has_answer, authority", [
    pytest.param(["node1.example.com"], "NOERROR", True, False, id="hit"),
    pytest.param(["node1.example.com", "AAAA"], "NOERROR", False, True, id="nodata"),
    pytest.param(["nothere.example.com"], "NXDOMAIN", False, True, id="nxdomain"),
    pytest.param(["www.example.org"], "REFUSED", False, False, id="refused"),
])
def test_status_flags_and_soa(dns, args, status, has_answer, authority):
    output = dig(dns, "+norecurse", *args)
    got_status, flags = flags_and_status(output)
    assert got_status == status
    assert ("aa" in flags.split()) is (status != "REFUSED") and "ra" not in flags.split() and "rd" not in flags.split()
    assert ("ANSWER SECTION" in output) is has_answer
    assert ("AUTHORITY SECTION" in output and "SOA" in output) is authority


def test_recursion_desired_is_not_granted(dns):
    _, flags = flags_and_status(dig(dns, "node1.example.com"))
    assert "rd" in flags.split() and "ra" not in flags.split()


def test_case_is_preserved_in_the_question(dns):
    output = dig(dns, "NoDe1.ExAmple.COM")
    assert ";NoDe1.ExAmple.COM." in output and "10.77.0.21" in output


def test_truncation_over_udp_and_full_answer_over_tcp(dns):
    output = dig(dns, "+ignore", "+bufsize=512", "many.example.com")
    assert "tc" in flags_and_status(output)[1].split() and "ANSWER SECTION" not in output
    assert len(short(dns, "+tcp", "many.example.com")) == 60
    assert len(short(dns, "many.example.com")) == 60  # dig retries over TCP by itself


def test_tcp_answers_and_idle_connections_are_closed(dns):
    assert short(dns, "+tcp", "node2.example.com") == ["10.77.0.22"]
    sock = socket.create_connection(("127.0.0.1", dns.dns_port), timeout=30)
    try:
        sock.sendall(b"\x00\x05hello")  # a length prefix promising more than is sent: a slow client
        assert short(dns, "node1.example.com") == ["10.77.0.21"]  # UDP is not stalled
        sock.settimeout(20)
        assert sock.recv(10) == b""  # closed after the idle timeout
    finally:
        sock.close()


def test_forwarding_to_an_upstream(tmp_path):
    upstream_port = free_udp_port()
    upstream = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", f"--port={upstream_port}",
                                 "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                                 "--address=/outside.test/192.0.2.99", "--log-facility=-"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bootd = start(tmp_path, f"  forward: [127.0.0.1:{upstream_port}]\n")
    try:
        output = dig(bootd, "www.outside.test")
        assert "192.0.2.99" in output
        assert "ra" in flags_and_status(output)[1].split()
        assert short(bootd, "+tcp", "www.outside.test") == ["192.0.2.99"]
        assert short(bootd, "node1.example.com") == ["10.77.0.21"]  # the zone is still ours
    finally:
        assert bootd.stop() == 0
        upstream.terminate()
        upstream.wait(10)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stats(bootd: BootdProcess) -> dict:
    with urllib.request.urlopen(bootd.url("/api/v1/stats"), timeout=10) as response:
        return json.load(response)


def rss_kib(bootd: BootdProcess) -> int:
    line = next(l for l in Path(f"/proc/{bootd.proc.pid}/status").read_text().splitlines() if l.startswith("VmRSS"))
    return int(line.split()[1])


def test_hundred_thousand_mutated_queries(dns):
    rng = random.Random(8)
    seeds = [bytes(DNSRecord.question(name, qtype).pack()) for name, qtype in (
        ("node1.example.com", "A"), ("example.com", "SOA"), ("21.0.77.10.in-addr.arpa", "PTR"),
        ("nothere.example.com", "AAAA"), ("www.example.org", "A"))]
    before = rss_kib(dns)
    sent_total = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    barrier = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    barrier.settimeout(30)
    target = ("127.0.0.1", dns.dns_port)
    while sent_total < 100_000:
        # batches of 100 stay far below the server socket's buffer (~200 KB, ~1 KB a datagram in the kernel),
        # and a good query after each batch is answered only once bootd has read every datagram before it:
        # nothing is dropped for lack of buffer, however slow the machine is
        for _ in range(100):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 6)):
                roll = rng.random()
                if roll < 0.5 and data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
                elif roll < 0.65 and len(data) > 1:
                    del data[rng.randrange(1, len(data)):]
                elif roll < 0.8:
                    position = rng.randrange(12, max(13, len(data)))
                    data[position:position] = b"\xc0" + bytes([rng.randrange(256)])  # compression pointers
                else:
                    data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
            sock.sendto(bytes(data), target)
            sent_total += 1
        question = DNSRecord.question("node1.example.com", "A")
        barrier.sendto(question.pack(), target)
        while DNSRecord.parse(barrier.recv(4096)).header.id != question.header.id:
            pass
        try:
            while sock.recv(4096):  # drain answers so our buffer never fills
                pass
        except (BlockingIOError, ConnectionRefusedError):
            pass
    sock.close()
    barrier.close()
    assert short(dns, "node1.example.com") == ["10.77.0.21"]
    counters = stats(dns)["dns"]
    assert counters["internal_errors"] == 0, counters
    assert counters["queries"] >= sent_total + sent_total // 100, counters  # the mutated ones and the barriers
    assert rss_kib(dns) - before < 40_000, "memory grew by more than 40 MB"
