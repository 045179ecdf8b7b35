"""libvirtd (and its virtlogd) for one test, inside a network namespace the test made, with a private config.

Nothing of the machine's own libvirt is read or written: libvirtd runs in a mount namespace of its own
where /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are bind mounts
of directories under the test's `directory` (/run and /var are overlays there whose writes land in
`directory/.overlay`, so the mount points can be made without making them on the host). So its config,
sockets, networks, pools, domains and logs all live there, and the host's /etc/libvirt stays as it was.
(Whatever libvirt or QEMU would write elsewhere under /run or /var lands in the overlay too: keep pools
and disks outside /run and /var, e.g. in pytest's tmp_path.) Every libvirt network, bridge and QEMU it starts
lives in the test's network namespace.

qemu.conf runs QEMU as root: this kind of machine has a /dev/kvm that libvirt's `libvirt-qemu` user cannot
open, and libvirt then re-probes QEMU's capabilities at every domain define (~44 s each); as root a define
takes ~0.03 s. Domains must use `type='qemu'` (TCG): KVM is not usable here.

Clients reach it through `uri` (the socket inside `directory`), e.g. `LIBVIRT_DEFAULT_URI=<uri> virsh ...`
or `vagrant up` with that variable set (vagrant-libvirt honours it). `stop()` ends libvirtd and virtlogd by
PID, then kills whatever is left in the namespace that libvirt started (QEMU, dnsmasq) by PID.

    with Libvirtd.start("mytest-s", tmp_path / "libvirt") as libvirt:
        libvirt.virsh("net-list", "--all")
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# (where libvirt looks, the private directory's subdirectory bound over it)
PRIVATE_DIRS = (("/etc/libvirt", "etc"), ("/run/libvirt", "run"), ("/var/lib/libvirt", "lib"),
                ("/var/cache/libvirt", "cache"), ("/var/log/libvirt", "log"))

LIBVIRTD_CONF = """\
# a private libvirtd for one test (tests/libvirtd.py): its unix sockets only, no authentication (root only)
listen_tls = 0
listen_tcp = 0
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr"
"""

QEMU_CONF = """\
# QEMU as root: libvirt's own user cannot open this machine's /dev/kvm, and libvirt would re-probe QEMU at
# every define because of it (~44 s each)
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
# no cgroups of the host's are made or changed for the test's domains
cgroup_controllers = [ ]
security_driver = "none"
"""

START = """\
set -e
# /run and /var through overlays whose writes land in the test's directory: libvirt's directories can be
# made there (on the host they do not exist) without a trace on the host
for top in run var; do
    mkdir -p "$1/.overlay/$top-upper" "$1/.overlay/$top-work"
    mount -t overlay overlay -o "lowerdir=/$top,upperdir=$1/.overlay/$top-upper,workdir=$1/.overlay/$top-work" "/$top"
done
# libvirt looks its compiled-in QEMU user up before it reads qemu.conf: without libvirt-daemon-system that
# user does not exist, so this mount namespace sees a passwd and group that have it
for file in passwd group; do
    cp "/etc/$file" "$1/.overlay/$file"
    mount --bind "$1/.overlay/$file" "/etc/$file"
done
grep -q '^libvirt-qemu:' /etc/passwd || echo 'libvirt-qemu:x:64055:64055:libvirt:/var/lib/libvirt:/usr/sbin/nologin' >> /etc/passwd
grep -q '^libvirt-qemu:' /etc/group || echo 'libvirt-qemu:x:64055:' >> /etc/group
grep -q '^kvm:' /etc/group || echo 'kvm:x:64056:' >> /etc/group
for pair in {pairs}; do
    mkdir -p "${{pair%%=*}}"
    mount --bind "${{pair#*=}}" "${{pair%%=*}}"
