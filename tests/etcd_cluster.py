"""A real etcd cluster for tests (Debian's etcd-server 3.4, /usr/bin/etcd): N members, each its own data dir,
on loopback (free ports) or inside network namespaces a test made (tests/netns.py NetLab).

    cluster = EtcdCluster(tmp_path / "etcd", size=3).start()      # loopback, free ports
    cluster.endpoints                                              # ["http://127.0.0.1:PORT", ...]
    cluster.kill(1)                                                # kill -9 member 1 (by PID)
    cluster.restart(1)                                             # same data dir, rejoins; waits until healthy
    cluster.pause(2); cluster.resume(2)                            # SIGSTOP / SIGCONT: a member that hangs
    cluster.close()                                                # every member ended by PID

or as a fixture: `etcd_cluster(size=3)` (the `etcd_cluster` fixture below is a factory; everything it made is
closed after the test). In namespaces, give one `MemberPlace` per member (namespace, address and ports) and the
NetLab: each etcd runs through `lab.start` (`ip netns exec` execs etcd, so the PID is etcd's). The members must
reach each other: a NetLab with `bridge=True` puts every client namespace on one segment with the server's
(checked: 3 members at 192.0.2.1, .10, .11 up in ~1.3 s, kill -9 and restart of one).

`tls=ServerTls(ca, cert, key, client_cert, client_key)` serves https with client certificates required
(`bootd certs init --san IP:127.0.0.1` makes a usable set: server.crt/key and client.crt/key under one CA).

Health is `etcdctl endpoint health` run where the member runs (a namespace's address cannot be reached from
the host): a member is healthy when it answers a quorum read, so `start` returns only once the cluster has a
leader and every member serves. Logs: `<data dir>.log` beside each member's data dir, printed (the tail) when a
member does not become healthy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.netns import NetLab

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class MemberPlace:
    """Where a member runs: a namespace (None: the host) and the address and ports it listens on."""
    host: str = "127.0.0.1"
    ns: str | None = None
    client_port: int = 0  # 0: a free port (on the host only)
    peer_port: int = 0


@dataclass(frozen=True)
class ServerTls:
    """TLS on the members' client URLs (https): the server certificate and key, and the CA that client
    certificates must chain to (--client-cert-auth). Peers talk plain http among themselves."""
    ca: Path
    cert: Path
    key: Path
    client_cert: Path | None = None  # for etcdctl's health checks (required: the members ask for one)
    client_key: Path | None = None


@dataclass
class EtcdMember:
    name: str
    place: MemberPlace
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen | None = None
    scheme: str = "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.place.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.place.host}:{self.peer_port}"

    @property
    def log(self) -> Path:
        return self.data_dir.with_suffix(".log")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


class EtcdCluster:
    live: set[EtcdCluster] = set()  # started and not yet closed: the session's safety net closes them

    def __init__(self, base: Path, size: int = 3, *, places: list[MemberPlace] | None = None,
                 lab: NetLab | None = None, name: str = "e", heartbeat_ms: int = 100,
                 election_ms: int = 1000, tls: ServerTls | None = None) -> None:
        places = places or [MemberPlace() for _ in range(size)]
        if any(p.ns is not None for p in places) and lab is None:
            raise ValueError("members in namespaces need the NetLab that made them")
        base.mkdir(parents=True, exist_ok=True)
        self.base, self.lab, self.name = base, lab, name
        self.heartbeat_ms, self.election_ms = heartbeat_ms, election_ms
        self.tls = tls
        self.token = f"{name}-{os.getpid()}-{time.monotonic_ns()}"  # a cluster never joins another's members
        self.members = [EtcdMember(name=f"{name}{i}", place=p,
                                   client_port=p.client_port or free_port(p.host),
                                   peer_port=p.peer_port or free_port(p.host),
                                   data_dir=base / f"{name}{i}", scheme="https" if tls else "http")
                        for i, p in enumerate(places)]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def argv(self, member: EtcdMember, state: str) -> list[str]:
        return [ETCD, "--name", member.name, "--data-dir", str(member.data_dir),
                "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
                "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
                "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.token,
                "--initial-cluster-state", state, "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms), "--logger", "zap", "--log-outputs", "stderr",
                *(["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key), "--trusted-ca-file",
                   str(self.tls.ca), "--client-cert-auth"] if self.tls is not None else [])]

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> EtcdCluster:
        EtcdCluster.live.add(self)
        for member in self.members:
            self._spawn(member, "new")
        self.wait_healthy(timeout=timeout)
        return self

    def _spawn(self, member: EtcdMember, state: str) -> None:
        log = open(member.log, "ab")
        try:
            kw = {"stdout": subprocess.DEVNULL, "stderr": log, "stdin": subprocess.DEVNULL}
            argv = self.argv(member, state)
            if member.place.ns is not None:
                assert self.lab is not None
                member.proc = self.lab.start(member.place.ns, argv, **kw)
            else:
                member.proc = subprocess.Popen(argv, start_new_session=True, **kw)
        finally:
            log.close()

    def kill(self, index: int) -> int:
        """kill -9 one member by PID; the PID it had."""
        member = self.members[index]
        assert member.proc is not None and member.proc.poll() is None, f"{member.name} is not running"
        pid = member.proc.pid
        os.kill(pid, signal.SIGKILL)
        member.proc.wait(10)
        return pid

    def pause(self, index: int) -> None:
        """SIGSTOP one member: it keeps its connections but answers nothing (a hung or cut-off member)."""
        member = self.members[index]
        assert member.pid is not None, f"{member.name} is not running"
        os.kill(member.pid, signal.SIGSTOP)

    def resume(self, index: int) -> None:
        """SIGCONT a paused member."""
        member = self.members[index]
        assert member.pid is not None, f"{member.name} is not running"
        os.kill(member.pid, signal.SIGCONT)

    def stop(self, index: int, grace: float = 10) -> None:
        """SIGTERM one member (kill -9 after `grace`)."""
        _end(self.members[index].proc, grace)

    def restart(self, index: int, timeout: float = 30) -> None:
        """Start a stopped or killed member again on its data dir; returns once it is healthy."""
        member = self.members[index]
        if member.pid is not None:
            self.stop(index)
        self._spawn(member, "existing")
        self.wait_healthy([index], timeout=timeout)

    def stop_all(self) -> None:
        for i in range(len(self.members)):
            self.stop(i)

    def start_all(self, timeout: float = 30) -> None:
        """Start again every member that is not running (after `stop_all`); waits for all of them."""
        for member in self.members:
            if member.pid is None:
                self._spawn(member, "existing")
        self.wait_healthy(timeout=timeout)

    def close(self) -> None:
        for member in self.members:
            _end(member.proc, 5)
        EtcdCluster.live.discard(self)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- health -------------------------------------------------------------------------------------

    def healthy(self, index: int) -> bool:
        member = self.members[index]
        if member.pid is None:
            return False
        return self.etcdctl(index, "endpoint", "health", "--command-timeout=2s").returncode == 0

    def wait_healthy(self, indexes: list[int] | None = None, timeout: float = 30) -> None:
        waiting = list(range(len(self.members)) if indexes is None else indexes)
        deadline = time.monotonic() + timeout
        while waiting:
            for i in list(waiting):
                member = self.members[i]
                if member.proc is None or member.proc.poll() is not None:
                    raise AssertionError(f"etcd {member.name} exited ({member.proc and member.proc.returncode}):"
                                         f"\n{self.log_tail(i)}")
                if self.healthy(i):
                    waiting.remove(i)
            if waiting and time.monotonic() > deadline:
                raise AssertionError(f"etcd {', '.join(self.members[i].name for i in waiting)} not healthy after "
                                     f"{timeout} s:\n" + "\n".join(self.log_tail(i) for i in waiting))
            if waiting:
                time.sleep(0.1)

    def etcdctl(self, index: int, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        """etcdctl (API v3) against one member, run where that member runs."""
        member = self.members[index]
        argv = [ETCDCTL, "--endpoints", member.client_url]
        if self.tls is not None:
            argv += ["--cacert", str(self.tls.ca)]
            if self.tls.client_cert is not None:
                argv += ["--cert", str(self.tls.client_cert), "--key", str(self.tls.client_key)]
        argv += args
        env = {**os.environ, "ETCDCTL_API": "3"}
        if member.place.ns is not None:
            argv = ["ip", "netns", "exec", member.place.ns, *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)

    def log_tail(self, index: int, lines: int = 20) -> str:
        member = self.members[index]
        try:
            text = member.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return f"--- {member.log} ---\n" + "\n".join(text)

    def remove_data(self) -> None:
        """Every member's data dir and log (the cluster must be closed)."""
        for member in self.members:
            assert member.pid is None
            shutil.rmtree(member.data_dir, ignore_errors=True)
            member.log.unlink(missing_ok=True)


def _end(proc: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM the process (its own process group), SIGKILL after `grace`; by PID, never by name."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGCONT)  # a paused member would not see SIGTERM
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)
    except ProcessLookupError:
        pass


@pytest.fixture
def etcd_cluster(tmp_path):
    """A factory: `etcd_cluster(size=3, **EtcdCluster kwargs)` -> a started cluster under tmp_path; every
    cluster it made is closed after the test, by PID."""
    made: list[EtcdCluster] = []

    def make(size: int = 3, **kw) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path / f"etcd{len(made)}", size, **kw)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.close()


def close_leftover_clusters() -> None:
    """For a session-end safety net: closes what a failing test left running."""
    for cluster in list(EtcdCluster.live):
        cluster.close()
