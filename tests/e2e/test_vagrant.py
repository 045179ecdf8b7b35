"""The Vagrant test network (the top-level Vagrantfile) comes up, boots its nodes through the provisioner's
bootd, and goes away without a trace.

Everything happens inside a network namespace this module makes, with a libvirtd of its own
(tests/libvirtd.py: private config, pool and state in the test's directory), a VAGRANT_HOME and a
VAGRANT_DOTFILE_PATH in the test's directory: the machine's libvirt, ~/.vagrant.d and the checkout are
not touched, and nothing is downloaded from Vagrant's cloud.

The box is `image/build --vagrant`: the appliance image (cached by its inputs' hash, as the appliance e2e
builds it) plus the Vagrant layer, cached by its own hash; `vagrant box add` puts it in the test's
VAGRANT_HOME. `vagrant up` brings up the provisioner (the appliance, bootd authoritative on pxenet, its
config written onto BOOTD by Vagrant's provisioning), then a BIOS and a UEFI node; each node PXE-boots
bootd's test payload with its own profile, fetches its own Ignition and reports to bootd, read through
the provisioner's address on pxenet. `vagrant destroy -f` then leaves no domain, no network, no process.

The Vagrantfile's checks (one line naming what is missing and the fix) run against the same libvirtd
without building anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.libvirtd import Libvirtd
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
ROOT = Path(__file__).parents[2]
NAMESPACE = f"bvg{os.getpid() % 100000}"
SUBNET = "10.77.14"
PROVISIONER = f"http://{SUBNET}.2:8080"
NODES = {"node1": ("52:54:00:b0:0d:11", "bios"), "node2": ("52:54:00:b0:0d:12", "uefi")}  # as the Vagrantfile names them
UP_SECONDS = 1200       # vagrant up: the appliance boots in 1-3 min under TCG, more beside other VMs
REPORT_SECONDS = 600    # after vagrant up returns, until both nodes have reported


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Vagrant:
    """`vagrant` for the top-level Vagrantfile, run inside the namespace against the test's libvirtd."""

    def __init__(self, lab: NetLab, libvirt: Libvirtd, tmp: Path, **settings: str) -> None:
        self.lab, self.libvirt, self.tmp = lab, libvirt, tmp
        self.env = libvirt.env(
            VAGRANT_HOME=str(tmp / "vagrant.d"), VAGRANT_DOTFILE_PATH=str(tmp / "dot-vagrant"),
            VAGRANT_CWD=str(ROOT), VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_BOX_UPDATE_CHECK_DISABLE="1",
            VAGRANT_NO_COLOR="1", BOOTD_CONSOLE_DIR=str(tmp / "consoles"), **settings)
        (tmp / "consoles").mkdir(parents=True, exist_ok=True)

    def run(self, *args: str, timeout: float, log_name: str | None = None) -> subprocess.CompletedProcess:
        """vagrant ARGS under an outer timeout (a box whose address never shows makes `up` retry ~300
        times): on the timeout its whole process group is killed and the test fails with its output."""
        out = open(self.tmp / f"vagrant-{log_name or args[0]}.log", "w+")
        proc = subprocess.Popen(["ip", "netns", "exec", self.lab.server_ns, "vagrant", *args], env=self.env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, text=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            out.seek(0)
            raise AssertionError(f"vagrant {' '.join(args)} did not end within {timeout:.0f} s:\n"
                                 f"{out.read()[-4000:]}\n{self.consoles()}") from None
        out.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), "")

    def consoles(self) -> str:
        return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-2500:]}"
                         for p in sorted((self.tmp / "consoles").glob("*.log")))


def api(lab: NetLab, path: str) -> dict | None:
    result = lab.run(lab.server_ns, ["curl", "-sf", "--max-time", "5", PROVISIONER + path])
    return json.loads(result.stdout) if result.returncode == 0 else None


