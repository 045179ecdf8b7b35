"""DNS side by side: bootd and dnsmasq answer the same zone; dnsperf queries per second, ratio bootd/dnsmasq.

The zone (research/bench.md §3): matchbox, k8s, tectonic and node1..6 under example.com, with PTRs. dnsmasq
gets the same records as --host-record (A + PTR) with --local for the zones, so unknown names are NXDOMAIN
and a name without AAAA is NODATA, as in bootd. The query file mixes, per 20 queries, 10 A hits, 3 PTR,
4 NXDOMAIN and 3 AAAA NODATA. Before measuring, every distinct query is asked of both servers with dig and
the rcode and answer data must agree. Then dnsperf (CPU 0) loads each server (CPU 1), alternating, once
unconstrained and once with the server capped at 40% of a core (cgroup v1 CFS quota) so that the server,
not dnsperf, is the bottleneck; the rcode mix of every run is checked too.

Usage (root): python -m bench.dns [--rounds 3] [--secs 5] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from bench.common import LoopbackNamespace, cpu_seconds, median, stop, wait_quiet, write_results

PORT = 5353
NODES = {f"node{i}": f"10.77.0.{20 + i}" for i in range(1, 7)}
ROLES = {"node1": "controller", "node2": "controller", "node3": "controller"}
SERVER_IP = "10.77.0.1"


def bootd_config(work: Path) -> Path:
    machines = "".join(f'  - {{name: {name}, mac: "52:54:00:00:00:{i:02x}", ip: {ip}, role: '
                       f'{ROLES.get(name, "worker")}}}\n' for i, (name, ip) in enumerate(NODES.items(), 1))
    (work / "data").mkdir(parents=True, exist_ok=True)
    path = work / "bootd.yaml"
    path.write_text(f"domain: example.com\nlisten: {{address: {SERVER_IP}}}\n"
                    f"names: {{provisioner: matchbox, controllers: k8s, workers: tectonic}}\n"
                    f"http: {{enabled: false, data_dir: {work / 'data'}}}\n"
                    f"dns: {{address: 127.0.0.1, port: {PORT}}}\nmachines:\n{machines}")
    return path


def dnsmasq_argv() -> list[str]:
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", f"--port={PORT}", "--listen-address=127.0.0.1",
            "--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/example.com/", "--local=/77.10.in-addr.arpa/",
            "--local-ttl=60", "--no-negcache", "--log-facility=-", f"--host-record=matchbox.example.com,{SERVER_IP}"]
    # The role names (k8s, tectonic) are not queried: dnsmasq's host-record would give their addresses a
    # second PTR, which bootd (rightly) does not.
    return argv + [f"--host-record={name}.example.com,{ip}" for name, ip in NODES.items()]


def queries() -> list[tuple[str, str]]:
    names = list(NODES) + ["matchbox"]
    cycle = []
    for i in range(10):
        cycle.append((f"{names[i % len(names)]}.example.com", "A"))
    for i in range(3):
        cycle.append((f"{20 + i + 1}.0.77.10.in-addr.arpa", "PTR"))
    for i in range(4):
        cycle.append((f"missing{i}.example.com", "A"))
    for i in range(3):
        cycle.append((f"node{i + 1}.example.com", "AAAA"))
    order = [0, 10, 1, 13, 2, 17, 3, 11, 4, 14, 5, 18, 6, 12, 7, 15, 8, 19, 9, 16]  # interleaved
    return [cycle[i] for i in order]


def dig(ns: LoopbackNamespace, name: str, qtype: str) -> tuple[str, list[str]]:
    out = ns.run(["dig", "@127.0.0.1", "-p", str(PORT), "+time=2", "+tries=2", "+norecurse", name, qtype], timeout=30,
                 cpu=None)
    status = re.search(r"status: (\w+)", out).group(1)
    answers = sorted(" ".join(line.split()[3:]) for line in out.split("ANSWER SECTION:\n", 1)[1].split("\n\n")[0]
                     .splitlines()) if "ANSWER SECTION" in out else []
    return status, answers


def dnsperf(ns: LoopbackNamespace, qfile: Path, secs: int) -> dict:
    out = ns.run(["dnsperf", "-s", "127.0.0.1", "-p", str(PORT), "-d", str(qfile), "-l", str(secs), "-c", "4",
                  "-T", "1", "-q", "200", "-t", "2"], timeout=secs + 60)
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    codes = re.findall(r"(NOERROR|NXDOMAIN|REFUSED|SERVFAIL|FORMERR) (\d+) \(([\d.]+)%\)", out)
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))
    lost = re.search(r"Queries lost:\s+(\d+) \(([\d.]+)%\)", out)
    return {"qps": qps, "sent": sent, "lost": int(lost.group(1)), "lost_pct": float(lost.group(2)),
            "rcodes": {k: int(n) for k, n, _pct in codes}, "rcodes_pct": {k: float(pct) for k, _n, pct in codes}}


def rcode_mix_problem(run: dict, expected: list[str]) -> str | None:
    """Why a dnsperf run's rcodes do not fit the query file's, or None.

    dnsperf cycles through the file for a fixed time, so a run ends inside a cycle and may lose queries:
    each rcode's count may differ from (queries sent x its share of the file) by at most one cycle plus the
    queries lost. Percentages compared to two decimals (80.01 against 80.0) depend on where the run stopped.
    """
    if unexpected := sorted(set(run["rcodes"]) - set(expected)):
        return f"{', '.join(unexpected)}: an rcode no query of the file gets"
    slack = len(expected) + run["lost"]
    for rcode in sorted(set(expected)):
        ideal = run["sent"] * expected.count(rcode) / len(expected)
        if abs(run["rcodes"].get(rcode, 0) - ideal) > slack:
            return f"{rcode}: {run['rcodes'].get(rcode, 0)} answers, {ideal:.0f} +- {slack} expected"
    return None


@contextmanager
def cpu_cap(pid: int, percent: int | None):
    """Hold `pid` to `percent` of one core with a cgroup v1 CFS quota (None: no cap)."""
    if percent is None:
        yield
        return
    group = Path(f"/sys/fs/cgroup/cpu/bootd-bench-{os.getpid()}")
    group.mkdir(exist_ok=True)
    (group / "cpu.cfs_period_us").write_text("10000")
    (group / "cpu.cfs_quota_us").write_text(str(100 * percent))
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            (group / "tasks").write_text(task.name)
        yield
    finally:
        root = Path("/sys/fs/cgroup/cpu/tasks")
        for task in (group / "tasks").read_text().split():
            try:
                root.write_text(task)
            except OSError:
                pass
        group.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=5)
    parser.add_argument("--cap", type=int, default=40)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/dns"))
    args = parser.parse_args(argv)
    rounds, secs = (1, 1) if args.smoke else (args.rounds, args.secs)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    qfile = work / "queries.txt"
    qfile.write_text("".join(f"{name} {qtype}\n" for name, qtype in queries()))
    servers = {"dnsmasq": dnsmasq_argv(),
               "bootd": [sys.executable, "-m", "appliance", "run", "-c", str(bootd_config(work)), "--log-level", "warning"]}
    caps = [None, args.cap]
    samples: dict[str, dict[str, list[dict]]] = {f"cap {c}%" if c else "unconstrained": {s: [] for s in servers} for c in caps}
    answers: dict[str, dict[tuple[str, str], tuple[str, list[str]]]] = {}
    busy = []
    with LoopbackNamespace(f"bootd-bench-dns-{os.getpid()}") as ns:
        for r in range(rounds):
            for name in (list(servers) if r % 2 == 0 else list(reversed(servers))):
                busy.append(0.0 if args.smoke else wait_quiet())
                proc = ns.start(servers[name], work / f"{name}.log")
                try:
                    deadline = time.monotonic() + 15
                    while True:
                        try:
                            answers[name] = {q: dig(ns, *q) for q in sorted(set(queries()))}
                            break
                        except (subprocess.CalledProcessError, AttributeError):
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.2)
                    for cap in caps:
                        with cpu_cap(proc.pid, cap):
                            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                            result = dnsperf(ns, qfile, secs)
                            result["server_cpu_pct"] = 100 * (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
                        samples[f"cap {cap}%" if cap else "unconstrained"][name].append(result)
                finally:
                    stop(proc)
    if answers["bootd"] != answers["dnsmasq"]:
        differ = {q: (answers["dnsmasq"][q], answers["bootd"][q]) for q in answers["bootd"]
                  if answers["bootd"][q] != answers["dnsmasq"][q]}
        print(f"answers differ (dnsmasq, bootd): {differ}", file=sys.stderr)
        return 1
    table = {}
    print(f"{'workload':14s} {'dnsmasq':>10s} {'bootd':>10s} {'ratio':>7s}   cpu% dnsmasq/bootd   rcodes dnsmasq | bootd")
    for label, by_server in samples.items():
        dm, bd = (median([s["qps"] for s in by_server[n]]) for n in ("dnsmasq", "bootd"))
        cpu = [median([s["server_cpu_pct"] for s in by_server[n]]) for n in ("dnsmasq", "bootd")]
        mixes = [by_server[n][-1]["rcodes_pct"] for n in ("dnsmasq", "bootd")]
        expected = [answers["bootd"][q][0] for q in queries()]  # each query's rcode, as dig saw it from both
        for name in ("dnsmasq", "bootd"):
            for run in by_server[name]:
                if problem := rcode_mix_problem(run, expected):
                    print(f"{label}: {name}'s rcode mix does not fit the query file: {problem}", file=sys.stderr)
                    return 1
        table[label] = {"dnsmasq_qps": dm, "bootd_qps": bd, "ratio": bd / dm, "server_cpu_pct": cpu, "rcodes": mixes[1]}
        print(f"{label:14s} {dm:10.0f} {bd:10.0f} {bd / dm:6.2f}x   {cpu[0]:.0f}/{cpu[1]:.0f}   {mixes[0]} | {mixes[1]}")
    print("answers identical: yes (every distinct query, rcode and data)")
    if not args.smoke:
        version = subprocess.run(["dnsmasq", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        path = write_results("dns", {"rounds": rounds, "secs": secs, "peer": version, "busy_before_each_server": busy,
                                     "results": table, "samples": samples})
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
