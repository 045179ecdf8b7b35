"""Three bootd replicas on two L2 segments sharing one 3-member etcd cluster (Debian's etcd 3.4), in
namespaces (tests/replica_lab.py): a1 and a2 on segment a (10.97.0.0/20), b1 on segment b (10.98.0.0/20),
each authoritative for its segment with `store: {backend: etcd}`, etcd's members behind a router.

One topology for the module (each test is a phase of one story, in order, as CI runs a file):
1. a profile changed through a1's read-write API (`bootd apply`, mutual TLS, from segment b) is served by
   a2 and b1 at their next request;
2. a QEMU machine (BIOS: SeaBIOS + its iPXE ROM) boots through b1 with that profile and reports;
3. 10,000 simulated clients (bench/fleet.py --storm) race for segment a's /20 (4,081 addresses), every
   DISCOVER answered by both a1 and a2: first 3,000 clients, with a1 killed -9 mid-storm (every one of them
   gets an address; those whose REQUEST a1 left unanswered start over and complete through a2; then every
   client a1 had ACKed asks for its address again (INIT-REBOOT) and a2 ACKs each the same address); then
   a1 restarted, one etcd member (the leader) killed -9, and 7,000 more clients race for what is left.
   No address is ever ACKed to two MACs, checked from the clients' side over both storms;
4. b1 cut off from etcd (the router drops its packets): it says so, offers nothing to a new client,
   still ACKs a reservation and a client it knows; healed, it allocates again.
Wall time: 94 s on this 2-core box (TCG; load average ~1.7 from other work), 130 s at load ~9.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from appliance.lab import qemu_argv
from appliance.lab.payload import build
from bench.replicas import storm, storm_result
from tests.bootd_process import BootdProcess
from tests.e2e.test_boot import firmware, wait_for_report
from tests.integration.test_http import write
from tests.replica_lab import Replica, ReplicaLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
ROOT = Path(__file__).parents[2]
PREFIX = "/bootd"
API_PORT = 8081
QEMU_MAC = "52:54:00:e8:00:01"
QEMU_IP = "10.98.0.50"
RESERVED_MAC, RESERVED_IP = "02:95:ff:00:00:01", "10.98.0.60"  # a simulated client with a reservation
WAVE1, WAVE2 = 3_000, 7_000  # clients racing for segment a's /20
# transmissions of each DHCP message before a simulated client gives up: 1 + 2 + ... + 8 = 36 s of patience
# (a PXE ROM waits 4 + 8 + 16 + 32 s for an OFFER)
TRIES = 8


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)


def make_data(tmp: Path) -> Path:
    """The matchbox data dir imported into etcd: profile-a (the QEMU machine's), its Ignition, and the
    payload's kernel and initrd (assets stay on each replica's disk: here one directory they all read)."""
    kernel, initrd = build()
    data = tmp / "data"
    (data / "assets").mkdir(parents=True)
    shutil.copy(kernel, data / "assets/vmlinuz")
    shutil.copy(initrd, data / "assets/initrd.gz")
    write(data / "profiles/profile-a.json", profile("profile-a"))
    write(data / "ignition/profile-a.ign", {"ignition": {"version": "3.4.0"}})
    write(data / "groups/vm1.json", {"id": "vm1", "profile": "profile-a", "selector": {"mac": QEMU_MAC}})
    return data


def profile(name: str, *extra: str) -> dict:
    return {"id": name, "ignition_id": f"{name}.ign", "boot": {
        "kernel": "${bootd}/assets/vmlinuz", "initrd": ["${bootd}/assets/initrd.gz"],
        "args": ["initrd=initrd.gz", "console=ttyS0", "quiet", f"bootd.profile={name}", *extra,
                 "bootd.ignition=${bootd}/ignition?mac=${mac:hexhyp}",
                 "bootd.report=${bootd}/api/v1/machines/${mac:hexhyp}/report"]}}


def replica_config(tmp: Path, lab: ReplicaLab, replica: Replica, data: Path) -> Path:
    segment = replica.segment
    home = tmp / replica.name
    (home / "state").mkdir(parents=True, exist_ok=True)
    first, last = segment.range
    api = ""
    if replica.name == "a1":
        tls = tmp / "tls"
        api = (f"api: {{address: {replica.address}, port: {API_PORT}, cert_file: {tls / 'server.crt'}, "
               f"key_file: {tls / 'server.key'}, ca_file: {tls / 'ca.crt'}}}\n")
    config = home / "bootd.yaml"
    config.write_text(
        f"state_dir: {home / 'state'}\ndomain: lab.test\nlisten: {{address: {replica.address}}}\n"
        f"http: {{address: {replica.address}, port: 8080, data_dir: {data}}}\n"
        f"dhcp:\n  mode: authoritative\n  firmware_dir: {firmware()}\n  subnet: {segment.subnet}\n"
        f"  range: [{first}, {last}]\n  router: {segment.router}\n  lease: 1h\n"
        f"tftp: {{address: {replica.address}, max_per_client: 1000, max_transfers: 1000}}\n{api}"
        f"store: {{backend: etcd, endpoints: [{', '.join(lab.endpoints)}], prefix: {PREFIX}, replica: {replica.name}}}\n"
        # the reservations of segment b (a reservation lies in its replica's subnet); vm1's group is in etcd
        + (f"machines:\n  - {{name: vm1, mac: \"{QEMU_MAC}\", ip: {QEMU_IP}}}\n"
           f"  - {{name: fixed, mac: \"{RESERVED_MAC}\", ip: {RESERVED_IP}}}\n" if segment.name == "b" else ""))
    return config


class Topology:
    def __init__(self, lab: ReplicaLab, tmp: Path, data: Path) -> None:
        self.lab, self.tmp, self.data = lab, tmp, data
        self.configs = {r.name: replica_config(tmp, lab, r, data) for r in lab.replicas}
        self.bootd: dict[str, BootdProcess] = {}  # running
        self.killed: list[BootdProcess] = []
        self.outcomes: dict[str, list] = {}  # every storm client's outcome on segment a (both waves)

    def start(self, *names: str) -> None:
        """Start the replicas at once (each loads the store from etcd) and wait until each is ready."""
        made = {name: BootdProcess(self.configs[name], lab=self.lab,  # type: ignore[arg-type]
                                   ns=self.lab.replica(name).ns) for name in names}
        with ThreadPoolExecutor(len(names)) as pool:
            for name, bootd in zip(names, pool.map(lambda b: b.start(timeout=90), made.values())):
                self.bootd[name] = bootd

    def kill(self, name: str) -> None:
        """kill -9 (the process group: `ip netns exec` execs bootd, so it is bootd's own PID)."""
        bootd = self.bootd.pop(name)
        bootd.kill()
        self.killed.append(bootd)

    def http(self, name: str, path: str) -> tuple[int, str]:
        replica = self.lab.replica(name)
        result = self.lab.run(replica.segment.clients_ns, ["curl", "-s", "-w", "\n%{http_code}",
                                                           f"http://{replica.address}:8080{path}"])
        body, _, code = result.stdout.rpartition("\n")
        return int(code or 0), body

    def api(self, *args: str) -> subprocess.CompletedProcess:
        """`bootd` as an operator on segment b runs it against a1's read-write API."""
        tls = self.tmp / "tls"
        argv = [sys.executable, "-m", "appliance", *args, "--endpoint", f"{self.lab.replica('a1').address}:{API_PORT}",
                "--ca-file", str(tls / "ca.crt"), "--cert-file", str(tls / "client.crt"),
                "--key-file", str(tls / "client.key")]
        return self.lab.run(self.lab.segment("b").clients_ns, argv, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    if shutil.which("qemu-system-x86_64") is None or shutil.which("etcd") is None:
        pytest.skip("qemu-system-x86 and etcd-server are needed")
    tmp = tmp_path_factory.mktemp("replicas")
    data = make_data(tmp)
    assert cli("certs", "init", "--san", "IP:10.97.0.2", "--out", str(tmp / "tls")).returncode == 0
    with ReplicaLab("rple2e", layout=(2, 1), work=tmp) as lab:
        lab.start_etcd()
        topo = Topology(lab, tmp, data)
        imported = lab.run(lab.replica("a1").ns, [sys.executable, "-m", "appliance", "store", "import", str(data),
                                                  "-c", str(topo.configs["a1"])], cwd=ROOT, timeout=120)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        topo.start(*(replica.name for replica in lab.replicas))
        try:
            yield topo
            for name, bootd in topo.bootd.items():
                assert bootd.stop() == 0, name
        finally:
            for bootd in topo.bootd.values():
                bootd.kill()


def wait_served(topo: Topology, name: str, path: str, text: str, timeout: float = 10) -> float:
    """Seconds until replica `name` serves `text` at `path` (asked again until then, at most `timeout`)."""
    started = time.monotonic()
    while True:
        code, body = topo.http(name, path)
        if code == 200 and text in body:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{name} still serves {code} {body!r} at {path}"
        time.sleep(0.05)


def test_a_profile_written_through_one_replica_is_served_by_the_others(topo):
    path = f"/ipxe?mac={QEMU_MAC}"
    for name in ("a1", "a2", "b1"):
        code, body = topo.http(name, path)
        assert code == 200 and "bootd.profile=profile-a" in body and "bootd.rev=2" not in body, (name, body)
    write(topo.tmp / "push/profiles/profile-a.json", profile("profile-a", "bootd.rev=2"))
    result = topo.api("apply", "-f", str(topo.tmp / "push"))
    assert result.returncode == 0, result.stderr
    seconds = {name: wait_served(topo, name, path, "bootd.rev=2") for name in ("a2", "b1", "a1")}
    print("profile change seen (s after the write returned): " + ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()))


def test_a_bios_machine_boots_through_the_replica_on_its_segment(topo):
    """Started here, waited for at the end of the module's storms (tests run in file order): it boots while
    the storms run, as a real machine would."""
    lab = topo.lab
    tap = lab.add_tap(lab.segment("b"), "tapb0")
    with open(topo.tmp / "vm1.qemu.log", "wb") as log:
        topo.vm = lab.start(lab.router_ns, qemu_argv("vm1", QEMU_MAC, tap, "bios", topo.tmp, "e1000"),
                            stdout=subprocess.DEVNULL, stderr=log)
    topo.vm_started = time.monotonic()


def in_range(address: str, topo: Topology) -> bool:
    first, last = (ipaddress.ip_address(a) for a in topo.lab.segment("a").range)
    return first <= ipaddress.ip_address(address) <= last


def acked(outcomes: dict[str, list]) -> dict[str, tuple[str, str]]:
    """MAC -> (address, server) for every client that got an ACK."""
    return {mac: (o[0], o[1]) for mac, o in outcomes.items() if o[0] not in ("no-offer", "failed")}


def duplicates(outcomes: dict[str, list]) -> dict[str, list[str]]:
    """Address -> the MACs it was ACKed to, for every address ACKed to more than one."""
    holders: dict[str, list[str]] = {}
    for mac, (address, _server) in acked(outcomes).items():
        holders.setdefault(address, []).append(mac)
    return {address: macs for address, macs in holders.items() if len(macs) > 1}


def test_storm_kill_9_of_a_replica_mid_storm_its_clients_complete_through_the_other(topo):
    lab = topo.lab
    a1, a2 = lab.replica("a1"), lab.replica("a2")
    segment = lab.segment("a")
    proc = storm(lab, segment, count=WAVE1, first=0, window=8, tries=TRIES, work=topo.tmp, progress=subprocess.PIPE)
    killed = threading.Event()

    def watch() -> None:  # kill -9 a1 once the clients have 1,000 ACKs
        for line in proc.stderr:
            if not killed.is_set() and line.startswith(b"acked ") and int(line.split()[1]) >= 1000:
                topo.kill("a1")
                killed.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = storm_result(proc, timeout=300)
    watcher.join(10)
    assert killed.is_set(), "a1 was not killed: the storm never reached 1,000 ACKs"
    got = acked(out["outcomes"])
    assert all(in_range(address, topo) for address, _ in got.values())
    by = {server: sum(1 for _, s in got.values() if s == server) for server in (a1.address, a2.address)}
    assert {s for _, s in got.values()} <= set(by), got
    print(f"wave 1: {out['acked']} of {WAVE1} clients got an address, ACKed by a1 {by[a1.address]}, by a2 "
          f"{by[a2.address]}; {len(out['restarted'])} started over after an unanswered REQUEST; {out['seconds']} s")
    topo.outcomes.update(out["outcomes"])
    # Every client a1 ACKed asks again for its address (INIT-REBOOT, naming no server): a2 has the lease.
    leases = {mac: address for mac, (address, server) in got.items() if server == a1.address}
    (topo.tmp / "a1-leases.json").write_text(json.dumps(leases))
    result = lab.run(segment.clients_ns, [sys.executable, "-m", "bench.fleet", "--reboot", str(topo.tmp / "a1-leases.json"),
                                          "--iface", segment.clients_if, "--tries", "3"], cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)["answers"]
    wrong = {mac: a for mac, a in answers.items() if a != ["ACK", leases[mac], a2.address]}
    # Each problem is listed (not only the first): every client got an address (those a1 left without an
    # answer started over with a DISCOVER and a2 completed them; `restarted` also counts REQUESTs a2 left
    # unanswered while it could not reach a quorum, so it is printed, not asserted), none twice, and a2
    # confirms each of a1's leases.
    missing = [(mac, o) for mac, o in out["outcomes"].items() if mac not in got]
    problems = [f"{len(missing)} clients got no address: {missing[:5]}"] if missing else []
    problems += [f"{address} ACKed to {', '.join(macs)}" for address, macs in duplicates(out["outcomes"]).items()]
    if wrong:
        problems.append(f"{len(wrong)} of a1's {len(leases)} clients not ACKed their address by a2 after a1's "
                        f"kill -9: {list(wrong.items())[:5]}")
    assert not problems, "\n".join(problems)


def test_storm_with_an_etcd_member_killed_no_address_is_given_twice(topo):
    lab = topo.lab
    topo.start("a1")  # back after its kill -9
    leader = lab.etcd_leader()
    lab.cluster.kill(leader)  # kill -9 the member that leads: an election, then two members carry on
    # most of these clients find the range full: 4 DISCOVERs (10 s) each, not TRIES
    out = storm_result(storm(lab, lab.segment("a"), count=WAVE2, first=WAVE1, window=12, tries=4, work=topo.tmp),
                       timeout=300)
    assert out["failed"] == 0, [o for o in out["outcomes"].values() if o[0] == "failed"][:5]
    assert out["acked"] > 0  # allocation went on with a member gone
    topo.outcomes.update(out["outcomes"])
    twice = duplicates(topo.outcomes)
    assert not twice, "\n".join(f"{address} ACKed to {', '.join(macs)}" for address, macs in twice.items())
    got = acked(topo.outcomes)
    assert all(in_range(address, topo) for address, _ in got.values())
    first, last = (ipaddress.ip_address(a) for a in lab.segment("a").range)
    size = int(last) - int(first) + 1
    alive = next(i for i in range(len(lab.cluster.members)) if i != leader)
    keys = lab.cluster.etcdctl(alive, "get", "--prefix", "--keys-only", f"{PREFIX}/leases/ip/").stdout.split()
    print(f"wave 2: {WAVE2} clients with etcd member {leader} killed: {out['acked']} ACKed, {out['no_offer']} "
          f"offered nothing; {len(got)} of {size} addresses given over both waves, none twice; etcd holds "
          f"{len(keys)} address keys; {out['seconds']} s")
    assert len(got) <= size
    # a write through the API still goes through with two members
    write(topo.tmp / "push/profiles/profile-a.json", profile("profile-a", "bootd.rev=3"))
    result = topo.api("apply", "-f", str(topo.tmp / "push"))
    assert result.returncode == 0, result.stderr
    wait_served(topo, "b1", f"/ipxe?mac={QEMU_MAC}", "bootd.rev=3")


def test_the_bios_machine_reported(topo):
    b1 = topo.bootd["b1"]
    wait_for_report(b1, topo.tmp, "vm1", QEMU_MAC, timeout=300 - (time.monotonic() - topo.vm_started))
    view = json.loads(topo.http("b1", f"/api/v1/machines/{QEMU_MAC}")[1])
    assert "bootd.rev=2" in view["report"]["cmdline"], view["report"]
    dhcp = next(stage for stage in view["stages"] if stage["stage"] == "dhcp")
    assert QEMU_IP in dhcp["detail"], view  # its reservation, from b1 (etcd holds no lease for it)
    print(f"vm1 reported {time.monotonic() - topo.vm_started:.0f} s after power-on")


def storm_b(topo: Topology, *, first: int = 0, count: int = 1, macs: list[str] | None = None) -> dict:
    """A few simulated clients on segment b, all at once, each sending a message twice (3 s) before giving up."""
    argv = [sys.executable, "-m", "bench.fleet", "--storm", "--count", str(count), "--first", str(first),
            "--window", "0", "--iface", "eth0", "--tries", "2"]
    if macs is not None:
        (topo.tmp / f"macs-{first}.json").write_text(json.dumps(macs))
        argv += ["--macs", str(topo.tmp / f"macs-{first}.json")]
    result = topo.lab.run(topo.lab.segment("b").clients_ns, argv, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def no_quorum_drops(topo: Topology, name: str) -> int:
    return json.loads(topo.http(name, "/api/v1/stats")[1])["dhcp"]["dropped"].get("no-quorum", 0)


def test_a_replica_cut_off_from_etcd_allocates_nothing_new_serves_what_it_knows_and_recovers(topo):
    lab, b1 = topo.lab, topo.bootd["b1"]
    before = storm_b(topo, first=900_000, count=20)  # clients b1 gives addresses while it reaches etcd
    assert before["acked"] == 20, before
    known = {mac: o[0] for mac, o in before["outcomes"].items()}
    served = topo.http("b1", f"/ipxe?mac={QEMU_MAC}")
    assert served[0] == 200, served
    mark = len(b1.lines)
    lab.cut_off(lab.replica("b1"))
    b1.wait_for_log(lambda l: l.get("level") == "warning" and "quorum" in l.get("message", ""), timeout=30,
                    start=mark)
    drops = no_quorum_drops(topo, "b1")
    fresh = storm_b(topo, first=910_000, count=3)
    assert fresh["no_offer"] == 3, fresh  # nothing new while cut off, and counted as such
    assert no_quorum_drops(topo, "b1") >= drops + 3 * 2
    assert topo.http("b1", f"/ipxe?mac={QEMU_MAC}") == served  # the store's data, from its cache
    reserved = storm_b(topo, first=920_000, macs=[RESERVED_MAC])
    assert reserved["outcomes"][RESERVED_MAC][:2] == [RESERVED_IP, lab.replica("b1").address], reserved
    (topo.tmp / "b-known.json").write_text(json.dumps(known))
    result = lab.run(lab.segment("b").clients_ns, [sys.executable, "-m", "bench.fleet", "--reboot",
                                                   str(topo.tmp / "b-known.json"), "--iface", "eth0", "--tries", "2"],
                     cwd=ROOT, timeout=60)
    answers = json.loads(result.stdout)["answers"]
    assert all(a[:2] == ["ACK", known[mac]] for mac, a in answers.items()), answers
    mark = len(b1.lines)
    lab.heal(lab.replica("b1"))
    b1.wait_for_log(lambda l: "quorum" in l.get("message", "") and l.get("level") == "info", timeout=30, start=mark)
    after = storm_b(topo, first=930_000, count=3)
    assert after["acked"] == 3, after
