"""The lease journal's durability rule, proved the way it fails in real life: bootd is killed (SIGKILL) while a
load generator runs whole DISCOVER-OFFER-REQUEST-ACK exchanges as fast as bootd answers, and every lease the
clients saw ACKed is in what the next start reads (no ACKed lease is ever lost)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.dhcp.leases import LeaseTable
from tests.bootd_process import BootdProcess
from tests.integration.test_http import write
from tests.netns import NetLab, _end_group

ROOT = Path(__file__).parents[2]


@pytest.fixture
def wide_lab():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with NetLab(f"lj{os.getpid() % 100000}", server_address="10.98.0.1/16") as lab:
        yield lab


def acked(path: Path) -> dict[str, str]:
    """MAC -> address of every ACK the clients received (whole lines only: the generator may be mid-write)."""
    text = path.read_text() if path.exists() else ""
    lines = text.split("\n")[:-1]
    return dict(line.split() for line in lines)


def test_no_acked_lease_is_lost_when_bootd_is_killed_under_load(wide_lab, tmp_path):
    lab = wide_lab
    client = lab.add_client()
    data = tmp_path / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/k"}})
    write(data / "groups/default.json", {"id": "default", "profile": "p"})
    config = tmp_path / "bootd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nhttp:\n  address: {lab.server_ip}\n  port: 8080\n"
                      f"  data_dir: {data}\ndhcp:\n  mode: authoritative\n  subnet: 10.98.0.0/16\n"
                      "  range: [10.98.0.10, 10.98.255.250]\n  lease: 1h\n")
    log = tmp_path / "acked.txt"
    seen: dict[str, str] = {}
    for kill in range(3):
        bootd = BootdProcess(config, lab=lab, ns=lab.server_ns).start()
        before = len(acked(log))
        # new MACs each round (a different start), 32 exchanges in flight, for at most 30 s
        load = lab.start(client.ns, [sys.executable, "-m", "bench.dhcp_load", "--iface", client.ifname, "--dora",
                                     "--sequential", "--first", str(kill * 100_000), "--window", "32",
                                     "--secs", "30", "--acked", str(log)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while len(acked(log)) < before + 300 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(acked(log)) >= before + 300, "the load got fewer than 300 ACKs in 30 s"
            bootd.kill()  # mid-stream: writes in flight, REQUESTs queued, ACKs on the wire
        finally:
            _end_group(load)
        seen = acked(log)
        on_disk = {lease.mac: str(lease.ip) for lease in LeaseTable.load(tmp_path / "state/leases.json").leases(0)}
        lost = {mac: ip for mac, ip in seen.items() if on_disk.get(mac) != ip}
        assert not lost, f"{len(lost)} ACKed leases not on disk after kill -9 #{kill + 1}, e.g. {list(lost.items())[:3]}"
    assert len(seen) >= 900
