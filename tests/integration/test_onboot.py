"""`bootd appliance prepare | report | banner` through the real CLI, on temporary directories standing in for
the appliance's BOOTD partition, state partition, /run and /sys/class/net: a good config applied and run by
the real bootd, a broken one (with and without a last good config), the turnkey config (run in a namespace
and answering a PXE client), BOOTD's data/ re-applied only when it changed, and the banner's line about a
real running process."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.integration.test_dhcp import FIRMWARE, decode, probe, pxe_packet
from tests.netns import NetLab

ROOT = Path(__file__).parents[2]
BOOTD = Path(sys.executable).parent / "bootd"
RUNNING_LINE = re.compile(r"^bootd: running as user (\S+) \(uid (\d+)\), pid (\d+), capabilities (\S+), rss (\d+) MiB$",
                          re.M)
GOOD = """\
# a BOOTD config, as a person writes it
domain: example.com
http:
  address: 127.0.0.1
  port: 0
dhcp:
  mode: proxy
machines:
  - {name: node1, mac: "52:54:00:a1:9c:ae", profile: install}
  - name: node2
    mac: 52:54:00:b2:2f:86
    profile: install
"""
BROKEN = """\
domain: example.com
dhcp:
  mode: proxi
machines:
  - {name: node1, mac: "52:54:00:a1:9c:zz", profile: install}
