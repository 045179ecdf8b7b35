"""bootd as a systemd service, through its real interfaces: `bootd run` talking sd_notify to a datagram socket
the test binds (as systemd's would be), started as root and dropping to a throwaway user (read back from
/proc), and `bootd install-service` writing a unit that systemd-analyze verifies and scores.

This machine has no systemd as PID 1, so nothing here starts the unit; the appliance e2e does, in a VM.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.integration.test_dhcp import AUTHORITATIVE, udhcpc
from tests.integration.test_http import write

ROOT = Path(__file__).parents[2]
BOOTD = Path(sys.executable).parent / "bootd"
FIRMWARE = os.urandom(70_000)
KEPT_CAPS = (1 << 10) | (1 << 13)  # CAP_NET_BIND_SERVICE (10), CAP_NET_RAW (13): <linux/capability.h>


class NotifyListener:
    """A unix datagram socket in the role of systemd's notify socket: keeps every message, parsed, in order.
    `on_ready` runs in the reader thread the moment the first READY=1 arrives."""

    def __init__(self, address: str | bytes, on_ready: Callable[[], None] | None = None) -> None:
        self.address = address
        self.env = address.decode().replace("\0", "@", 1) if isinstance(address, bytes) else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[dict[str, str]] = []
        self.on_ready = on_ready
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            if fields.get("READY") == "1" and self.on_ready is not None:
                on_ready, self.on_ready = self.on_ready, None
                on_ready()
            with self._changed:
                self.messages.append(fields)
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout: float = 20, start: int = 0) -> int:
        """The index of the first message from `start` on that satisfies `predicate`."""
        with self._changed:
            seen = start
            deadline = time.monotonic() + timeout
            while True:
                for index in range(seen, len(self.messages)):
                    if predicate(self.messages[index]):
                        return index
                seen = len(self.messages)
                if not self._changed.wait(max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"no matching notification; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(protocol, port) of every socket `pid` holds that listens (TCP) or is bound (UDP), from the kernel's
    tables for that process's network namespace (/proc/PID/net), matched by inode to /proc/PID/fd."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for proto, wanted_state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == wanted_state and fields[9] in inodes:
                found.add((proto.rstrip("6"), int(fields[1].rsplit(":", 1)[1], 16)))
    return found


def proc_status(pid: int, task: int | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/task/{task}/status" if task is not None else f"/proc/{pid}/status"
    return dict(line.split(":\t", 1) for line in Path(path).read_text().splitlines() if ":\t" in line)


def make_config(root: Path, text: str) -> Path:
    write(root / "data/profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/k"}})
    write(root / "data/groups/default.json", {"id": "default", "profile": "p"})
    write(root / "state/firmware/undionly.kpxe", FIRMWARE)
    (root / "bootd.yaml").write_text(f"state_dir: {root / 'state'}\n{text}")
    return root / "bootd.yaml"


# --- sd_notify ------------------------------------------------------------------------------------------------

def test_ready_comes_only_when_every_listener_is_bound_and_status_says_what_is_served(netlab, tmp_path,
                                                                                       monkeypatch):
    client = netlab.add_client("192.0.2.10/24")
    server = netlab.server_ip
    tls = tmp_path / "tls"
    subprocess.run([BOOTD, "certs", "init", "--san", f"IP:{server}", "--out", tls], check=True, capture_output=True)
    config = make_config(tmp_path, f"""\
domain: lab.test
listen: {{address: {server}}}
http: {{address: {server}, port: 8080, data_dir: {tmp_path / 'data'}}}
dhcp: {{mode: proxy}}
tftp: {{address: {server}, port: 69}}
dns: {{address: {server}, port: 53}}
api: {{address: {server}, port: 8081, cert_file: {tls / 'server.crt'}, key_file: {tls / 'server.key'},
      ca_file: {tls / 'ca.crt'}}}
machines:
  - {{name: node1, mac: "52:54:00:aa:00:01", ip: 192.0.2.21}}
