"""Machines that boot from disk are reprovisioned through their BMCs: `bootd reprovision` asks a real IPMI
BMC and a real Redfish BMC for a one-time PXE boot and a power cycle, each QEMU machine (TCG) PXE-boots
through bootd and reports; `bootd power` reads and changes their power as the emulators see it; a wrong
password, an unreachable BMC and a machine without `bmc:` each fail on one line of their own while the
others are reprovisioned, and no password appears anywhere bootd writes or answers.

Everything runs inside one network namespace (tests/netns.py) on its bridge:
- IPMI: OpenIPMI's `ipmi_sim` (a complete IPMI 2.0 LAN BMC), whose chassis-control program (below) starts
  QEMU from the empty disk, or with `-boot order=n` when the boot device was set to PXE, once.
  (virtualbmc was the first choice and does not work with today's pyghmi client: its BMC answers pyghmi's
  SHA-256 RAKP proposal with a SHA-1 suite and the client fails in RAKP2; and it does not answer the RMCP
  ping python-ipmi sends first.)
- Redfish: sushy-tools' `sushy-emulator` over libvirt domains (libvirtd from tests/libvirtd.py), with HTTP
  basic authentication over HTTPS (a certificate bootd checks against `ca_file`, from `bootd certs init`);
  its BootSourceOverride moves the NIC first in the domain's boot order.
- bootd: authoritative DHCP, TFTP, HTTP and the read-write API (mutual TLS) that `bootd power` and
  `bootd reprovision` talk to; the CLI runs with SUDO_USER=alice so the progress names who asked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.e2e.test_boot import make_lab_config
from tests.libvirtd import Libvirtd
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
ROOT = Path(__file__).parents[2]
NAMESPACE = f"bpw{os.getpid() % 100000}"
BOOT_SECONDS = 300  # reprovision -> report: TCG, beside other engineers' VMs (alone: ~40 s)
IPMI_PORT, REDFISH_PORT = 6230, 8000
PASSWORDS = {"ipmi": "ipmi-Secret-4711", "redfish": "redfish-Secret-0815", "wrong": "not-the-Secret-99",
             "dead": "dead-Secret-1234"}
MACHINES = {  # name: (mac, profile)
    "ipmi1": ("52:54:00:e4:00:01", "profile-a"),
    "redfish1": ("52:54:00:e4:00:02", "profile-b"),
    "badpass": ("52:54:00:e4:00:03", "profile-a"),  # the Redfish BMC, a wrong password
    "deadbmc": ("52:54:00:e4:00:04", "profile-a"),  # an IPMI address nothing answers on
    "nobmc": ("52:54:00:e4:00:05", "profile-a"),
}

# ipmi_sim's chassis-control program (OpenIPMI's ipmi_sim_chassiscontrol interface): `<dev> get power|boot`,
# `<dev> set power 0|1`, `set boot pxe|default|...`. Power on starts QEMU (daemonized, pid file) from the disk,
# or from the network once when the boot device was set to pxe: IPMI's boot flags hold for the next boot.
CHASSIS = """#!/bin/sh
dir='{dir}'
running() {{ [ -f "$dir/qemu.pid" ] && kill -0 "$(cat "$dir/qemu.pid")" 2>/dev/null; }}
op=$2; shift 2
while [ $# -gt 0 ]; do
  case "$op:$1" in
    get:power) if running; then echo power:1; else echo power:0; fi; shift ;;
    get:boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)"; shift ;;
    set:boot) echo "$2" > "$dir/boot"; echo "boot $2" >> "$dir/chassis.log"; shift 2 ;;
    set:power)
      if [ "$2" = 1 ] && ! running; then
        if [ "$(cat "$dir/boot" 2>/dev/null)" = pxe ]; then
          order="{pxe_first}"; echo "power on, network first" >> "$dir/chassis.log"
        else
          order="{disk_only}"; echo "power on, disk only" >> "$dir/chassis.log"
        fi
        rm -f "$dir/boot"
        {qemu} $order -boot strict=on -daemonize -pidfile "$dir/qemu.pid" || exit 1
      elif [ "$2" = 0 ] && running; then
        pid=$(cat "$dir/qemu.pid"); kill "$pid"; echo "power off" >> "$dir/chassis.log"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      fi
      shift 2 ;;
    *) shift ;;
  esac