"""


def write(path: Path, content: str | bytes | dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


class Appliance:
    """The appliance's directories under one temporary directory, and the CLI run against them."""

    def __init__(self, root: Path, nics: tuple[str, ...] = ("eth0",)) -> None:
        self.root = root
        self.bootd = root / "BOOTD"
        write(self.bootd / "README.txt", "what the image puts on BOOTD\n")  # a mounted BOOTD is never empty
        self.state = root / "state"
        self.config = self.state / "config"
        self.firmware = root / "firmware"
        self.network = root / "network"
        self.run_dir = root / "run"
        self.net = root / "sys-class-net"
        for name in ("lo", "br0", "veth9"):  # what is not the first NIC
            write(self.net / name / "type", "772\n" if name == "lo" else "1\n")
        (self.net / "br0" / "bridge").mkdir()
        for name in nics:
            write(self.net / name / "type", "1\n")
            (self.net / name / "device").mkdir()

    def bootd_cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(BOOTD), "appliance", *argv], capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr + result.stdout
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def prepare(self, *more: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.bootd_cli("prepare", "--bootd-dir", str(self.bootd), "--config-dir", str(self.config),
                              "--state-dir", str(self.state), "--firmware-dir", str(self.firmware),
                              "--network-dir", str(self.network), "--run-dir", str(self.run_dir),
                              "--sys-class-net", str(self.net), *more, check=check)

    @property
    def active(self) -> Path:
        return self.config / "bootd.yaml"

    def report(self) -> str:
        return (self.run_dir / "report").read_text()

    def issue(self) -> str:
        return (self.run_dir / "issue").read_text()

    def network_file(self) -> str:
        return (self.network / "10-bootd.network").read_text()


@pytest.fixture
def appliance(tmp_path) -> Appliance:
    return Appliance(tmp_path)


def bootd_data(root: Path, profile: str = "install") -> None:
    write(root / "profiles" / f"{profile}.json", {"id": profile, "boot": {"kernel": "/assets/vmlinuz",
                                                                         "args": ["console=ttyS0"]}})
    write(root / "groups" / "default.json", {"id": "default", "profile": profile})


def test_a_good_config_is_applied_and_bootd_runs_it(appliance):
    write(appliance.bootd / "bootd.yaml", GOOD)
    bootd_data(appliance.bootd / "data")
    write(appliance.bootd / "data" / "assets" / "vmlinuz", b"kernel")
    out = appliance.prepare().stdout
    assert out.splitlines()[0] == "BOOTD config applied"
    # what the file leaves out is filled in and said; what it gives is kept
    assert f"chose: state_dir: {appliance.state / 'state'} (not in bootd.yaml" in out
    assert f"chose: dhcp.firmware_dir: {appliance.firmware} (not in bootd.yaml" in out
    assert f"chose: http.assets_dir: {appliance.bootd / 'data' / 'assets'} (not in bootd.yaml" in out
    active = appliance.active.read_text()
    assert "mode: proxy" in active and "mac: 52:54:00:b2:2f:86" in active
    assert (appliance.config / "data" / "profiles" / "install.json").is_file()
    assert not (appliance.config / "data" / "assets").exists()  # served from BOOTD, not copied
    assert appliance.report().splitlines()[0] == "BOOTD config applied"
    assert "DHCP=ipv4" in appliance.network_file() and "Name=eth0" in appliance.network_file()
    issue = appliance.issue()
    assert "proxy-DHCP on every interface" in issue and "progress: http://127.0.0.1:0/api/v1/machines" in issue
    # what prepare accepts, bootd check accepts and bootd runs
    check = subprocess.run([str(BOOTD), "check", "-c", str(appliance.active)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "bootd.yaml: 0 errors" in check.stdout
    bootd = BootdProcess(appliance.active).start()
    try:
        import urllib.request

        machines = json.load(urllib.request.urlopen(bootd.url("/api/v1/machines"), timeout=10))
        assert {m["name"] for m in machines["machines"]} >= {"node1", "node2"}
        script = urllib.request.urlopen(bootd.url("/ipxe?mac=52:54:00:a1:9c:ae"), timeout=10).read().decode()
        assert "kernel /assets/vmlinuz console=ttyS0" in script
        assert urllib.request.urlopen(bootd.url("/assets/vmlinuz"), timeout=10).read() == b"kernel"
    finally:
        assert bootd.stop() == 0


def test_errors_keep_the_last_good_config_and_name_file_line_field(appliance):
    write(appliance.bootd / "bootd.yaml", GOOD)
    bootd_data(appliance.bootd / "data")
    appliance.prepare()
    good_active = appliance.active.read_bytes()
    applied = (appliance.config / "applied.json").read_text()
    when = json.loads(applied)["applied_at"]

    write(appliance.bootd / "bootd.yaml", BROKEN)
    sock = journal(appliance.root / "journal.sock")
    # exit 0: bootd-config.service succeeds and bootd runs the last good one
    out = appliance.prepare("--journal-socket", str(appliance.root / "journal.sock")).stdout
    assert received(sock) == []  # bootd starts: its ExecStartPre (`report`) puts the errors in its journal
    sock.close()
    source = appliance.bootd / "bootd.yaml"
    errors = [f"{source}:3: dhcp.mode: 'proxi' is not one of: off, proxy, authoritative",
              f"{source}:5: machines[0].mac: '52:54:00:a1:9c:zz' is not a MAC address"]
    assert out.splitlines()[0] == f"BOOTD config has 2 errors, kept the last good one from {when}"
    for error in errors:
        assert f"error: {error}" in out.splitlines()
        assert f"error: {error}" in appliance.report().splitlines()
        assert error in appliance.issue()
    assert appliance.active.read_bytes() == good_active
    assert (appliance.config / "applied.json").read_text() == applied
    # `report` (bootd.service's ExecStartPre) puts them into bootd's journal, and never stops bootd
    report = appliance.bootd_cli("report", "--run-dir", str(appliance.run_dir))
    assert report.stdout.splitlines() == [out.splitlines()[0]] + [f"error: {e}" for e in errors]
    # the kept config still runs
    assert subprocess.run([str(BOOTD), "check", "-c", str(appliance.active)], capture_output=True).returncode == 0

    # a startup problem and a template error are errors too, located in BOOTD's terms
    write(appliance.bootd / "bootd.yaml", GOOD + "api:\n  cert_file: tls/server.crt\n")
    write(appliance.bootd / "data" / "ignition" / "broken.yaml", "{{ if .x }\n")
    out = appliance.prepare().stdout
    assert f"error: {source}:14: api.cert_file: {appliance.bootd / 'tls' / 'server.crt'} does not exist" in out
    assert f"error: {appliance.bootd / 'data' / 'ignition' / 'broken.yaml'}:1:" in out
    assert appliance.active.read_bytes() == good_active
    assert not list(appliance.state.glob(".config.new-*"))  # no staged tree left behind


def journal(path: Path) -> socket.socket:
    """A datagram socket standing in for journald's native one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def received(sock: socket.socket) -> list[bytes]:
    entries = []
    while True:
        try:
            entries.append(sock.recv(65536))
        except BlockingIOError:
            return entries  # prepare has exited: everything it sent is queued


def test_errors_without_a_last_good_config_leave_nothing_active(appliance):
    write(appliance.bootd / "bootd.yaml", "dhcp: [\n")
    sock = journal(appliance.root / "journal.sock")
    out = appliance.prepare("--journal-socket", str(appliance.root / "journal.sock")).stdout
    # bootd will not start, so its ExecStartPre cannot say why: prepare says it in `journalctl -u bootd`
    entries = received(sock)
    sock.close()
    assert [e.split(b"\n")[0] for e in entries] == [f"MESSAGE={line}".encode() for line in out.splitlines()
                                                      if line == out.splitlines()[0] or line.startswith("error: ")]
    assert all(b"\nOBJECT_SYSTEMD_UNIT=bootd.service\n" in e and b"\n_" not in e for e in entries)
    assert out.splitlines()[0] == "BOOTD config has 1 error, and there is no last good one: bootd serves nothing"
    assert re.search(rf"^error: {re.escape(str(appliance.bootd / 'bootd.yaml'))}:\d+: \(yaml\): ", out, re.M)
    assert not appliance.active.exists()  # bootd.service's ConditionPathExists keeps bootd stopped
    assert "active: none" in appliance.report()
    assert "serving:  nothing" in appliance.issue() and "(yaml)" in appliance.issue()
    # the appliance still takes an address, so its console shows where it is
    assert "DHCP=ipv4" in appliance.network_file()
    report = appliance.bootd_cli("report", "--run-dir", str(appliance.run_dir))
    assert report.returncode == 0 and "(yaml)" in report.stdout


def test_static_address_when_the_config_pins_one_inside_its_subnet(appliance):
    write(appliance.bootd / "bootd.yaml",
          "listen: {address: 10.77.0.1}\nhttp: {port: 8080}\n"
          "dhcp: {mode: authoritative, subnet: 10.77.0.0/24, range: [10.77.0.100, 10.77.0.199], router: 10.77.0.254}\n")
    appliance.prepare()
    network = appliance.network_file()
    assert "Name=eth0" in network and "Address=10.77.0.1/24" in network and "Gateway=10.77.0.254" in network
    assert "progress: http://10.77.0.1:8080/api/v1/machines" in appliance.issue()


@pytest.mark.parametrize("with_data", [False, True], ids=["empty-bootd", "bootd-with-data"])
def test_no_bootd_yaml_is_the_turnkey_proxy_config(tmp_path, with_data):
    appliance = Appliance(tmp_path, nics=("enp1s0", "enp0s3"))
    if with_data:
        bootd_data(appliance.bootd / "data")
        write(appliance.bootd / "data" / "assets" / "vmlinuz", b"kernel")
    out = appliance.prepare().stdout
    assert out.splitlines()[0] == "no bootd.yaml on BOOTD: turnkey proxy-DHCP on enp0s3"
    active = appliance.active.read_text()
    assert 'interfaces: ["enp0s3"]' in active and "mode: proxy" in active and "port: 8080" in active
    assert "dns" not in active
    profiles = appliance.config / "data" / "profiles"
    assert sorted(p.name for p in profiles.iterdir()) == (["install.json"] if with_data else [])
    assert ("assets_dir" in active) == with_data  # BOOTD's assets are served from BOOTD
    assert "Name=enp0s3" in appliance.network_file() and "DHCP=ipv4" in appliance.network_file()
    assert "progress: http://\\4{enp0s3}:8080/api/v1/machines" in appliance.issue()
    check = subprocess.run([str(BOOTD), "check", "-c", str(appliance.active)], capture_output=True, text=True)
    assert check.returncode == 0 and "bootd.yaml: 0 errors" in check.stdout, check.stdout + check.stderr


def test_bootd_data_is_reapplied_only_when_it_changed(appliance):
    bootd_data(appliance.bootd / "data")
    appliance.prepare("--user", "nobody")
    # the service user owns the active data dir (the read-write API writes there), root the config itself
    nobody = int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout)
    assert {p.stat().st_uid for p in [appliance.config / "data", *(appliance.config / "data").rglob("*")]} == {nobody}
    assert appliance.active.stat().st_uid == 0 and appliance.active.stat().st_mode & 0o777 == 0o644
    # what the read-write API would write into the active data dir
    written = appliance.config / "data" / "profiles" / "from-api.json"
    write(written, {"id": "from-api"})
    when = json.loads((appliance.config / "applied.json").read_text())["applied_at"]

    out = appliance.prepare().stdout
    assert out.splitlines()[0] == f"no bootd.yaml on BOOTD: turnkey proxy-DHCP on eth0 (unchanged since {when})"
    assert written.is_file()
    # FAT litter from another OS is no change either
    write(appliance.bootd / "System Volume Information" / "IndexerVolumeGuid", "x")
    write(appliance.bootd / "data" / "._install.json", "x")
    assert "unchanged since" in appliance.prepare().stdout.splitlines()[0]

    bootd_data(appliance.bootd / "data", profile="second")  # a person edits BOOTD
    out = appliance.prepare().stdout
    assert "unchanged" not in out.splitlines()[0]
    assert (appliance.config / "data" / "profiles" / "second.json").is_file()
    assert not written.exists()  # BOOTD wins...
    assert (appliance.state / "config.previous" / "data" / "profiles" / "from-api.json").is_file()  # ...kept aside
    assert not (appliance.config / "data" / "._install.json").exists()


def test_a_bootd_that_is_not_mounted_keeps_the_active_config(appliance):
    write(appliance.bootd / "bootd.yaml", GOOD)
    bootd_data(appliance.bootd / "data")
    appliance.prepare()
    good_active = appliance.active.read_bytes()
    when = json.loads((appliance.config / "applied.json").read_text())["applied_at"]
    for path in sorted(appliance.bootd.rglob("*"), reverse=True):  # the partition did not show up: an empty dir
        path.unlink() if path.is_file() else path.rmdir()
    out = appliance.prepare().stdout
    assert out.splitlines()[0] == f"BOOTD is not mounted at {appliance.bootd}: kept the config applied {when}"
    assert appliance.active.read_bytes() == good_active
    # a mounted BOOTD without bootd.yaml is a person asking for the turnkey config
    write(appliance.bootd / "README.txt", "x")
    assert appliance.prepare().stdout.startswith("no bootd.yaml on BOOTD: turnkey proxy-DHCP on eth0")


def test_a_state_partition_it_cannot_write_is_one_line_not_a_traceback(appliance):
    write(appliance.state, "a file where the state partition's directory should be")
    result = appliance.prepare(check=False)
    assert result.returncode == 1
    assert result.stderr == f"bootd appliance prepare: {appliance.state}: File exists\n"


def test_an_interrupted_swap_is_finished_at_the_next_boot(appliance):
    write(appliance.bootd / "bootd.yaml", GOOD)
    bootd_data(appliance.bootd / "data")
    appliance.prepare()
    good_active = appliance.active.read_bytes()
    # the crash between swap_in's two renames: the active tree moved aside, the new one not yet in place
    os.rename(appliance.config, appliance.state / "config.previous")
    (appliance.state / ".config.new-crashed").mkdir()
    out = appliance.prepare().stdout
    assert out.splitlines()[0].startswith("BOOTD config applied (unchanged since")
    assert appliance.active.read_bytes() == good_active
    assert not (appliance.state / ".config.new-crashed").exists()


def test_banner_names_the_user_capabilities_and_memory_of_a_running_process(appliance):
    appliance.prepare()
    # a child as bootd runs: its own user, only the two capabilities
    child = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              "--inh-caps=-all,+net_bind_service,+net_raw",
                              "--ambient-caps=-all,+net_bind_service,+net_raw",
                              sys.executable, "-c", "print('ready', flush=True); import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        appliance.bootd_cli("banner", "--pid", str(child.pid), "--run-dir", str(appliance.run_dir),
                            "--config-dir", str(appliance.config))
        issue = appliance.issue()
        match = RUNNING_LINE.search(issue)
        assert match, issue
        user, uid, pid, caps, rss = match.groups()
        assert (uid, pid, caps) == ("65534", str(child.pid), "cap_net_bind_service,cap_net_raw")
        assert user == subprocess.run(["id", "-nu", "65534"], capture_output=True, text=True).stdout.strip()
        assert 1 <= int(rss) < 200
        assert "config:   no bootd.yaml on BOOTD" in issue  # the rest of the banner is still there
    finally:
        child.stdin.close()
        child.wait(10)
    # a pid that is gone: said on the banner, and the command still succeeds (bootd's ExecStartPost)
    appliance.bootd_cli("banner", "--pid", str(child.pid), "--run-dir", str(appliance.run_dir),
                        "--config-dir", str(appliance.config))
    assert f"bootd: pid {child.pid} is not running" in appliance.issue()


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with NetLab(f"ob{os.getpid() % 100000}") as lab:
        yield lab


def test_turnkey_config_serves_pxe_on_the_first_nic(lab, tmp_path):
    """The turnkey config as bootd runs it on the appliance: proxy-DHCP, TFTP and HTTP on 8080, on the NIC
    prepare chose (the server end of a namespace's veth pair standing in for it)."""
    client = lab.add_client("192.0.2.10/24")
    appliance = Appliance(tmp_path, nics=(client.server_ifname,))
    bootd_data(appliance.bootd / "data")
    for name, content in FIRMWARE.items():
        write(appliance.firmware / name, content)
    assert f"turnkey proxy-DHCP on {client.server_ifname}" in appliance.prepare().stdout
    bootd = BootdProcess(appliance.active, lab=lab, ns=lab.server_ns).start()
    try:
        answers = probe(lab, client.ns, pxe_packet("52:54:00:0b:00:01", "discover", 0), iface=client.ifname)
        reply, options = decode(answers[0])
        assert reply.file.rstrip(b"\0") == b"undionly.kpxe" and reply.yiaddr == "0.0.0.0"  # proxy: no address
        machines = lab.run(client.ns, ["curl", "-sf", "http://192.0.2.1:8080/api/v1/machines"])
        assert "52:54:00:0b:00:01" in machines.stdout
    finally:
        assert bootd.stop() == 0