@pytest.fixture(scope="module")
def namespace():
    if os.geteuid() != 0:
        pytest.skip("network namespaces and libvirtd need root")
    for tool in ("vagrant", "libvirtd", "virsh", "qemu-system-x86_64", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (tests/setup.sh installs it)")
    with NetLab(NAMESPACE) as lab:
        yield lab


@pytest.fixture(scope="module")
def libvirt(namespace, tmp_path_factory):
    directory = tmp_path_factory.mktemp("libvirt")
    daemon = Libvirtd.start(namespace.server_ns, directory / "d")
    try:
        daemon.define_pool("default", directory / "pool")
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(directory / "pool", ignore_errors=True)  # the box's image and the disks: 200+ MiB


@pytest.fixture(scope="module")
def box() -> Path:
    if os.environ.get("BOOTD_VAGRANT_BOX"):  # a given box (say, one being debugged), not this tree's
        return Path(os.environ["BOOTD_VAGRANT_BOX"])
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "image/build"), "--vagrant"], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, f"image/build --vagrant failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    path = Path(re.search(r"^box:\s+(/\S+)$", result.stdout, re.M).group(1))
    log(f"image/build --vagrant: {time.monotonic() - started:.0f} s ({path.name})")
    return path


def test_vagrantfile_says_what_is_missing_in_one_line(namespace, libvirt, tmp_path):
    """No libvirt, no box, pxenet's name or its subnet taken: `vagrant up` stops at once, one line on
    stderr naming what and the command that fixes it, nothing created."""
    vagrant = Vagrant(namespace, libvirt, tmp_path)

    def up_fails(**env: str) -> str:
        before = vagrant.env.copy()
        vagrant.env.update(env)
        try:
            result = vagrant.run("up", timeout=120, log_name=f"up-{len(list(tmp_path.glob('vagrant-*')))}")
        finally:
            vagrant.env = before
        assert result.returncode == 1, result.stdout
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bootd Vagrantfile: "), result.stdout
        return lines[0]

    line = up_fails(LIBVIRT_DEFAULT_URI=f"qemu:///system?socket={tmp_path}/no-such-socket")
    assert "libvirt is not reachable" in line and "apt-get install libvirt-daemon-system" in line, line

    line = up_fails()  # an empty VAGRANT_HOME: the box was never added
    assert "the box 'bootd' is not added: run image/build --vagrant" in line, line

    (tmp_path / "vagrant.d/boxes/bootd").mkdir(parents=True)  # as if added: the checks after that one
    (tmp_path / "taken.xml").write_text("<network><name>bootd-pxenet</name><bridge name='bvgtaken'/>"
                                        "<ip address='10.99.0.1' netmask='255.255.255.0'/></network>")
    libvirt.virsh("net-create", str(tmp_path / "taken.xml"))
    try:
        line = up_fails()
        assert "the libvirt network name bootd-pxenet is taken (10.99.0.1" in line, line
        assert "BOOTD_NETWORK=another-name" in line, line
    finally:
        libvirt.virsh("net-destroy", "bootd-pxenet")

    namespace.run(namespace.server_ns, ["ip", "link", "add", "bvgtaken", "type", "bridge"])
    namespace.run(namespace.server_ns, ["ip", "addr", "add", f"{SUBNET}.9/24", "dev", "bvgtaken"])
    try:
        line = up_fails()
        assert f"{SUBNET}.0/24 is taken by bvgtaken" in line and "BOOTD_SUBNET=" in line, line
    finally:
        namespace.run(namespace.server_ns, ["ip", "link", "del", "bvgtaken"])

    assert libvirt.names("list") == [] and libvirt.names("net-list") == []


