"""The benchmarks' smoke pass: each runs briefly and checks that bootd and its peer answer alike (or, for
the boot storm, that every machine reports). No performance is asserted here: bench/ prints ratios and
bench/results/ keeps them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks run in namespaces of their own: root")
@pytest.mark.parametrize("benchmark, expected", [
    ("http", ["answers identical: yes", "50MB c16", "ipxe c16"]),
    ("dhcp", ["answers checked: yes", "OFFER checked: bootd proxy: undionly.kpxe",
              "OFFER checked: dnsmasq authoritative: undionly.kpxe"]),
    ("tftp", ["answers identical: yes", "64x1MB ws8"]),
    ("dns", ["answers identical: yes", "cap 40%"]),
    ("bootstorm", ["every machine reported: yes"]),
    ("kea", ["answers checked: yes", "DORA 100/s"]),
    ("fleet", ["every machine completed: yes", "N=20 bootd: 20/20 booted"]),
    ("replicas", ["every client got an address, none twice: yes", "etcd x2: 400/400 addresses"]),
    ("startup", ["every service answered: yes", "this: start to ready median"]),
])
def test_benchmark_smoke(tmp_path, benchmark, expected):
    result = subprocess.run([sys.executable, "-m", f"bench.{benchmark}", "--smoke", "--work", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
