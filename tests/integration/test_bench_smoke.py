"""The benchmarks' smoke pass: each runs briefly and checks that bootd and its peer answer identically.
No performance is asserted here (bench/ prints ratios; bench/results/ keeps them)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks run in a namespace of their own: root")
def test_http_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.http", "--smoke", "--work", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answers identical: yes" in result.stdout
    assert "50MB c16" in result.stdout and "ipxe c16" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks run in namespaces of their own: root")
def test_dhcp_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.dhcp", "--smoke", "--work", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answers checked: yes" in result.stdout
    assert "OFFER checked: bootd proxy: undionly.kpxe" in result.stdout
    assert "OFFER checked: dnsmasq authoritative: undionly.kpxe" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks run in namespaces of their own: root")
def test_tftp_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.tftp", "--smoke", "--work", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answers identical: yes" in result.stdout and "64x1MB ws8" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks run in namespaces of their own: root")
def test_dns_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.dns", "--smoke", "--work", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answers identical: yes" in result.stdout and "cap 40%" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmarks run in namespaces of their own: root")
def test_bootstorm_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.bootstorm", "--smoke", "--work", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every machine reported: yes" in result.stdout