""")
    bootd = BootdProcess(config, lab=netlab, ns=netlab.server_ns)
    at_ready: dict[str, set] = {}
    notify = NotifyListener(str(tmp_path / "notify"),
                            on_ready=lambda: at_ready.setdefault("sockets", listening_sockets(bootd.proc.pid)))
    monkeypatch.setenv("NOTIFY_SOCKET", notify.env)
    try:
        bootd.start()
        ready = notify.messages[notify.wait_for(lambda m: m.get("READY") == "1")]
        # The socket table as it was when READY=1 reached us: every listener was already there.
        assert {("udp", 67), ("udp", 4011), ("udp", 69), ("udp", 53), ("tcp", 53), ("tcp", 8080),
                ("tcp", 8081)} <= at_ready["sockets"], at_ready
        assert ready["STATUS"] == ("proxy-DHCP on every interface, TFTP :69, DNS :53 (lab.test), HTTP :8080, "
                                   "API :8081, 1 machines")
        # and each answers a client on its first try
        http = netlab.run(client.ns, ["curl", "-sf", "--retry", "0", f"http://{server}:8080/api/v1/machines"])
        assert http.returncode == 0 and "52:54:00:aa:00:01" in http.stdout, http.stderr
        tftp = netlab.run(client.ns, ["curl", "-sf", "--retry", "0", f"tftp://{server}/undionly.kpxe"], text=False)
        assert tftp.stdout == FIRMWARE
        dns = netlab.run(client.ns, ["dig", f"@{server}", "+short", "+tries=1", "+time=5", "node1.lab.test"])
        assert dns.stdout.strip() == "192.0.2.21"
    finally:
        assert bootd.stop() == 0
        notify.close()


@pytest.fixture
def small_bootd(tmp_path, monkeypatch) -> Iterator[tuple[BootdProcess, NotifyListener]]:
    """bootd on loopback (HTTP and TFTP on free ports), notifying an abstract socket, watchdog every 50 ms."""
    config = make_config(tmp_path, f"""\
