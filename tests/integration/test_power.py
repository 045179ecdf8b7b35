"""`bootd power` and `bootd reprovision` against a real IPMI BMC (OpenIPMI's ipmi_sim on loopback, whose
chassis-control program keeps the power and the boot device in files), through the running daemon's
read-write API: what the CLI prints agrees with the BMC; a wrong password, a BMC that does not answer, an
unknown name, a machine without `bmc:` and a BMC that refuses the one-time boot override each fail on one
line (the last one is not power-cycled); a client certificate from another CA reaches no BMC; a reload
changes which BMC a machine has; no password in the log, the CLI's output or the machines' JSON.
(tests/e2e/test_power.py boots QEMU machines this way, over IPMI and Redfish.)"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.e2e.test_power import EMU, LAN_CONF, lines_by_machine

ROOT = Path(__file__).parents[2]
PASSWORD, WRONG = "loop-Secret-1618", "loop-Wrong-3141"

# ipmi_sim's chassis-control program, with files for the machine: power is the file `on`, the boot device
# the file `boot` (consumed by the next power on, as a one-time IPMI boot flag is), each power on logged.
CHASSIS = """#!/bin/sh
dir='{dir}'
op=$2; shift 2
while [ $# -gt 0 ]; do
  case "$op:$1" in
    get:power) if [ -f "$dir/on" ]; then echo power:1; else echo power:0; fi; shift ;;
    get:boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)"; shift ;;
    set:boot) [ -f "$dir/refuse-boot" ] && exit 1; echo "$2" > "$dir/boot"; shift 2 ;;
    set:power)
      if [ "$2" = 1 ] && [ ! -f "$dir/on" ]; then
        echo "on from $(cat "$dir/boot" 2>/dev/null || echo disk)" >> "$dir/boots"; rm -f "$dir/boot"; touch "$dir/on"
      elif [ "$2" = 0 ]; then rm -f "$dir/on"; fi
      shift 2 ;;
    *) shift ;;
  esac
