"""Authoritative DHCP measured with ISC's perfdhcp (Debian's kea-admin): bootd against Kea 2.2
(kea-dhcp4-server, memfile leases, persist on) and dnsmasq --no-ping, on a /16.

Topology: a server namespace and a client namespace joined by a veth pair (10.97.0.0/16 exists only inside
them); the server on CPU 1, perfdhcp on CPU 0. Each server starts with no leases. Workloads, each round
alternating the servers (medians over rounds):
- "DORA 100/s", "DORA 1000/s": perfdhcp -r RATE for --secs (10 s): completed exchanges per second and the
  REQUEST->ACK delays (avg, max);
- "DORA full": -r 20000 (more than any of them completes on one core here): exchanges completed per second.
perfdhcp draws its clients from 60,000 MACs (-R), so nearly every exchange is a new client.
What each server promises differs and the results say so: bootd's ACK leaves once its lease is fsynced to
its journal; Kea's memfile appends the lease to its CSV file without an fsync; dnsmasq's lease file is
/dev/null here (as in bench/dhcp).

Usage (root): python -m bench.kea [--rounds 3] [--secs 10] [--smoke]
(--smoke: one round of 2 s at 100/s; every server must complete exchanges; no performance asserted)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import LOAD_CPU, SERVER_CPU, cpu_seconds, median, wait_quiet, write_results
from tests.netns import NetLab, _end_group

SERVER_IP = "10.97.0.1"
CLIENT_ADDRESS = "10.97.255.254/16"
RANGE = ("10.97.0.10", "10.97.255.250")
CLIENTS = 60_000
WORKLOADS = (("DORA 100/s", 100), ("DORA 1000/s", 1000), ("DORA full", 20000))


def kea_argv(work: Path, interface: str) -> list[str]:
    leases = work / "kea-leases4.csv"
    leases.unlink(missing_ok=True)
    config = {"Dhcp4": {
        "interfaces-config": {"interfaces": [interface], "dhcp-socket-type": "raw"},
        "lease-database": {"type": "memfile", "persist": True, "name": str(leases), "lfc-interval": 0},
        "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 3150, "authoritative": True,
        "subnet4": [{"subnet": "10.97.0.0/16", "pools": [{"pool": f"{RANGE[0]} - {RANGE[1]}"}]}],
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": "stdout"}]}],
    }}
    path = work / "kea-dhcp4.json"
    path.write_text(json.dumps(config, indent=1))
    return ["kea-dhcp4", "-c", str(path)]


def dnsmasq_argv(interface: str) -> list[str]:
    return ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", f"--interface={interface}",
            "--bind-interfaces", "--quiet-dhcp", "--log-facility=-", "--dhcp-leasefile=/dev/null",
            f"--dhcp-range={RANGE[0]},{RANGE[1]},255.255.0.0,1h", "--no-ping", "--dhcp-authoritative",
            "--dhcp-lease-max=70000"]


def bootd_argv(work: Path) -> list[str]:
    state = work / "state"
    state.mkdir(parents=True, exist_ok=True)
    for name in ("leases.json", "leases.journal"):
        (state / name).unlink(missing_ok=True)
    (work / "data").mkdir(exist_ok=True)
    config = work / "bootd.yaml"
    config.write_text(f"state_dir: {state}\nhttp:\n  address: {SERVER_IP}\n  port: 8080\n  data_dir: {work / 'data'}\n"
                      f"dhcp:\n  mode: authoritative\n  subnet: 10.97.0.0/16\n  range: [{RANGE[0]}, {RANGE[1]}]\n"
                      "  lease: 1h\n")
    return [sys.executable, "-m", "appliance", "run", "-c", str(config)]


def perfdhcp(lab: NetLab, client, rate: int, secs: float) -> dict:
    argv = ["taskset", "-c", LOAD_CPU, "perfdhcp", "-4", "-l", client.ifname, "-r", str(rate), "-p", str(int(secs)),
            "-R", str(CLIENTS), "-W", "500000"]
    result = lab.run(client.ns, argv, timeout=secs + 60)
    return parse_perfdhcp(result.stdout + result.stderr)


def parse_perfdhcp(text: str) -> dict:
    """perfdhcp's report: the exchange rate and, per exchange, packets, drops and delays (ms)."""
    out: dict = {}
    rate = re.search(r"Rate:\s+([\d.]+)\s+4-way exchanges/second", text)
    out["exchanges_per_s"] = float(rate.group(1)) if rate else 0.0
    for section in ("DISCOVER-OFFER", "REQUEST-ACK"):
        part = text.split(f"Statistics for: {section}", 1)
        if len(part) < 2:
            continue
        body = part[1].lstrip("*").split("***", 1)[0]
        key = section.lower().replace("-", "_")
        for name, pattern in (("sent", r"sent packets:\s+(\d+)"), ("received", r"received packets:\s+(\d+)"),
                              ("drops", r"drops:\s+(\d+)"), ("avg_ms", r"avg delay:\s+([\d.]+) ms"),
                              ("max_ms", r"max delay:\s+([\d.]+) ms")):
            found = re.search(pattern, body)
            out[f"{key}_{name}"] = float(found.group(1)) if found else None
    return out