http: {{address: 127.0.0.1, port: 0, data_dir: {tmp_path / 'data'}}}
tftp: {{address: 127.0.0.1, port: 0}}
""")
    notify = NotifyListener(f"\0bootd-test-{os.getpid()}-{tmp_path.name}".encode())
    monkeypatch.setenv("NOTIFY_SOCKET", notify.env)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    bootd = BootdProcess(config)
    try:
        yield bootd.start(), notify
    finally:
        bootd.kill()
        notify.close()


def test_watchdog_is_pinged_from_the_running_daemon(small_bootd):
    bootd, notify = small_bootd
    first = notify.wait_for(lambda m: m.get("WATCHDOG") == "1")
    notify.wait_for(lambda m: m.get("WATCHDOG") == "1", start=first + 1)  # and again: a timer, not a one-off
    assert bootd.proc.poll() is None
    assert bootd.stop() == 0


def test_sighup_is_bracketed_by_reloading_and_ready_and_sigterm_says_stopping(small_bootd):
    bootd, notify = small_bootd
    ready = notify.wait_for(lambda m: m.get("READY") == "1")
    bootd.send(signal.SIGHUP)
    reloading = notify.wait_for(lambda m: m.get("RELOADING") == "1", start=ready + 1)
    assert int(notify.messages[reloading]["MONOTONIC_USEC"]) > 0  # what Type=notify-reload would demand
    again = notify.wait_for(lambda m: m.get("READY") == "1", start=reloading + 1)
    assert re.fullmatch(r"TFTP :\d+, HTTP :\d+, 0 machines", notify.messages[again]["STATUS"])
    bootd.send(signal.SIGTERM)
    notify.wait_for(lambda m: m.get("STOPPING") == "1", start=again + 1)
    assert bootd.proc.wait(20) == 0  # one SIGTERM, as systemd sends
    assert bootd.stop() == 0


# --- dropping root ----------------------------------------------------------------------------------------

@pytest.fixture
def throwaway_user() -> Iterator[pwd.struct_passwd]:
    name = f"bootdt{os.getpid() % 100000}"
    subprocess.run(["userdel", name], capture_output=True)  # a crashed earlier run's
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """pytest's tmp_path is under a 0700 directory: the dropped user must read its config again at SIGHUP."""
    path = Path(tempfile.mkdtemp(prefix="bootd-service-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def interpreter_reachable_by_anyone(argv: list[str], stash: Path) -> list[str]:
    """`argv` run so that a dropped user can still import the stdlib modules Python loads lazily (asyncio's
    executor, say). On a real install Python lives in /usr or /opt; here it may be under a 0700 /root (pyenv).
    Then, in a mount namespace of the daemon's own (nothing outside changes), that directory is covered by a
    0755 tmpfs holding only the interpreter's tree, bind-mounted back in place."""
    path = Path(sys.base_prefix)
    blocking = next((p for p in reversed(path.parents) if p != Path("/") and not p.stat().st_mode & stat.S_IXOTH),
                    None)
    if blocking is None:
        return argv
    inside = blocking / path.relative_to(blocking).parts[0]  # /root/.pyenv
    stash.mkdir()
    script = (f'set -e; mount --bind "{inside}" "{stash}"; mount -t tmpfs -o mode=0755 tmpfs "{blocking}"; '
              f'mkdir "{inside}"; mount --bind "{stash}" "{inside}"; exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def test_root_drops_to_the_configured_user_keeping_only_the_two_capabilities(bridged_netlab, throwaway_user,
                                                                              world_readable_dir):
    lab, user, root = bridged_netlab, throwaway_user, world_readable_dir
    client = lab.add_client(mac="52:54:00:ab:00:01")
    body = f"""\
user: {user.pw_name}
domain: lab.test
http: {{address: 192.0.2.1, port: 8080, data_dir: {root / 'data'}}}
tftp: {{address: 192.0.2.1, port: 6969}}
dhcp:
{AUTHORITATIVE}"""
    config = make_config(root, body)
    bootd = BootdProcess(config, lab=lab, ns=lab.server_ns)
    bootd.argv = interpreter_reachable_by_anyone(bootd.argv, root / "interpreter")
    bootd.start()
    try:
        pid = bootd.proc.pid
        status = proc_status(pid)
        assert status["Uid"].split() == [str(user.pw_uid)] * 4 and status["Gid"].split() == [str(user.pw_gid)] * 4
        caps = {key: int(status[key], 16) for key in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")}
        assert caps == {"CapEff": KEPT_CAPS, "CapPrm": KEPT_CAPS, "CapInh": 0, "CapBnd": KEPT_CAPS, "CapAmb": 0}, caps
        assert status["NoNewPrivs"] == "1"

        # DHCP (bound to 67 before the drop) hands out a lease, written to the state dir it now owns
        lease = udhcpc(lab, client)
        assert lease.get("ip") == "192.0.2.100", lease
        leases = root / "state/leases.journal"  # the lease journal (the snapshot, leases.json, comes later)
        assert "192.0.2.100" in leases.read_text() and leases.stat().st_uid == user.pw_uid
        assert stat.S_IMODE((root / "state").stat().st_mode) & 0o002 == 0
        threads = os.listdir(f"/proc/{pid}/task")
        for task in threads:  # any other thread (an executor's) has no more than the loop's
            thread = proc_status(pid, int(task))
            assert thread["Uid"].split() == [str(user.pw_uid)] * 4, thread
            assert int(thread["CapEff"], 16) & ~KEPT_CAPS == 0 and int(thread["CapPrm"], 16) & ~KEPT_CAPS == 0
            assert int(thread["CapBnd"], 16) == KEPT_CAPS, thread
        # (udhcpc's script configures no address: HTTP and TFTP are asked from the server's namespace)
        http = lab.run(lab.server_ns, ["curl", "-sf", "http://192.0.2.1:8080/api/v1/machines/52:54:00:ab:00:01"])
        assert http.returncode == 0 and "192.0.2.100" in http.stdout, http.stderr
        tftp = lab.run(lab.server_ns, ["curl", "-sf", "tftp://192.0.2.1:6969/undionly.kpxe"], text=False)
        assert tftp.stdout == FIRMWARE

        # a reload that moves TFTP to 69 binds a privileged port as the unprivileged user
        config.write_text(config.read_text().replace("port: 6969", "port: 69"))
        start = len(bootd.lines)
        bootd.send(signal.SIGHUP)
        moved = bootd.wait_for_log(lambda l: l.get("message", "").startswith(("reload: tftp", "reload refused")),
                                   start=start)
        assert moved.get("tftp_port") == 69, bootd.log_text()
        tftp = lab.run(lab.server_ns, ["curl", "-sf", "tftp://192.0.2.1/undionly.kpxe"], text=False)
        assert tftp.stdout == FIRMWARE
        assert 6969 not in {port for proto, port in listening_sockets(pid) if proto == "udp"}  # the old one closed
    finally:
        assert bootd.stop() == 0


def as_the_unit_runs_it(argv: list[str], user: pwd.struct_passwd, caps: str) -> list[str]:
    """What User=, AmbientCapabilities=, CapabilityBoundingSet= and NoNewPrivileges= make of a command, by
    setpriv(1): the user's uid, gid and groups, `caps` ambient (so effective) and nothing else in the bounding set."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", f"--inh-caps=-all,{caps}",
            f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}", "--no-new-privs", *argv]


def test_bootd_starts_as_the_unit_starts_it_with_two_ambient_capabilities(bridged_netlab, throwaway_user,
                                                                          world_readable_dir):
    """No root at any point: bootd binds DHCP 67, TFTP 69, DNS 53, HTTP 80 and opens the router advertisement's
    ICMPv6 raw socket with only the unit's two capabilities; without CAP_NET_RAW that socket is refused."""
    lab, user, root = bridged_netlab, throwaway_user, world_readable_dir
    client = lab.add_client(mac="52:54:00:ac:00:01")
    config = make_config(root, f"""domain: lab.test
http: {{address: 192.0.2.1, port: 80, data_dir: {root / 'data'}}}
tftp: {{address: 192.0.2.1, port: 69}}
dns: {{address: 192.0.2.1, port: 53}}
dhcp:
{AUTHORITATIVE}  router_advertisement: true
""")
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", root / "state"], check=True)  # StateDirectory=
    caps = "+net_bind_service,+net_raw"

    without_raw = BootdProcess(config, lab=lab, ns=lab.server_ns)
    argv = interpreter_reachable_by_anyone(as_the_unit_runs_it(without_raw.argv, user, "+net_bind_service"),
                                           root / "interpreter")
    refused = lab.run(lab.server_ns, argv, timeout=60)
    assert refused.returncode == 2 and "dhcp.router_advertisement: cannot open an ICMPv6 socket" in refused.stderr, \
        refused.stderr

    bootd = BootdProcess(config, lab=lab, ns=lab.server_ns)
    bootd.argv = interpreter_reachable_by_anyone(as_the_unit_runs_it(bootd.argv, user, caps), root / "interpreter2")
    bootd.start()
    try:
        status = proc_status(bootd.proc.pid)
        assert status["Uid"].split() == [str(user.pw_uid)] * 4
        assert {key: int(status[key], 16) for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb")} == dict.fromkeys(
            ("CapEff", "CapPrm", "CapBnd", "CapAmb"), KEPT_CAPS)
        assert {("udp", 67), ("udp", 4011), ("udp", 69), ("udp", 53), ("tcp", 53), ("tcp", 80)} <= \
            listening_sockets(bootd.proc.pid)
        assert not any("running as root" in line.get("message", "") for line in bootd.lines)
        assert udhcpc(lab, client).get("ip") == "192.0.2.100"
        assert "192.0.2.100" in (root / "state/leases.journal").read_text()
    finally:
        assert bootd.stop() == 0


def test_unknown_user_stops_run_with_file_line_and_field(tmp_path):
    config = make_config(tmp_path, f"http: {{port: 0, data_dir: {tmp_path / 'data'}}}\nuser: no-such-bootd-user\n")
    result = subprocess.run([BOOTD, "run", "-c", config], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("bootd.yaml:3: user: no user 'no-such-bootd-user' on this host (bootd "
                                     "install-service creates one; or useradd --system)")


# --- the unit ---------------------------------------------------------------------------------------------

def test_install_service_writes_a_unit_that_verifies_and_scores_ok(tmp_path):
    image = tmp_path / "rootfs"
    result = subprocess.run([BOOTD, "install-service", "--root", image, "--bin", BOOTD, "--config",
                             "/var/lib/bootd/config/bootd.yaml"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    unit = image / "etc/systemd/system/bootd.service"
    assert f"wrote {unit}" in result.stdout
    assert any(line.split(":")[0] == "bootd" for line in (image / "etc/passwd").read_text().splitlines())
    assert f"ExecStart={BOOTD} run -c /var/lib/bootd/config/bootd.yaml" in unit.read_text().splitlines()

    # verify checks that ExecStart's binary exists: BOOTD does, on this host
    verify = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", unit], capture_output=True,
                              text=True, timeout=120)
    score = re.search(r"Overall exposure level for bootd\.service: (\d+\.\d+) (\w+)", security.stdout)
    assert score is not None, security.stdout + security.stderr
    print(f"systemd-analyze security bootd.service: {score[1]} {score[2]}")
    assert float(score[1]) <= 2.5 and score[2] in ("OK", "SAFE"), security.stdout


# --- under the unit's restrictions ------------------------------------------------------------------------

# Execs the daemon with the kernel's memory-deny-write-execute on (PR_SET_MDWE, Linux 6.3+, kept across execve):
# the rule systemd's MemoryDenyWriteExecute=yes enforces with seccomp (no W+X mapping, no gaining PROT_EXEC).
MDWE_EXEC = """\
import ctypes, mmap, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(f"PR_SET_MDWE: {os.strerror(ctypes.get_errno())}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("PR_SET_MDWE set, yet a W+X mapping was allowed")
except PermissionError:
    pass
os.execv(sys.argv[1], sys.argv[1:])
"""


def unit_syscalls(*groups: str) -> frozenset[str]:
    """The system calls a SystemCallFilter= group names, nested groups expanded, as this systemd defines them."""
    names: set[str] = set()
    for group in groups:
        listing = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True,
                                 check=True).stdout
        for line in listing.splitlines()[1:]:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                names |= unit_syscalls(entry) if entry.startswith("@") else {entry}
    return frozenset(names)


def test_bootd_serves_under_the_units_memory_and_syscall_restrictions(tmp_path):
    """What the unit forbids, checked here without systemd: bootd (HTTP, TFTP, DNS, and gRPC with TLS through
    grpcio and cryptography) serves, reloads and stops under memory-deny-write-execute, and every system call
    it makes (strace -f, all threads) is inside SystemCallFilter=@system-service ~@privileged @resources."""
    assert shutil.which("strace"), "strace is needed (tests/setup.sh installs it)"
    tls = tmp_path / "tls"
    subprocess.run([BOOTD, "certs", "init", "--san", "IP:127.0.0.1", "--out", tls], check=True, capture_output=True)
    config = make_config(tmp_path, f"""\
domain: lab.test
http: {{address: 127.0.0.1, port: 0, data_dir: {tmp_path / 'data'}}}
tftp: {{address: 127.0.0.1, port: 0}}
dns: {{address: 127.0.0.1, port: 0}}
api: {{address: 127.0.0.1, port: 0, cert_file: {tls / 'server.crt'}, key_file: {tls / 'server.key'},
      ca_file: {tls / 'ca.crt'}}}
""")
    trace = tmp_path / "trace"
    bootd = BootdProcess(config)
    bootd.argv = ["strace", "-f", "-qq", "-o", str(trace), sys.executable, "-c", MDWE_EXEC, *bootd.argv]
    bootd.start(timeout=60)
    try:
        daemon = int(Path(f"/proc/{bootd.proc.pid}/task/{bootd.proc.pid}/children").read_text().split()[0])
        ports = {a.split("://")[0]: int(a.rsplit(":", 1)[1]) for a in bootd.addresses}
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/api/v1/machines", timeout=10) as answer:
            assert answer.status == 200
        tftp = subprocess.run(["curl", "-sf", f"tftp://127.0.0.1:{ports['tftp']}/undionly.kpxe"], capture_output=True,
                              timeout=30)
        assert tftp.stdout == FIRMWARE
        dns = subprocess.run(["dig", "@127.0.0.1", "-p", str(ports["dns"]), "+short", "+tries=1", "+time=5",
                              "SOA", "lab.test"], capture_output=True, text=True, timeout=30)
        assert dns.stdout.strip(), dns
        api = subprocess.run([BOOTD, "get", "profiles", "--endpoint", f"127.0.0.1:{ports['grpcs']}", "--ca-file",
                              tls / "ca.crt", "--cert-file", tls / "client.crt", "--key-file", tls / "client.key"],
                             capture_output=True, text=True, timeout=60)
        assert api.returncode == 0 and "p" in api.stdout.split(), api.stdout + api.stderr
        start = len(bootd.lines)
        os.kill(daemon, signal.SIGHUP)
        bootd.wait_for_log(lambda l: l.get("message", "").startswith("reloaded"), start=start)
        os.kill(daemon, signal.SIGTERM)
        assert bootd.proc.wait(60) == 0  # strace exits with the daemon's code
    finally:
        assert bootd.stop(timeout=60) == 0
    allowed = unit_syscalls("@system-service") - unit_syscalls("@privileged", "@resources")
    used = {m[1] for line in trace.read_text().splitlines() if (m := re.match(r"\d+\s+([a-z0-9_]+)\(", line))}
    assert len(used) > 40, used  # the trace is real
    assert used - allowed == set(), f"system calls the unit would refuse: {sorted(used - allowed)}"
