"""A network of bootd replicas in namespaces: L2 segments joined by a router, and an etcd cluster behind it.

    segment a (bridge bra, 10.97.0.0/20)      segment b (bridge brb, 10.98.0.0/20)     ...
      replicas <p>-a1 10.97.0.2, <p>-a2 .0.3     replica <p>-b1 10.98.0.2
      clients  <p>-ca 10.97.15.254               clients <p>-cb 10.98.15.254
      QEMU taps on the bridge                    QEMU taps on the bridge
                  \\                              /
                   router <p>-r (.0.1 on each segment, forwarding; holds the bridges and the taps)
                                  |
                   etcd <p>-etcd: 10.96.0.11, .12, .13 (one member each, their own process)

Each replica has one interface, on its segment (its clients' DHCP, TFTP, HTTP) with a default route through
the router, so its etcd traffic is routed like a real site's. `cut_off` drops (silently, as a partition
does) everything the router would forward between one replica and the etcd members, by policy rules in
the router; `heal` removes them. Members' data directories live on tmpfs (/dev/shm): etcd fsyncs every
commit and this box's disk is shared, and the tests are about agreement, not about disks.

Every process is started through `start` (its own process group) and ended by PID at `close`; then whatever
still runs in the namespaces is killed and the namespaces deleted. Names start with the caller's prefix, so
two labs (a test and a benchmark) never meet.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from pyroute2 import netns

from appliance.lab import kill_namespace_processes
from tests.etcd_cluster import EtcdCluster, MemberPlace
from tests.netns import _end_group

ETCD_NET = ipaddress.ip_network("10.96.0.0/24")
ETCD_ROUTER = "10.96.0.1"
CLIENT_PORT, PEER_PORT = 2379, 2380


@dataclass(frozen=True)
class Segment:
    name: str  # "a", "b", ...
    subnet: ipaddress.IPv4Network
    bridge: str  # in the router namespace
    clients_ns: str  # a namespace on the segment for simulated clients (bench/fleet.py)
    clients_if: str = "eth0"

    @property
    def router(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def clients_ip(self) -> str:
        return str(self.subnet.broadcast_address - 1)

    @property
    def range(self) -> tuple[str, str]:
        """The addresses the replicas hand out: all of the subnet but the first ten and the last five."""
        return str(self.subnet.network_address + 10), str(self.subnet.broadcast_address - 5)


@dataclass(frozen=True)
class Replica:
    name: str  # "a1", "a2", "b1"
    ns: str
    address: str
    segment: Segment


@dataclass(frozen=True)
class EtcdAddress:
    name: str
    address: str

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{CLIENT_PORT}"


@dataclass
class ReplicaLab:
    prefix: str  # namespace names start with it; at most 6 characters
    layout: tuple[int, ...] = (2, 1)  # replicas per segment
    members: int = 3
    work: Path = Path("/tmp")
    segments: list[Segment] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    etcd: list[EtcdAddress] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    cluster: EtcdCluster | None = None
    _namespaces: list[str] = field(default_factory=list)

    @property
    def router_ns(self) -> str:
        return f"{self.prefix}-r"

    @property
    def etcd_ns(self) -> str:
        return f"{self.prefix}-etcd"

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.etcd]

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def segment(self, name: str) -> Segment:
        return next(s for s in self.segments if s.name == name)

    # --- building ----------------------------------------------------------------------------------------

    def create(self) -> ReplicaLab:
        assert len(self.prefix) <= 6, "namespace and interface names are built from the prefix"
        self._remove_stale()
        self._namespace(self.router_ns)
        self.sh(self.router_ns, "sysctl -qw net.ipv4.ip_forward=1")
        self._namespace(self.etcd_ns)
        self._link(self.etcd_ns, "vetcd", None, f"{ETCD_ROUTER}/24")
        for i in range(self.members):
            address = str(ETCD_NET.network_address + 11 + i)
            self.sh(self.etcd_ns, f"ip addr add {address}/24 dev eth0")
            self.etcd.append(EtcdAddress(f"m{i}", address))
        self.sh(self.etcd_ns, f"ip route add default via {ETCD_ROUTER}")
        for index, count in enumerate(self.layout):
            name = "abcdefgh"[index]
            subnet = ipaddress.ip_network(f"10.{97 + index}.0.0/20")
            segment = Segment(name, subnet, f"br{name}", f"{self.prefix}-c{name}")
            self.sh(self.router_ns, f"ip link add {segment.bridge} type bridge",
                    f"ip link set {segment.bridge} type bridge stp_state 0 forward_delay 0",
                    f"ip addr add {segment.router}/20 dev {segment.bridge}", f"ip link set {segment.bridge} up")
            self.segments.append(segment)
            self._namespace(segment.clients_ns)
            self._link(segment.clients_ns, f"vc{name}", segment.bridge, None)
            self.sh(segment.clients_ns, f"ip addr add {segment.clients_ip}/20 dev eth0",
                    f"ip route add default via {segment.router}", "sysctl -qw net.ipv4.tcp_tw_reuse=1")
            # each simulated machine opens its own connections, all from this one address
            self.run(segment.clients_ns, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"])
            for n in range(count):
                replica = Replica(f"{name}{n + 1}", f"{self.prefix}-{name}{n + 1}",
                                  str(subnet.network_address + 2 + n), segment)
                self._namespace(replica.ns)
                self._link(replica.ns, f"v{replica.name}", segment.bridge, None)
                # the IPv6 address: where a replica's router advertisement comes from (iPXE waits for
                # IPv6 on a segment with none)
                self.sh(replica.ns, f"ip addr add {replica.address}/20 dev eth0",
                        f"ip addr add fd{97 + index}::{2 + n}/64 dev eth0 nodad",
                        f"ip route add default via {segment.router}")
                self.replicas.append(replica)
        return self

    def _namespace(self, name: str) -> None:
        netns.create(name)
        self._namespaces.append(name)
        self.sh(name, "ip link set lo up")

    def _link(self, ns: str, router_end: str, bridge: str | None, router_address: str | None) -> None:
        """A veth pair: `eth0` in `ns`, `router_end` in the router (on `bridge`, or with `router_address`)."""
        self.sh(self.router_ns, f"ip link add {router_end} type veth peer name eth0 netns {ns}")
        if bridge:
            self.sh(self.router_ns, f"ip link set {router_end} master {bridge}")
        if router_address:
            self.sh(self.router_ns, f"ip addr add {router_address} dev {router_end}")
        self.sh(self.router_ns, f"ip link set {router_end} up")
        self.sh(ns, "ip link set eth0 up")

    def add_tap(self, segment: Segment, name: str) -> str:
        """A tap on the segment's bridge, for a QEMU machine started in the router namespace."""
        self.sh(self.router_ns, f"ip tuntap add dev {name} mode tap", f"ip link set {name} master {segment.bridge} up")
        return name

    # --- etcd (tests/etcd_cluster.py's cluster, its members in the etcd namespace) -------------------------

    def start_etcd(self, timeout: float = 60) -> EtcdCluster:
        base = Path(f"/dev/shm/{self.prefix}-etcd")
        shutil.rmtree(base, ignore_errors=True)
        places = [MemberPlace(host=m.address, ns=self.etcd_ns, client_port=CLIENT_PORT, peer_port=PEER_PORT)
                  for m in self.etcd]
        self.cluster = EtcdCluster(base, places=places, lab=self, name="m")  # type: ignore[arg-type]
        return self.cluster.start(timeout=timeout)

    def etcd_leader(self) -> int:
        """The index of the member that leads now."""
        for index in range(len(self.cluster.members)):
            if self.cluster.members[index].pid is None:
                continue
            result = self.cluster.etcdctl(index, "endpoint", "status", "-w", "json")
            if result.returncode == 0:
                status = json.loads(result.stdout)[0]["Status"]
                if status["leader"] == status["header"]["member_id"]:
                    return index
        raise AssertionError("no etcd member says it leads")

    # --- partitions ----------------------------------------------------------------------------------------

    def cut_off(self, replica: Replica) -> None:
        """The router drops everything between `replica` and the etcd members, both ways, silently."""
        self.sh(self.router_ns, f"ip rule add from {replica.address} to {ETCD_NET} blackhole priority 90",
                f"ip rule add from {ETCD_NET} to {replica.address} blackhole priority 91")

    def heal(self, replica: Replica) -> None:
        self.sh(self.router_ns, f"ip rule del from {replica.address} to {ETCD_NET} blackhole priority 90",
                f"ip rule del from {ETCD_NET} to {replica.address} blackhole priority 91")

    # --- processes -----------------------------------------------------------------------------------------

    def start(self, ns: str, argv: list[str], **popen) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True, **popen)
        self.processes.append(proc)
        return proc

    def run(self, ns: str, argv: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], timeout=timeout, capture_output=True, text=True,
                              check=False, **kw)

    def sh(self, ns: str, *commands: str) -> None:
        for command in commands:
            result = self.run(ns, command.split())
            assert result.returncode == 0, (ns, command, result.stderr)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        for proc in self.processes:
            _end_group(proc)
        self.processes.clear()
        for ns in reversed(self._namespaces):
            kill_namespace_processes(ns)
            if ns in netns.listnetns():
                netns.remove(ns)
        self._namespaces.clear()
        shutil.rmtree(f"/dev/shm/{self.prefix}-etcd", ignore_errors=True)

    def _remove_stale(self) -> None:
        """Namespaces a killed earlier run with this prefix left behind."""
        for ns in netns.listnetns():
            if ns.startswith(f"{self.prefix}-"):
                kill_namespace_processes(ns)
                netns.remove(ns)

    def __enter__(self) -> Self:
        try:
            return self.create()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
