"""Authoritative DHCP leases in etcd, proved with real processes: a 3-member etcd cluster, two bootd replicas
authoritative over the same range on one segment (a bridge in namespaces), and RFC 2131 clients
(tests/dhcp_race.py) that take whichever replica's OFFER comes first.

    server ns <p>-s: bridge br0 10.97.0.1/16 and the etcd members (10.97.0.1:23x9)
    <p>-c0: replica A 10.97.0.2      <p>-c1: replica B 10.97.0.3      <p>-c2: the clients (no address)

One story, in order (each step needs the state the one before left):
1. 2,000 new clients race through both replicas: every one is ACKed, no address is held by two MACs
   (from the clients' side and in etcd), and what the clients were told is what etcd holds.
2. kill -9 of the replica that granted a lease: the client renews through the other one, same address (the
   key carries no tie to the dead replica: it is still in etcd).
3. the other replica cut off from etcd (its packets to the members dropped): it logs the state once,
   offers nothing to a new client, still ACKs a reservation and renews a known lease (for no longer than
   etcd holds it); healed, it logs that and allocates again (a new client's lease lands in etcd).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.etcd_cluster import EtcdCluster, MemberPlace
from tests.integration.test_http import write
from tests.netns import NetLab

ROOT = Path(__file__).parents[2]
CLIENTS = 2000
RESERVED_MAC, RESERVED_IP = "02:01:ff:00:00:01", "10.97.0.50"
RANGE = ("10.97.1.0", "10.97.9.255")  # 2,304 addresses for 2,000 clients (plus a few later)


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with NetLab(f"le{os.getpid() % 100000}", server_address="10.97.0.1/16", bridge=True) as lab:
        yield lab


def replica_config(tmp_path: Path, name: str, address: str, endpoints: list[str]) -> Path:
    data = tmp_path / name / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/k"}})
    write(data / "groups/default.json", {"id": "default", "profile": "p"})
    path = tmp_path / name / "bootd.yaml"
    path.write_text(
        f"state_dir: {tmp_path / name / 'state'}\nlisten:\n  address: {address}\n"
        f"http:\n  address: {address}\n  port: 8080\n  data_dir: {data}\n"
        f"store:\n  backend: etcd\n  endpoints: [{', '.join(endpoints)}]\n  prefix: /bootd\n"
        f"dhcp:\n  mode: authoritative\n  subnet: 10.97.0.0/16\n  range: [{RANGE[0]}, {RANGE[1]}]\n"
        f"  router: 10.97.0.1\n  lease: 1h\n"
        f"machines:\n  - {{name: r1, mac: \"{RESERVED_MAC}\", ip: {RESERVED_IP}}}\n")
    return path


def clients(lab: NetLab, client, *args: str, timeout: float = 120) -> dict:
    result = lab.run(client.ns, [sys.executable, "-m", "tests.dhcp_race", "--iface", client.ifname, *args],
                     cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def in_etcd(cluster: EtcdCluster, prefix: str) -> dict[str, str]:
    """key (after `prefix`) -> value, as etcdctl reads it from member 0."""
    result = cluster.etcdctl(0, "get", prefix, "--prefix", "-w", "json")
    assert result.returncode == 0, result.stderr
    kvs = json.loads(result.stdout).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode()[len(prefix):]: base64.b64decode(kv["value"]).decode() for kv in kvs}


def logged(bootd: BootdProcess, text: str, start: int = 0, timeout: float = 20) -> int:
    """Waits for a log line containing `text`; the index after it."""
    line = bootd.wait_for_log(lambda l: text in l.get("message", ""), timeout, start)
    return bootd.lines.index(line) + 1


def test_two_replicas_race_survive_a_kill_and_a_cut_off(lab, tmp_path):
    a_host, b_host = lab.add_client("10.97.0.2/16"), lab.add_client("10.97.0.3/16")
    load = lab.add_client()
    places = [MemberPlace(host="10.97.0.1", ns=lab.server_ns, client_port=2379 + 10 * i, peer_port=2380 + 10 * i)
              for i in range(3)]
    cluster = EtcdCluster(tmp_path / "etcd", places=places, lab=lab).start()
    try:
        endpoints = cluster.endpoints
        a = BootdProcess(replica_config(tmp_path, "a", "10.97.0.2", endpoints), lab=lab, ns=a_host.ns).start()
        b = BootdProcess(replica_config(tmp_path, "b", "10.97.0.3", endpoints), lab=lab, ns=b_host.ns).start()

        # 1. the race
        race = clients(lab, load, "dora", "--count", str(CLIENTS), "--window", "64")
        acked = race["acked"]
        assert len(acked) == CLIENTS, {k: v for k, v in race.items() if k != "acked"}
        by_ip: dict[str, list[str]] = {}
        for mac, (ip, _server, seconds) in acked.items():
            by_ip.setdefault(ip, []).append(mac)
            assert seconds == 3600
        assert not {ip: macs for ip, macs in by_ip.items() if len(macs) > 1}, "an address ACKed to two MACs"
        ips = in_etcd(cluster, "/bootd/leases/ip/")
        macs = in_etcd(cluster, "/bootd/leases/mac/")
        held = {ip: json.loads(value)["mac"] for ip, value in ips.items()}
        assert held == {ip: mac for mac, (ip, _s, _t) in acked.items()}  # etcd holds exactly what was ACKed
        assert macs == {mac: ip for mac, (ip, _s, _t) in acked.items()}  # and each MAC key names its address
        served = {server for _ip, server, _t in acked.values()}
        print(f"race: {race['dora_per_s']} DORA/s, {race['naks']} NAKs, {race['retransmits']} retransmits, "
              f"served by {sorted(served)}: " + ", ".join(
                  f"{s} {sum(1 for v in acked.values() if v[1] == s)}" for s in sorted(served)))

        # 2. kill -9 of the replica that granted a lease: the other renews it, same address
        mac_a = next(mac for mac, (_ip, server, _t) in acked.items() if server == "10.97.0.2") \
            if "10.97.0.2" in served else next(iter(acked))
        ip_a = acked[mac_a][0]
        granted_by_b = acked[mac_a][1] == "10.97.0.3"
        killed, survivor = (b, a) if granted_by_b else (a, b)
        killed.kill()
        assert json.loads(in_etcd(cluster, "/bootd/leases/ip/")[ip_a])["mac"] == mac_a  # nothing released
        renewed = clients(lab, load, "renew", f"{mac_a}={ip_a}")
        assert renewed["acked"].get(mac_a, [None])[0] == ip_a, renewed
        assert renewed["acked"][mac_a][2] == 3600  # a full renewal: committed to etcd
        survivor_ip = "10.97.0.3" if survivor is b else "10.97.0.2"
        assert renewed["acked"][mac_a][1] == survivor_ip

        # 3. the survivor cut off from etcd: its packets to the members are dropped
        survivor_ns = b_host.ns if survivor is b else a_host.ns
        mark = len(survivor.lines)
        rule = ["-d", "10.97.0.1", "-p", "tcp", "-j", "DROP"]
        assert lab.run(survivor_ns, ["iptables", "-I", "OUTPUT", *rule]).returncode == 0
        try:
            mark = logged(survivor, "etcd has no quorum from this replica", mark)
            fresh = clients(lab, load, "discover", "--count", "3", "--first", "900000", "--secs", "3")
            assert fresh["offers"] == {}, fresh  # nothing new while it cannot commit
            reserved = clients(lab, load, "renew", f"{RESERVED_MAC}={RESERVED_IP}")
            assert reserved["acked"].get(RESERVED_MAC, [None])[0] == RESERVED_IP, reserved
            known_mac, (known_ip, _s, _t) = next((m, v) for m, v in acked.items() if m != mac_a)
            cached = clients(lab, load, "renew", f"{known_mac}={known_ip}")
            assert cached["acked"].get(known_mac, [None])[0] == known_ip, cached
            assert 0 < cached["acked"][known_mac][2] < 3600  # what etcd still holds, not a new hour
            assert not [l for l in survivor.lines[mark:] if "no quorum from this replica" in l.get("message", "")]
        finally:
            lab.run(survivor_ns, ["iptables", "-D", "OUTPUT", *rule])
        mark = logged(survivor, "etcd quorum reachable again", mark)
        after = clients(lab, load, "dora", "--count", "1", "--first", "900000", "--secs", "20")
        assert len(after["acked"]) == 1, f"{after}\nthe replica's log:\n{survivor.log_text()}"
        new_mac, (new_ip, _s, _t) = next(iter(after["acked"].items()))
        assert json.loads(in_etcd(cluster, "/bootd/leases/ip/")[new_ip])["mac"] == new_mac
        assert new_ip not in by_ip
        assert survivor.stop() == 0
    finally:
        cluster.close()