done
virtlogd --config "$1/etc/virtlogd.conf" &
echo $! > "$1/virtlogd.pid"
exec libvirtd --config "$1/etc/libvirtd.conf"
"""


class LibvirtdError(Exception):
    pass


@dataclass
class Libvirtd:
    netns: str
    directory: Path
    process: subprocess.Popen | None = None
    virtlogd_pid: int | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "libvirtd.log"

    @property
    def socket(self) -> Path:
        return self.directory / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a client of this libvirtd (virsh, vagrant)."""
        return {**os.environ, "LIBVIRT_DEFAULT_URI": self.uri, **extra}

    @classmethod
    def start(cls, netns: str, directory: Path, timeout: float = 30) -> Libvirtd:
        """libvirtd in `netns` (which must exist), its config and state under `directory`; returns once it
        answers on its socket."""
        directory.mkdir(parents=True, exist_ok=True)
        for _, sub in PRIVATE_DIRS:
            (directory / sub).mkdir(mode=0o700, exist_ok=True)
        (directory / "etc/libvirtd.conf").write_text(LIBVIRTD_CONF)
        (directory / "etc/qemu.conf").write_text(QEMU_CONF)
        (directory / "etc/virtlogd.conf").write_text('log_outputs = "3:stderr"\n')
        if len(str(directory / "run/libvirt-sock")) > 100:
            raise LibvirtdError(f"{directory} is too long a path for a unix socket under it")
        pairs = " ".join(f"{target}={directory / sub}" for target, sub in PRIVATE_DIRS)
        daemon = cls(netns, directory)
        # `ip netns exec` gives the command a mount namespace of its own; unshare makes another one whose
        # mounts never propagate back to the host's
        daemon.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", START.format(pairs=pairs), "libvirtd-start", str(directory)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(daemon.log, "ab"),
            start_new_session=True)
        try:
            daemon._wait_until_answering(timeout)
        except BaseException:
            daemon.stop()
            raise
        pid_file = directory / "virtlogd.pid"
        daemon.virtlogd_pid = int(pid_file.read_text()) if pid_file.exists() else None
        return daemon

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise LibvirtdError(f"libvirtd exited ({self.process.returncode}): "
                                    f"{self.log.read_text(errors='replace')[-2000:]}")
            if self.socket.exists() and self.virsh("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LibvirtdError(f"libvirtd did not answer within {timeout:.0f} s: "
                                    f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def virsh(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(["virsh", "--connect", self.uri, *args], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise LibvirtdError(f"virsh {' '.join(args)}: {result.stderr.strip()}")
        return result

    def names(self, kind: str) -> list[str]:
        """Every domain, network or pool libvirt knows (`kind`: "list", "net-list" or "pool-list")."""
        out = self.virsh(kind, "--all", "--name").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def define_pool(self, name: str, path: Path) -> None:
        """A directory storage pool (vagrant-libvirt keeps its volumes in one), started."""
        path.mkdir(parents=True, exist_ok=True)
        self.virsh("pool-define-as", name, "dir", "--target", str(path))
        self.virsh("pool-start", name)

    def stop(self, grace: float = 10) -> None:
        """libvirtd and virtlogd by PID (SIGTERM, then SIGKILL); then every process libvirt started that is
        still running (QEMU, dnsmasq), by the pid files libvirt wrote."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(grace)
            except ProcessLookupError:
                pass
        ended = [pid for pid in (self.virtlogd_pid, *self.leftover_pids()) if pid is not None]
        for pid in ended:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace  # SIGKILLed processes are reaped asynchronously
        while any(_running(pid) for pid in ended) and time.monotonic() < deadline:
            time.sleep(0.05)

    def leftover_pids(self) -> list[int]:
        """The running processes libvirt started (QEMU, the networks' dnsmasq: they outlive libvirtd), from
        the pid files libvirt keeps under its private /run/libvirt."""
        pids = set()
        for pid_file in (self.directory / "run").glob("*/*.pid"):
            try:
                pids.add(int(pid_file.read_text().split()[0]))
            except (ValueError, IndexError, OSError):
                continue
        return sorted(pid for pid in pids if _running(pid))

    def __enter__(self) -> Libvirtd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed daemon's parent may not have reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
