"""The fuzz campaign's suite version (bench/fuzz.py): 10^4 mutated and random packets to each of DHCP 67
and 4011, TFTP 69 and a transfer's port, DNS over UDP and TCP, 10^3 malformed HTTP requests with 2,000
idle connections held and slow senders, 10^2 garbage gRPC connections; and SIGHUPs under good load.
Every good request interleaved (one every 1,000 packets, and before and after each target) must be
answered exactly right, bootd must log no unhandled exception, count no internal error and stay under
its RSS bound. The packets are the same every run (--seed)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
RSS_BOUND_MIB = 256

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the campaign runs in namespaces of its own: root")


def run(tmp_path: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "bench.fuzz", "--smoke", "--work", str(tmp_path), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_fuzz_campaign_every_good_request_answered_no_exception_rss_bounded(tmp_path):
    out = run(tmp_path, "--packets", "10000", "--seed", "1", "--rss-bound-mib", str(RSS_BOUND_MIB))
    sent = int(re.search(r"^packets sent: (\d+)$", out, re.MULTILINE).group(1))
    assert sent == 6 * 10_000 + 1_000 + 100, out
    reached = {t: (int(n), int(of)) for t, n, of in re.findall(r"(\S+) (\d+)/(\d+)", re.search(
        r"^reached bootd.*: (.*)$", out, re.MULTILINE).group(1))}
    for target in ("dhcp67", "dhcp4011", "tftp69", "dns-udp"):
        assert reached[target][0] >= reached[target][1], out  # every datagram was read by bootd
    # over TCP, a length that lies takes the next message (or more) with it
    assert reached["dns-tcp"][0] >= 0.8 * reached["dns-tcp"][1], out
    good, total = map(int, re.search(r"^good answers: (\d+)/(\d+)$", out, re.MULTILINE).groups())
    assert good == total and total >= 6 * 12 + 2 * 2, out
    assert "unhandled exceptions: 0\n" in out, out
    assert "internal errors: {'dhcp': 0, 'tftp': 0, 'dns': 0}" in out, out
    peak = float(re.search(r"^peak RSS: ([\d.]+) MiB", out, re.MULTILINE).group(1))
    assert peak < RSS_BOUND_MIB, out
    assert "result: PASS" in out


def test_sighups_under_good_load_fail_no_request(tmp_path):
    out = run(tmp_path, "--sighup", "--sighups", "10", "--sighup-interval", "0.5")
    assert "sighups sent: 10" in out, out
    assert "reloads done: 10, refused: 0" in out, out
    good, total = map(int, re.search(r"^good answers: (\d+)/(\d+)", out, re.MULTILINE).groups())
    assert good == total and total > 0, out
    assert "unhandled exceptions: 0" in out, out
    assert "result: PASS" in out
