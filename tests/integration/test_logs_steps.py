"""The line per machine step, as the real daemon writes it at its default level: each PXE client's DHCP step
is one line with the right fields (JSON) or the right text, and lines come out in the order things happened,
the step lines (queued without a LogRecord, appliance/logs.py) and the ordinary records alike."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.integration.test_dhcp import FIRMWARE, probe, pxe_packet
from tests.integration.test_http import write

pytestmark = pytest.mark.netns
ROOT = Path(__file__).parents[2]
ARCHS = {0: "arch 0 (BIOS): tftp:undionly.kpxe undionly.kpxe", 7: "arch 7 (EFI_X64): binl:ipxe.efi ipxe.efi",
         9: "arch 9 (EFI_BC): binl:ipxe.efi ipxe.efi"}


def config(lab, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/k"}})
    write(data / "groups/default.json", {"id": "default", "profile": "p"})
    for name, content in FIRMWARE.items():
        write(tmp_path / "state/firmware" / name, content)
    path = tmp_path / "bootd.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nhttp:\n  address: {lab.server_ip}\n  port: 8080\n"
                    f"  data_dir: {data}\ndhcp:\n  mode: proxy\n")
    return path


def clients(first: int, count: int) -> list[tuple[str, int]]:
    """(MAC, architecture) of `count` new PXE clients, BIOS and UEFI mixed."""
    return [(f"52:54:00:00:20:{first + i:02x}", list(ARCHS)[(first + i) % len(ARCHS)]) for i in range(count)]


def discover_all(lab, client, machines: list[tuple[str, int]], *extra: bytes) -> None:
    packets = [pxe_packet(mac, "discover", arch, xid=0x5000 + i) for i, (mac, arch) in enumerate(machines)]
    answers = probe(lab, client.ns, *packets, *extra, expect=len(machines), iface=client.ifname)
    assert len(answers) == len(machines)


def test_each_step_is_one_json_line_with_its_fields_in_order(netlab, tmp_path):
    client = netlab.add_client("192.0.2.10/24")
    bootd = BootdProcess(config(netlab, tmp_path), lab=netlab, ns=netlab.server_ns)
    bootd.argv = [arg for arg in bootd.argv if arg not in ("--log-level", "info")]  # bootd's default level
    bootd.start()
    try:
        before, after = clients(0, 6), clients(6, 6)
        discover_all(netlab, client, before)
        bootd.wait_for_log(lambda line: line.get("mac") == before[-1][0])
        bootd.send(signal.SIGHUP)  # an ordinary record (logging's path) between two runs of step lines
        bootd.wait_for_log(lambda line: line.get("message", "").startswith("reloaded "))
        unknown_arch = pxe_packet("52:54:00:00:20:ff", "discover", 0x1234)  # a real machine bootd cannot boot
        discover_all(netlab, client, after, unknown_arch)
        bootd.wait_for_log(lambda line: line.get("mac") == "52:54:00:00:20:ff")
        for mac, _arch in after:
            bootd.wait_for_log(lambda line, mac=mac: line.get("mac") == mac)
    finally:
        assert bootd.stop() == 0
    lines = bootd.lines
    steps = [line for line in lines if line.get("logger") == "appliance.events"]
    for mac, arch in before + after:
        [line] = [step for step in steps if step["mac"] == mac]
        assert line == {"time": line["time"], "level": "info", "logger": "appliance.events",
                        "message": f"{mac} dhcp: proxy OFFER: {ARCHS[arch]}", "mac": mac, "peer": "192.0.2.10",
                        "stage": "dhcp", "ok": True}
    [refused] = [step for step in steps if step["mac"] == "52:54:00:00:20:ff"]
    assert refused["level"] == "warning" and refused["ok"] is False and refused["stage"] == "dhcp"
    assert refused["message"] == "52:54:00:00:20:ff dhcp: not answered: unsupported-arch: arch 4660"
    # the order things happened: the first clients in the order they asked, the reload, the next ones
    order = [line["mac"] if line.get("logger") == "appliance.events" else "reloaded" for line in lines
             if line.get("logger") == "appliance.events" or line.get("message", "").startswith("reloaded ")]
    assert order == [mac for mac, _ in before] + ["reloaded"] + [mac for mac, _ in after] + ["52:54:00:00:20:ff"]
    times = [line["time"] for line in lines if "time" in line]
    assert times == sorted(times)  # written in the order they were logged


def test_each_step_is_one_text_line_at_the_default_level(netlab, tmp_path):
    client = netlab.add_client("192.0.2.10/24")
    log = tmp_path / "bootd.log"
    with open(log, "w") as out:  # no --log-format, no --log-level: what `bootd run` does by default
        proc = netlab.start(netlab.server_ns, [sys.executable, "-m", "appliance", "run", "-c",
                                               str(config(netlab, tmp_path))], stderr=out, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while "bootd ready" not in log.read_text():  # waiting for a line, not for a while
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        machines = clients(0, 6)
        discover_all(netlab, client, machines)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    text = log.read_text()
    assert "Traceback" not in text
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    steps = [line for line in text.splitlines() if " appliance.events: " in line]
    assert len(steps) == len(machines)
    for line, (mac, arch) in zip(steps, machines):  # one each, in the order the clients asked
        assert re.fullmatch(f"{stamp} INFO appliance.events: {mac} dhcp: proxy OFFER: {re.escape(ARCHS[arch])}", line), line