done
"""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bmc(tmp_path):
    if shutil.which("ipmi_sim") is None:
        pytest.skip("ipmi_sim (Debian's openipmi) is not installed")
    directory = tmp_path / "bmc"
    directory.mkdir()
    chassis = directory / "chassis"
    chassis.write_text(CHASSIS.format(dir=directory))
    chassis.chmod(0o700)
    port = free_port(socket.SOCK_DGRAM)
    (directory / "lan.conf").write_text(LAN_CONF.format(name="loop", address="127.0.0.1", port=port, chassis=chassis,
                                                        password=PASSWORD))
    (directory / "cmd.emu").write_text(EMU)
    sim = subprocess.Popen(["ipmi_sim", "-n", "-c", str(directory / "lan.conf"), "-f", str(directory / "cmd.emu"),
                            "-s", str(directory / "state")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    # a UDP socket that never answers: a BMC that is there and silent
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        yield directory, port, silent.getsockname()[1]
    finally:
        silent.close()
        sim.send_signal(signal.SIGKILL)
        sim.wait()


def secret(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def write_config(tmp: Path, port: int, silent_port: int, *, node_port: int | None = None) -> Path:
    ipmi = "{{protocol: ipmi, address: 127.0.0.1, port: {port}, username: admin, password_file: {file}}}"
    good, wrong = secret(tmp, "good.pw", PASSWORD), secret(tmp, "wrong.pw", WRONG)
    (tmp / "bootd.yaml").write_text(
        f"state_dir: {tmp}\nhttp: {{address: 127.0.0.1, port: 0, data_dir: {tmp / 'data'}}}\n"
        f"api: {{address: 127.0.0.1, port: 0, cert_file: {tmp / 'tls/server.crt'}, key_file: {tmp / 'tls/server.key'}, "
        f"ca_file: {tmp / 'tls/ca.crt'}}}\n"
        "machines:\n"
        f'  - {{name: node, mac: "52:54:00:f1:00:01", bmc: {ipmi.format(port=node_port or port, file=good)}}}\n'
        f'  - {{name: wrongpw, mac: "52:54:00:f1:00:02", bmc: {ipmi.format(port=port, file=wrong)}}}\n'
        f'  - {{name: silent, mac: "52:54:00:f1:00:03", bmc: {ipmi.format(port=silent_port, file=good)}}}\n'
        f'  - {{name: plain, mac: "52:54:00:f1:00:04"}}\n')
    return tmp / "bootd.yaml"


class Cli:
    def __init__(self, tmp: Path, endpoint: str) -> None:
        self.tmp, self.endpoint = tmp, endpoint
        self.outputs: list[str] = []

    def __call__(self, *args: str, cert: str = "tls/client") -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "appliance", *args, "--endpoint", self.endpoint, "--ca-file",
             str(self.tmp / "tls/ca.crt"), "--cert-file", str(self.tmp / f"{cert}.crt"), "--key-file",
             str(self.tmp / f"{cert}.key")], capture_output=True, text=True, timeout=150, cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "SUDO_USER": "bob"})
        self.outputs.append(result.stdout + result.stderr)
        return result


def test_power_through_the_daemon_agrees_with_the_bmc_and_failures_stay_apart(bmc, tmp_path):
    directory, port, silent_port = bmc
    (tmp_path / "data").mkdir()
    for out in ("tls", "other"):
        subprocess.run([sys.executable, "-m", "appliance", "certs", "init", "--san", "IP:127.0.0.1", "--out",
                        str(tmp_path / out)], check=True, capture_output=True, cwd=ROOT)
    bootd = BootdProcess(write_config(tmp_path, port, silent_port), log_level="debug").start()
    endpoint = next(a for a in bootd.addresses if a.startswith("grpcs://"))[len("grpcs://"):]
    cli = Cli(tmp_path, endpoint)
    try:
        assert lines_by_machine(cli("power", "status", "node").stdout) == {"node": "off"}
        on = cli("power", "on", "node")
        assert (on.returncode, lines_by_machine(on.stdout)) == (0, {"node": "powered on"}), on
        assert (directory / "on").exists() and (directory / "boots").read_text() == "on from disk\n"

        result = cli("reprovision", "node", "wrongpw", "silent", "plain", "nosuch")
        assert result.returncode == 1, result
        ok, failed = lines_by_machine(result.stdout), lines_by_machine(result.stderr)
        assert list(ok) == ["node"] and set(failed) == {"wrongpw", "silent", "plain", "nosuch"}, result
        assert ok["node"] == f"ipmi 127.0.0.1:{port}: boot device pxe, next boot only (legacy), powered off, powered on"
        assert (directory / "boots").read_text() == "on from disk\non from pxe\n"  # the override was used once
        assert "wrong username or password" in failed["wrongpw"]
        assert failed["silent"].startswith(f"ipmi 127.0.0.1:{silent_port}: ")
        assert "no bmc: in bootd.yaml" in failed["plain"] and "no machine of that name" in failed["nosuch"]

        status = cli("power", "status", "--all")  # every machine with a bmc, the silent one too
        assert status.returncode == 1 and lines_by_machine(status.stdout) == {"node": "on"}, status
        assert set(lines_by_machine(status.stderr)) == {"wrongpw", "silent"}
        assert cli("power", "cycle", "node").returncode == 0
        assert (directory / "boots").read_text().splitlines()[-1] == "on from disk"  # once means once
        off = cli("power", "off", "node")
        assert lines_by_machine(off.stdout) == {"node": "powered off"} and not (directory / "on").exists()

        # the progress: the request (who asked) opens the node's timeline; the power bootd last saw
        with urllib.request.urlopen(bootd.url("/api/v1/machines/52:54:00:f1:00:01"), timeout=10) as response:
            view = json.load(response)
        assert view["stages"][0]["stage"] == "power" and view["power"]["state"] == "off", view
        assert any("PXE boot requested by bob (client 'bootd-client' at 127.0.0.1)" in e["detail"]
                   for e in view["events"]), view["events"]
        with urllib.request.urlopen(bootd.url("/api/v1/machines"), timeout=10) as response:
            listing = response.read().decode()
        table = subprocess.run([sys.executable, "-m", "appliance", "status", "--endpoint", bootd.base_url],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
        node_row = next(line for line in table.stdout.splitlines() if line.startswith("node "))
        assert "power (power off)" in node_row, table.stdout  # bootd status: the stage, and the power last seen

        # a BMC that refuses the one-time override: said, and the machine is not power-cycled into its disk
        before = (directory / "boots").read_text()
        (directory / "refuse-boot").touch()
        refused = cli("reprovision", "node")
        assert refused.returncode == 1 and "boot device pxe failed" in lines_by_machine(refused.stderr)["node"], refused
        assert (directory / "boots").read_text() == before and not (directory / "on").exists()
        (directory / "refuse-boot").unlink()

        # a certificate from another CA: refused before any BMC is asked
        refused = cli("power", "on", "node", cert="other/client")
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused
        assert (directory / "boots").read_text() == before and not (directory / "on").exists()

        # a reload: the node's bmc now points at the silent port
        write_config(tmp_path, port, silent_port, node_port=silent_port)
        mark = len(bootd.lines)
        bootd.send(signal.SIGHUP)
        bootd.wait_for_log(lambda l: l.get("message", "").startswith("reloaded"), start=mark)
        moved = cli("power", "status", "node")
        assert moved.returncode == 1 and f"127.0.0.1:{silent_port}" in moved.stderr, moved
    finally:
        assert bootd.stop() == 0  # first, so the log below holds every line bootd wrote
        log = "\n".join(json.dumps(line) for line in bootd.lines)
    for password in (PASSWORD, WRONG):
        assert password not in log + "\n".join(cli.outputs) + listing