def wait_answering(lab: NetLab, client) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if perfdhcp(lab, client, 50, 1).get("request_ack_received"):
            return
    raise RuntimeError("server never answered perfdhcp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=float, default=10.0)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/kea"))
    args = parser.parse_args(argv)
    rounds, secs = (1, 2.0) if args.smoke else (args.rounds, args.secs)
    workloads = WORKLOADS[:1] if args.smoke else WORKLOADS
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KEA_LOCKFILE_DIR": str(work), "KEA_PIDFILE_DIR": str(work)}
    samples: dict[str, dict[str, list[dict]]] = {}
    busy: list[float] = []
    with NetLab(f"bk{os.getpid() % 100000}", server_address=f"{SERVER_IP}/16") as lab:
        client = lab.add_client(CLIENT_ADDRESS)
        server_if = f"{lab.name[:8]}s0"
        names = ["kea", "dnsmasq", "bootd"]
        for r in range(rounds):
            for name in names if r % 2 == 0 else list(reversed(names)):
                for label, rate in workloads:  # each workload on a fresh server: no leases yet
                    argv = {"kea": lambda: kea_argv(work, server_if), "dnsmasq": lambda: dnsmasq_argv(server_if),
                            "bootd": lambda: bootd_argv(work)}[name]()
                    busy.append(0.0 if args.smoke else wait_quiet())
                    with open(work / f"{name}.log", "wb") as log:
                        proc = lab.start(lab.server_ns, ["taskset", "-c", SERVER_CPU, *argv], stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
                    try:
                        wait_answering(lab, client)
                        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                        result = perfdhcp(lab, client, rate, secs)
                        result["server_cpu_pct"] = round(100 * (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0))
                        if not result.get("request_ack_received"):
                            raise RuntimeError(f"{name}: {label}: no ACK received: {result}")
                        samples.setdefault(label, {}).setdefault(name, []).append(result)
                    finally:
                        _end_group(proc)
    table: dict[str, dict] = {}
    print(f"{'workload':12s} {'kea':>16s} {'dnsmasq':>16s} {'bootd':>16s}   bootd/kea  (DORA/s, REQUEST->ACK max ms)")
    for label, by_server in samples.items():
        row: dict = {}
        for name, runs in by_server.items():
            row[name] = {key: median([r[key] for r in runs if r.get(key) is not None])
                         for key in ("exchanges_per_s", "request_ack_avg_ms", "request_ack_max_ms",
                                     "discover_offer_drops", "request_ack_drops", "server_cpu_pct")}
        row["ratio_vs_kea"] = row["bootd"]["exchanges_per_s"] / max(row["kea"]["exchanges_per_s"], 1e-9)
        table[label] = row
        cells = [f"{row[n]['exchanges_per_s']:8.1f} {row[n]['request_ack_max_ms']:6.1f}ms" for n in names]
        print(f"{label:12s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>16s}   {row['ratio_vs_kea']:.2f}x")
    print("answers checked: yes (every server completed DORA exchanges)")
    if not args.smoke:
        version = subprocess.run(["kea-dhcp4", "-V"], capture_output=True, text=True).stdout.split("\n")[0]
        path = write_results("kea", {"rounds": rounds, "secs": secs, "peers": {"kea": version},
                                     "busy_before_each_server": busy, "results": table, "samples": samples})
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