def test_vagrant_up_boots_a_bios_and_a_uefi_node_through_the_provisioner_and_destroy_leaves_nothing(
        namespace, libvirt, box, tmp_path):
    vagrant = Vagrant(namespace, libvirt, tmp_path, BOOTD_NODES="2", BOOTD_FIRMWARE="bios,uefi")
    added = vagrant.run("box", "add", "--name", "bootd", str(box), timeout=300)
    assert added.returncode == 0, added.stdout

    started = time.monotonic()
    try:
        up = vagrant.run("up", timeout=UP_SECONDS)
        up_seconds = time.monotonic() - started
        assert up.returncode == 0, f"{up.stdout[-6000:]}\n{vagrant.consoles()}"
        log(f"vagrant up: {up_seconds:.0f} s")
        provisioned = re.search(r"bootd provision: bootd answers at (\S+)", up.stdout)
        assert provisioned and provisioned.group(1) == PROVISIONER, up.stdout[-3000:]

        views: dict[str, dict] = {}
        while not all(views.get(name, {}).get("stage") == "report" for name in NODES):
            for name, (mac, _firmware) in NODES.items():
                views[name] = api(namespace, f"/api/v1/machines/{mac}") or {}
            if time.monotonic() - started > UP_SECONDS + REPORT_SECONDS:
                raise AssertionError("not every node reported: "
                                     + json.dumps({n: v.get("stages") for n, v in views.items()})
                                     + "\n" + vagrant.consoles())
            time.sleep(2)
        reported = time.monotonic() - started
        log(f"vagrant up -> every node reported: {reported:.0f} s (up returned after {up_seconds:.0f} s)")

        listed = {m["mac"]: m for m in api(namespace, "/api/v1/machines")["machines"]}
        ignitions = set()
        for name, (mac, firmware) in NODES.items():
            view = views[name]
            assert listed[mac]["name"] == name, listed[mac]
            assert f"bootd.profile={name}" in view["report"]["cmdline"], (name, view["report"])
            assert view["ip"] == f"{SUBNET}.{10 + int(name[-1])}", (name, view["ip"])  # its reservation
            # its own Ignition: what it reported having fetched is what bootd serves for its MAC
            served = namespace.run(namespace.server_ns, ["curl", "-sf", f"{PROVISIONER}/ignition?mac={mac}"],
                                   text=False)
            assert served.returncode == 0
            assert json.loads(served.stdout)["storage"]["files"][0]["contents"]["source"] == f"data:,{name}"
            assert view["report"]["ignition_sha256"] == hashlib.sha256(served.stdout).hexdigest(), name
            ignitions.add(view["report"]["ignition_sha256"])
            stages = [stage["stage"] for stage in view["stages"]]
            assert stages[0] == "dhcp" and stages[-1] == "report", (name, stages)
            log(f"{name} ({firmware}): {' > '.join(stages)}")
        assert len(ignitions) == len(NODES)
        assert {"bios", "uefi"} == {firmware for _mac, firmware in NODES.values()}
        domains = {name: libvirt.virsh("dumpxml", name).stdout for name in libvirt.names("list")}
        uefi = [name for name, xml in domains.items() if "OVMF" in xml]
        assert len(uefi) == 1 and uefi[0].endswith("node2"), sorted(domains)
    finally:
        destroy_started = time.monotonic()
        destroyed = vagrant.run("destroy", "-f", timeout=300)
        log(f"vagrant destroy -f: {time.monotonic() - destroy_started:.0f} s")
    assert destroyed.returncode == 0, destroyed.stdout
    assert libvirt.names("list") == [], libvirt.names("list")
    assert libvirt.names("net-list") == [], libvirt.names("net-list")
    # what libvirt started (QEMU, the networks' dnsmasq): nothing runs but libvirtd itself
    libvirtd_pid = libvirt.process.pid
    assert [pid for pid in libvirt.leftover_pids() if pid != libvirtd_pid] == []
    # the pool keeps only the box's base image (vagrant-libvirt's cache of the box, not a machine's disk)
    volumes = libvirt.virsh("vol-list", "default").stdout
    assert "provisioner" not in volumes and "node" not in volumes, volumes
    libvirt.virsh("pool-destroy", "default")
    libvirt.virsh("pool-undefine", "default")
    assert libvirt.names("pool-list") == []
    shutil.rmtree(tmp_path / "vagrant.d")  # the added box: 190 MiB