done
"""

LAN_CONF = """name "{name}"
set_working_mc 0x20
  startlan 1
    addr {address} {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a1b2c3d4e5f60718293a4b5c6d7e8f90
  endlan
  chassis_control "{chassis} 0x20"
  user 2 true "admin" "{password}" admin 10 none md2 md5 straight
"""

EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
mc_enable 0x20
"""

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><bios useserial='yes'/></os>
  <on_reboot>restart</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{disk}'/><target dev='hda' bus='ide'/><boot order='1'/>
    </disk>
    <interface type='bridge'><source bridge='br0'/><mac address='{mac}'/><model type='e1000'/></interface>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
  </devices>
</domain>
"""


def empty_disk(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(1024 * 1024)  # zeros: no boot signature, so the firmware finds nothing to boot
    return path


def secret(tmp: Path, name: str, password: str) -> Path:
    path = tmp / f"{name}.password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{text!r} not in {path} within {timeout:g} s:\n" + (
            path.read_text(errors="replace")[-1500:] if path.exists() else "(missing)")
        time.sleep(0.5)


def write_config(tmp: Path, tls: Path) -> Path:
    config = make_lab_config(tmp, {name: (mac, "bios", "e1000", profile) for name, (mac, profile) in MACHINES.items()})
    text = config.read_text()
    bmc = {
        "ipmi1": f"{{protocol: ipmi, address: 192.0.2.1, port: {IPMI_PORT}, username: admin, "
                 f"password_file: {secret(tmp, 'ipmi1', PASSWORDS['ipmi'])}}}",
        "redfish1": f"{{protocol: redfish, address: 192.0.2.1, port: {REDFISH_PORT}, ca_file: {tls / 'ca.crt'}, "
                    f"username: admin, system: redfish1, password_env: BOOTD_TEST_REDFISH_PASSWORD}}",
        "badpass": f"{{protocol: redfish, address: 192.0.2.1, port: {REDFISH_PORT}, ca_file: {tls / 'ca.crt'}, "
                   f"username: admin, system: badpass, password_file: {secret(tmp, 'badpass', PASSWORDS['wrong'])}}}",
        "deadbmc": f"{{protocol: ipmi, address: 192.0.2.254, username: admin, "
                   f"password_file: {secret(tmp, 'deadbmc', PASSWORDS['dead'])}}}",
    }
    for name, value in bmc.items():
        mac, profile = MACHINES[name]
        line = f'  - {{name: {name}, mac: "{mac}", profile: {profile}}}\n'
        assert line in text
        text = text.replace(line, f'  - {{name: {name}, mac: "{mac}", profile: {profile}, bmc: {value}}}\n')
    text += (f"api: {{address: 192.0.2.1, port: 8081, cert_file: {tls / 'server.crt'}, key_file: {tls / 'server.key'}, "
             f"ca_file: {tls / 'ca.crt'}}}\n")
    config.write_text(text)
    return config


class Cli:
    """`bootd power` / `bootd reprovision` as an operator runs them (through sudo, as alice)."""

    def __init__(self, lab: NetLab, tls: Path) -> None:
        self.lab, self.tls = lab, tls
        self.outputs: list[str] = []

    def __call__(self, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "appliance", *args, "--endpoint", "192.0.2.1:8081",
                "--ca-file", str(self.tls / "ca.crt"), "--cert-file", str(self.tls / "client.crt"),
                "--key-file", str(self.tls / "client.key")]
        result = self.lab.run(self.lab.server_ns, ["env", "SUDO_USER=alice", f"PYTHONPATH={ROOT}", *argv],
                              timeout=timeout, cwd=ROOT)
        self.outputs.append(result.stdout + result.stderr)
        return result


def lines_by_machine(text: str) -> dict[str, str]:
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in text.splitlines() if ":" in line}


@pytest.fixture
def qemu():
    for tool in ("qemu-system-x86_64", "ipmi_sim", "libvirtd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if shutil.which("sushy-emulator", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("sushy-tools is not installed")


def test_reprovision_over_ipmi_and_redfish_while_broken_bmcs_fail_alone(qemu, tmp_path):
    started = time.monotonic()
    tls = tmp_path / "tls"
    subprocess.run([sys.executable, "-m", "appliance", "certs", "init", "--san", "IP:192.0.2.1", "--out", str(tls)],
                   check=True, capture_output=True, cwd=ROOT)
    config = write_config(tmp_path, tls)
    with NetLab(NAMESPACE, bridge=True) as lab:
        # --- the IPMI machine: ipmi_sim, its chassis program, QEMU from the empty disk ---
        ipmi_dir = tmp_path / "ipmi1"
        ipmi_dir.mkdir()
        # bootindex on each device: SeaBIOS boots only what has one (strict), so the disk-only machine never
        # reaches its NIC's ROM
        qemu_argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-smp", "1", "-nodefaults", "-display", "none",
                     "-M", "pc,graphics=off", "-chardev", f"file,id=s0,path={ipmi_dir / 'serial.log'},append=on",
                     "-serial", "chardev:s0", "-drive", f"file={empty_disk(ipmi_dir / 'disk.raw')},format=raw,if=none,id=d0",
                     "-netdev", f"tap,id=n0,ifname={lab.add_tap('tapipmi')},script=no,downscript=no"]
        nic = f"e1000,netdev=n0,mac={MACHINES['ipmi1'][0]}"
        chassis = ipmi_dir / "chassis"
        chassis.write_text(CHASSIS.format(
            dir=ipmi_dir, qemu=" ".join(qemu_argv), disk_only=f"-device ide-hd,drive=d0,bootindex=1 -device {nic}",
            pxe_first=f"-device ide-hd,drive=d0,bootindex=2 -device {nic},bootindex=1"))
        chassis.chmod(0o700)
        (ipmi_dir / "lan.conf").write_text(LAN_CONF.format(name="ipmi1", address="192.0.2.1", port=IPMI_PORT,
                                                           chassis=chassis, password=PASSWORDS["ipmi"]))
        (ipmi_dir / "cmd.emu").write_text(EMU)
        lab.start(lab.server_ns, ["ipmi_sim", "-n", "-c", str(ipmi_dir / "lan.conf"), "-f", str(ipmi_dir / "cmd.emu"),
                                  "-s", str(ipmi_dir / "state")],
                  stdin=subprocess.DEVNULL, stdout=open(ipmi_dir / "ipmi_sim.log", "wb"), stderr=subprocess.STDOUT)
        libvirt = Libvirtd.start(lab.server_ns, tmp_path / "libvirt")
        try:
            # --- the Redfish machines: libvirt domains from empty disks, sushy-emulator in front of them ---
            for name in ("redfish1", "badpass"):
                xml = tmp_path / f"{name}.xml"
                xml.write_text(DOMAIN.format(name=name, mac=MACHINES[name][0], disk=empty_disk(tmp_path / f"{name}.raw"),
                                             serial=tmp_path / f"{name}.serial.log"))
                libvirt.virsh("define", str(xml))
            import bcrypt

            htpasswd = tmp_path / "htpasswd"
            htpasswd.write_text(f"admin:{bcrypt.hashpw(PASSWORDS['redfish'].encode(), bcrypt.gensalt(4)).decode()}\n")
            (tmp_path / "sushy.conf").write_text(f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n")
            lab.start(lab.server_ns, [str(Path(sys.executable).parent / "sushy-emulator"), "--config",
                                      str(tmp_path / "sushy.conf"), "-i", "192.0.2.1", "-p", str(REDFISH_PORT),
                                      "--libvirt-uri", libvirt.uri, "--ssl-certificate", str(tls / "server.crt"),
                                      "--ssl-key", str(tls / "server.key")],
                      stdin=subprocess.DEVNULL, stdout=open(tmp_path / "sushy.log", "wb"), stderr=subprocess.STDOUT)

            environment = {"BOOTD_TEST_REDFISH_PASSWORD": PASSWORDS["redfish"]}
            os.environ.update(environment)  # the daemon's environment (BootdProcess passes os.environ on)
            try:
                bootd = BootdProcess(config, lab=lab, ns=lab.server_ns, log_level="debug").start()
            finally:
                for key in environment:
                    del os.environ[key]
            cli = Cli(lab, tls)
            try:
                _prove(lab, libvirt, bootd, cli, tmp_path, ipmi_dir, started)
            finally:
                assert bootd.stop() == 0  # first, so the log below holds every line bootd wrote
                log_text = "\n".join(json.dumps(line) for line in bootd.lines)
            everything = log_text + "\n".join(cli.outputs)
            for password in PASSWORDS.values():
                assert password not in everything, "a password reached bootd's log or the CLI's output"
        finally:
            _power_off_ipmi(ipmi_dir)
            libvirt.stop()


def _power_off_ipmi(ipmi_dir: Path) -> None:
    pid_file = ipmi_dir / "qemu.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _ipmi_power(ipmi_dir: Path) -> str:
    pid_file = ipmi_dir / "qemu.pid"
    if not pid_file.exists():
        return "off"
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (ProcessLookupError, ValueError):
        return "off"
    return "on"


def _redfish_power(libvirt: Libvirtd, name: str) -> str:
    state = libvirt.virsh("domstate", name).stdout.strip()
    return {"running": "on", "shut off": "off"}.get(state, state)


def _view(lab: NetLab, mac: str) -> dict:
    return json.loads(lab.run(lab.server_ns, ["curl", "-sf", f"http://192.0.2.1:8080/api/v1/machines/{mac}"]).stdout)


def _prove(lab: NetLab, libvirt: Libvirtd, bootd: BootdProcess, cli: Cli, tmp: Path, ipmi_dir: Path,
           started: float) -> None:
    # 1. Every machine is off; `bootd power on` starts the two real ones, from their empty disks, where they sit.
    status = cli("power", "status", "ipmi1", "redfish1")
    assert status.returncode == 0, status.stderr
    assert lines_by_machine(status.stdout) == {"ipmi1": "off", "redfish1": "off"}
    on = cli("power", "on", "ipmi1", "redfish1")
    assert on.returncode == 0, on.stderr
    assert lines_by_machine(on.stdout) == {"ipmi1": "powered on", "redfish1": "powered on"}
    assert (_ipmi_power(ipmi_dir), _redfish_power(libvirt, "redfish1")) == ("on", "on")
    wait_for_text(ipmi_dir / "serial.log", "No bootable device", 120)
    wait_for_text(tmp / "redfish1.serial.log", "No bootable device", 120)
    status = cli("power", "status", "--all")
    assert status.returncode != 0  # badpass and deadbmc are among "all"
    said = lines_by_machine(status.stdout + status.stderr)
    assert said["ipmi1"] == _ipmi_power(ipmi_dir) == "on" and said["redfish1"] == _redfish_power(libvirt, "redfish1") == "on"
    for mac, _ in MACHINES.values():  # idle: bootd never saw a DHCP request from any of them
        view = _view(lab, mac)
        assert "dhcp" not in [s["stage"] for s in view["stages"]], view

    # 2. The read-only port has no power route: nobody reaches a BMC through it.
    for method, path in (("POST", f"/api/v1/machines/{MACHINES['ipmi1'][0]}/power"), ("POST", "/api/v1/power"),
                         ("GET", "/api/v1/power")):
        code = lab.run(lab.server_ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
                                       f"http://192.0.2.1:8080{path}"]).stdout
        assert code in ("404", "405"), (method, path, code)

    # 3. Reprovision all five: two PXE-boot through bootd and report; three fail, each on its own line.
    asked = time.monotonic()
    asked_at = time.time()
    result = cli("reprovision", "ipmi1", "redfish1", "badpass", "deadbmc", "nobmc")
    answered = time.monotonic() - asked
    assert result.returncode == 1, result
    ok, failed = lines_by_machine(result.stdout), lines_by_machine(result.stderr)
    assert set(ok) == {"ipmi1", "redfish1"} and set(failed) == {"badpass", "deadbmc", "nobmc"}, result
    assert "boot device pxe" in ok["ipmi1"] and "powered on" in ok["ipmi1"], ok
    assert "redfish https://192.0.2.1" in ok["redfish1"] and "boot override Pxe once" in ok["redfish1"], ok
    assert "wrong username or password" in failed["badpass"], failed
    assert "192.0.2.254" in failed["deadbmc"] and "unreachable" in failed["deadbmc"], failed
    assert "no bmc:" in failed["nobmc"], failed
    assert all("\n" not in line for line in failed.values())
    reported = {}
    for name in ("ipmi1", "redfish1"):
        mac = MACHINES[name][0]
        bootd.wait_for_log(lambda l, mac=mac: l.get("stage") == "report" and l.get("mac") == mac,
                           timeout=BOOT_SECONDS - (time.monotonic() - asked))
        reported[name] = time.monotonic() - asked
    assert "power on, network first" in (ipmi_dir / "chassis.log").read_text()

    # 4. Each machine's progress starts at the request, names who asked, and shows the power bootd last saw.
    for name in ("ipmi1", "redfish1"):
        view = _view(lab, MACHINES[name][0])
        stages = [s["stage"] for s in view["stages"]]
        assert stages[0] == "power" and stages[-1] == "report" and "dhcp" in stages, (name, stages)
        assert view["stages"][0]["time"] >= asked_at - 1 and view["stages"][0]["ok"], view["stages"][0]
        requested = [e for e in view["events"] if e["stage"] == "power" and "PXE boot requested by alice" in e["detail"]]
        assert requested and "client 'bootd-client'" in requested[0]["detail"], view["events"]
        assert view["power"]["state"] == "on", view["power"]
    for name in ("badpass", "deadbmc", "nobmc"):
        view = _view(lab, MACHINES[name][0])
        last = view["events"][-1]
        assert last["stage"] == "power" and not last["ok"] and "failed" in last["detail"], (name, view["events"])

    # 5. `bootd power off` agrees with the emulators afterwards.
    off = cli("power", "off", "ipmi1", "redfish1")
    assert off.returncode == 0, off.stderr
    assert (_ipmi_power(ipmi_dir), _redfish_power(libvirt, "redfish1")) == ("off", "off")
    status = cli("power", "status", "ipmi1", "redfish1")
    assert lines_by_machine(status.stdout) == {"ipmi1": "off", "redfish1": "off"}
    for name in MACHINES:
        assert all(p not in json.dumps(_view(lab, MACHINES[name][0])) for p in PASSWORDS.values())
    print(f"reprovision answered in {answered:.1f} s; reprovision -> report: ipmi {reported['ipmi1']:.1f} s, "
          f"redfish {reported['redfish1']:.1f} s; test {time.monotonic() - started:.0f} s")
