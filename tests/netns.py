"""Test networks in namespaces the test makes and removes: nothing touches the host's interfaces.

A `NetLab` is one server namespace (`<name>-s`) holding bootd, optionally a bridge in it, and client
namespaces (`<name>-c<N>`) each joined to the server by a veth pair (to the bridge when there is one).
Addresses come from 192.0.2.0/24 (TEST-NET-1) and exist only inside these namespaces.

Cleanup (`close`, also on a failed test through the fixture) is by PID first: every process started
through the lab is signalled as a process group, then anything still living in the namespaces
(`ip netns pids`) is killed; then the namespaces are deleted by name, which removes their links.
Namespaces left by a killed earlier run with the same name are removed before a lab is made.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
from dataclasses import dataclass, field

from pyroute2 import IPRoute, NetNS, netns

from appliance.lab import kill_namespace_processes


@dataclass(frozen=True)
class Client:
    ns: str
    ifname: str
    mac: str
    address: str | None
    server_ifname: str = ""  # the server's end of this client's veth pair


@dataclass
class NetLab:
    name: str
    server_address: str = "192.0.2.1/24"
    bridge: bool = False
    clients: list[Client] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def server_ns(self) -> str:
        return f"{self.name}-s"

    @property
    def server_ip(self) -> str:
        return str(ipaddress.ip_interface(self.server_address).ip)

    def create(self) -> NetLab:
        self._remove_stale()
        netns.create(self.server_ns)
        with NetNS(self.server_ns) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            if self.bridge:
                ns.link("add", ifname="br0", kind="bridge")
                index = ns.link_lookup(ifname="br0")[0]
                self._address(ns, index, self.server_address)
                ns.link("set", index=index, state="up")
        return self

    def add_client(self, address: str | None = None, mac: str | None = None,
                   server_address: str | None = None) -> Client:
        """A client namespace on a new veth pair. Without a bridge, the server's end of the first pair gets
        `server_address` of the lab; later pairs get the `server_address` given here (if any)."""
        n = len(self.clients)
        client_ns = f"{self.name}-c{n}"
        netns.create(client_ns)
        server_end, client_end = f"{self.name[:8]}s{n}", f"{self.name[:8]}c{n}"
        with IPRoute() as ipr:
            ipr.link("add", ifname=server_end, kind="veth", peer={"ifname": client_end, "net_ns_fd": client_ns})
            ipr.link("set", index=ipr.link_lookup(ifname=server_end)[0], net_ns_fd=self.server_ns)
        with NetNS(self.server_ns) as ns:
            index = ns.link_lookup(ifname=server_end)[0]
            if self.bridge:
                ns.link("set", index=index, master=ns.link_lookup(ifname="br0")[0])
            elif n == 0 or server_address:
                self._address(ns, index, server_address or self.server_address)
            ns.link("set", index=index, state="up")
        with NetNS(client_ns) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            index = ns.link_lookup(ifname=client_end)[0]
            if mac:
                ns.link("set", index=index, address=mac)
            if address:
                self._address(ns, index, address)
            ns.link("set", index=index, state="up")
            mac = ns.get_links(index)[0].get("IFLA_ADDRESS")
        client = Client(client_ns, client_end, mac, str(ipaddress.ip_interface(address).ip) if address else None,
                        server_end)
        self.clients.append(client)
        return client

    def add_tap(self, name: str) -> str:
        """A tap device on the server's bridge, for a QEMU VM (QEMU opens it by name inside the namespace)."""
        assert self.bridge, "taps join the bridge"
        for argv in (["ip", "tuntap", "add", "dev", name, "mode", "tap"],
                     ["ip", "link", "set", name, "master", "br0", "up"]):
            subprocess.run(["ip", "netns", "exec", self.server_ns, *argv], check=True, capture_output=True)
        return name

    def start(self, ns: str, argv: list[str], **popen) -> subprocess.Popen:
        """Start a process inside `ns` in a process group of its own; `close` ends it."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True, **popen)
        self.processes.append(proc)
        return proc

    def run(self, ns: str, argv: list[str], timeout: float = 30, text: bool = True,
            **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], timeout=timeout, capture_output=True,
                              text=text, **kw)

    def close(self) -> None:
        for proc in self.processes:
            _end_group(proc)
        for ns in [self.server_ns, *(c.ns for c in self.clients)]:
            kill_namespace_processes(ns)
            if ns in netns.listnetns():
                netns.remove(ns)
        self.processes.clear()

    def __enter__(self) -> NetLab:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _address(ns: NetNS, index: int, address: str) -> None:
        iface = ipaddress.ip_interface(address)
        ns.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def _remove_stale(self) -> None:
        for ns in netns.listnetns():
            if ns == self.server_ns or ns.startswith(f"{self.name}-c"):
                kill_namespace_processes(ns)
                netns.remove(ns)


def _end_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)
    except ProcessLookupError:
        pass
