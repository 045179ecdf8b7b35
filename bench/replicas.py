"""bootd replicas sharing one etcd: how fast addresses are allocated with etcd against the file store, how
the rate grows with 1, 2 and 3 replicas, and what etcd adds to one machine's boot.

Topology (tests/replica_lab.py): a 3-member etcd cluster (Debian's etcd 3.4, data on tmpfs) behind a router,
one bootd replica per L2 segment (each segment its own /20, each replica authoritative for it), and on each
segment a namespace of simulated clients (bench/fleet.py --storm: DORA only, a new MAC each, a closed loop
of --concurrency clients in flight per segment, every ACK checked: the address is in the range and no
address goes to two MACs).

Workloads, each round alternating the order (medians over rounds):
- "file x1": one replica with the file store (its journal, fsync'd before each ACK);
- "etcd x1", "etcd x2", "etcd x3": 1, 2, 3 replicas, each on its own segment, all allocating at once in the
  same etcd (leases by transaction); the rate is every segment's ACKs over the storm's wall time;
- "boot file", "boot etcd": bench/fleet.py's whole simulated boot (PXE DHCP, TFTP, iPXE DHCP, script, config,
  kernel, initrd, Ignition, report; pauses left out) of --boots machines arriving 10 a second (no queueing:
  what one boot costs, not a storm's backlog) through one replica: the p50 of a boot's own time with each
  store; the difference is what etcd adds per boot.
CPU seconds per allocation are kept for the replicas, the etcd members and the clients: on this 2-core box
everything shares the same two cores, so the rate cannot grow much with replicas here; the per-allocation
costs say how it would on machines of their own.

Usage (root): python -m bench.replicas [--rounds 3] [--clients 3000] [--smoke]
(--smoke: one round, 200 clients per segment, x1 and x2 only, 20 boots; every client must get an address
and none twice; no performance asserted)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.common import cpu_seconds, median, wait_quiet, write_results
from tests.netns import _end_group
from tests.replica_lab import Replica, ReplicaLab, Segment

ROOT = Path(__file__).parents[1]
PORT = 8080
FIRMWARE_BYTES = 70_000
ASSET_BYTES = 256 * 1024
PREFIX = "/bootd"


# --- what every replica serves (shared with tests/e2e/test_replicas.py) -----------------------------------

def prepare_data(work: Path) -> tuple[Path, Path]:
    """A firmware directory (undionly.kpxe: PXE clients are offered only files that exist) and a matchbox
    data dir whose default group boots every machine with assets named through ${bootd}, so any replica's
    answer works."""
    rng = random.Random(7)
    firmware = work / "firmware"
    firmware.mkdir(parents=True, exist_ok=True)
    (firmware / "undionly.kpxe").write_bytes(rng.randbytes(FIRMWARE_BYTES))
    (firmware / "ipxe.efi").write_bytes(rng.randbytes(FIRMWARE_BYTES))
    data = work / "data"
    for sub in ("profiles", "groups", "ignition", "assets"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    (data / "assets/vmlinuz").write_bytes(rng.randbytes(ASSET_BYTES))
    (data / "assets/initrd.img").write_bytes(rng.randbytes(ASSET_BYTES))
    (data / "profiles/fleet.json").write_text(json.dumps({"id": "fleet", "ignition_id": "fleet.ign", "boot": {
        "kernel": "${bootd}/assets/vmlinuz", "initrd": ["${bootd}/assets/initrd.img"],
        "args": ["console=ttyS0", "ignition.config.url=${bootd}/ignition?mac=${mac:hexhyp}"]}}))
    (data / "groups/default.json").write_text(json.dumps({"id": "default", "profile": "fleet"}))
    (data / "ignition/fleet.ign").write_text('{"ignition":{"version":"3.4.0"}}')
    return firmware, data


def replica_config(work: Path, lab: ReplicaLab, replica: Replica, *, store: str, firmware: Path, data: Path,
                   extra: str = "", machines: str = "") -> Path:
    """bootd.yaml for `replica`: authoritative DHCP for its segment's /20, TFTP and HTTP on its address;
    `store`: "file" (the data dir and leases.json on its own disk) or "etcd" (the lab's cluster)."""
    segment = replica.segment
    home = work / replica.name
    (home / "state").mkdir(parents=True, exist_ok=True)
    first, last = segment.range
    store_section = ""
    if store == "etcd":
        endpoints = ", ".join(lab.endpoints)
        store_section = f"store: {{backend: etcd, endpoints: [{endpoints}], prefix: {PREFIX}, replica: {replica.name}}}\n"
    config = home / "bootd.yaml"
    config.write_text(
        f"state_dir: {home / 'state'}\nlisten: {{address: {replica.address}}}\n"
        f"http: {{address: {replica.address}, port: {PORT}, data_dir: {data}, assets_dir: {data / 'assets'}}}\n"
        f"dhcp:\n  mode: authoritative\n  firmware_dir: {firmware}\n  subnet: {segment.subnet}\n"
        f"  range: [{first}, {last}]\n  router: {segment.router}\n  lease: 1h\n{extra}"
        # every simulated machine of a segment reaches TFTP from its one address
        f"tftp: {{address: {replica.address}, max_per_client: 1000, max_transfers: 1000}}\n"
        f"{store_section}{machines}")
    return config


def import_data(lab: ReplicaLab, config: Path, data: Path) -> None:
    """The data dir into etcd, as an operator does once: `bootd store import` (run where etcd is reachable)."""
    replica_ns = lab.replicas[0].ns
    result = lab.run(replica_ns, [sys.executable, "-m", "appliance", "store", "import", str(data), "-c", str(config)],
                     cwd=ROOT, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"bootd store import: {result.stdout}{result.stderr}")


def storm(lab: ReplicaLab, segment: Segment, *, count: int, first: int, window: float = 0.0,
          concurrency: int = 0, tries: int = 4, work: Path, progress=None) -> subprocess.Popen:
    """bench/fleet.py --storm in the segment's clients namespace (started; `storm_result` reads it)."""
    out = work / f"storm-{segment.name}-{first}.json"
    argv = [sys.executable, "-m", "bench.fleet", "--storm", "--count", str(count), "--first", str(first),
            "--window", str(window), "--iface", segment.clients_if, "--tries", str(tries),
            "--concurrency", str(concurrency), "--work", str(work)]
    with open(out, "wb") as stdout, open(out.with_suffix(".log"), "wb") as log:
        proc = lab.start(segment.clients_ns, argv, cwd=ROOT, stdout=stdout,
                         stderr=progress if progress is not None else log)
    proc.result_path = out  # type: ignore[attr-defined]
    return proc


def storm_result(proc: subprocess.Popen, timeout: float) -> dict:
    code = proc.wait(timeout)
    text = proc.result_path.read_text()  # type: ignore[attr-defined]
    if code != 0:
        raise RuntimeError(f"the storm's simulator exited {code}: {text[-2000:]}")
    return json.loads(text)


def start_replica(lab: ReplicaLab, replica: Replica, config: Path, work: Path) -> subprocess.Popen:
    with open(work / f"{replica.name}.log", "ab") as log:
        proc = lab.start(replica.ns, [sys.executable, "-m", "appliance", "run", "-c", str(config)], cwd=ROOT,
                         stdout=log, stderr=subprocess.STDOUT)
    wait_http(lab, replica)
    return proc


def wait_http(lab: ReplicaLab, replica: Replica, timeout: float = 60) -> None:
    result = lab.run(replica.ns, ["curl", "-sf", "-o", "/dev/null", "--retry", str(int(timeout * 5)),
                                  "--retry-connrefused", "--retry-delay", "0", "--retry-max-time", str(timeout),
                                  f"http://{replica.address}:{PORT}/bootd.ipxe"], timeout=timeout + 10)
    if result.returncode != 0:
        raise RuntimeError(f"replica {replica.name} not answering HTTP: {result.stderr}")


def wipe_etcd(lab: ReplicaLab) -> None:
    """Every lease (and machine) key, so each workload starts from an empty pool; the data stays."""
    for sub in ("leases", "machines"):
        result = lab.cluster.etcdctl(0, "del", "--prefix", f"{PREFIX}/{sub}/")
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl del: {result.stderr}")


def reset_file_state(work: Path, replica: Replica) -> None:
    for name in ("leases.json", "leases.journal"):
        (work / replica.name / "state" / name).unlink(missing_ok=True)


# --- one workload ------------------------------------------------------------------------------------------

def allocate(lab: ReplicaLab, work: Path, replicas: list[Replica], store: str, clients: int, concurrency: int,
             firmware: Path, data: Path, round_index: int) -> dict:
    procs = []
    for replica in replicas:
        reset_file_state(work, replica)
        config = replica_config(work, lab, replica, store=store, firmware=firmware, data=data)
        procs.append(start_replica(lab, replica, config, work))
    try:
        etcd_pids = [m.pid for m in lab.cluster.members if m.pid]
        c_replicas = sum(cpu_seconds(p.pid) for p in procs)
        c_etcd = sum(cpu_seconds(pid) for pid in etcd_pids)
        started = time.monotonic()
        sims = [storm(lab, r.segment, count=clients, first=(round_index * 10 + i) * 100_000, concurrency=concurrency,
                      work=work) for i, r in enumerate(replicas)]
        results = [storm_result(s, timeout=600) for s in sims]
        seconds = time.monotonic() - started
        cpu = {"replicas_s": sum(cpu_seconds(p.pid) for p in procs) - c_replicas,
               "etcd_s": sum(cpu_seconds(pid) for pid in etcd_pids) - c_etcd}
    finally:
        for proc in procs:
            _end_group(proc)
    acked = sum(r["acked"] for r in results)
    dups = {a: m for r in results for a, m in r["duplicates"].items()}
    return {"replicas": len(replicas), "store": store, "clients": clients * len(replicas), "acked": acked,
            "no_offer": sum(r["no_offer"] for r in results), "failed": sum(r["failed"] for r in results),
            "duplicates": len(dups), "seconds": round(seconds, 2),
            "per_segment_seconds": [r["seconds"] for r in results],
            "allocations_per_s": round(acked / max(max(r["seconds"] for r in results), 1e-9), 1),
            "replica_cpu_ms_per_allocation": round(1000 * cpu["replicas_s"] / max(acked, 1), 3),
            "etcd_cpu_ms_per_allocation": round(1000 * cpu["etcd_s"] / max(acked, 1), 3)}


def boots(lab: ReplicaLab, work: Path, replica: Replica, store: str, count: int, firmware: Path, data: Path,
          first: int) -> dict:
    reset_file_state(work, replica)
    config = replica_config(work, lab, replica, store=store, firmware=firmware, data=data)
    proc = start_replica(lab, replica, config, work)
    try:
        expected = work / "expected"
        expected.mkdir(exist_ok=True)
        segment = replica.segment
        for name, path in (("expected-script", "/bootd.ipxe"), ("expected-config", "/ipxe?mac=MACHINE")):
            body = lab.run(segment.clients_ns, ["curl", "-sf", f"http://{replica.address}:{PORT}{path}"]).stdout
            (work / name).write_text(body)
        result = lab.run(segment.clients_ns, [sys.executable, "-m", "bench.fleet", "--client", "--count", str(count),
                                              "--first", str(first), "--window", str(max(0.5, count / 10)),
                                              "--iface", segment.clients_if, "--peer", "bootd", "--work", str(work),
                                              "--source", segment.clients_ip], cwd=ROOT, timeout=count + 300)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        return json.loads(result.stdout)
    finally:
        _end_group(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3000, help="new clients per segment per workload")
    parser.add_argument("--concurrency", type=int, default=64, help="clients in flight per segment")
    parser.add_argument("--boots", type=int, default=100)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/replicas"))
    args = parser.parse_args(argv)
    rounds, clients, n_boots = (1, 200, 20) if args.smoke else (args.rounds, args.clients, args.boots)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    firmware, data = prepare_data(work)
    workloads = [("file", 1), ("etcd", 1), ("etcd", 2)] + ([] if args.smoke else [("etcd", 3)])
    samples: dict[str, list[dict]] = {}
    boot_samples: dict[str, list[dict]] = {}
    ok = True
    with ReplicaLab(f"rb{os.getpid() % 10000}", layout=(1, 1, 1), work=work) as lab:
        lab.start_etcd()
        import_data(lab, replica_config(work, lab, lab.replicas[0], store="etcd", firmware=firmware, data=data), data)
        for r in range(rounds):
            order = workloads if r % 2 == 0 else list(reversed(workloads))
            for store, count in order:
                label = f"{store} x{count}"
                busy = 0.0 if args.smoke else wait_quiet()
                wipe_etcd(lab)
                out = allocate(lab, work, lab.replicas[:count], store, clients, args.concurrency, firmware, data, r)
                out["busy_before"] = round(busy, 2)
                samples.setdefault(label, []).append(out)
                print(f"round {r + 1} {label}: {out['acked']}/{out['clients']} addresses in {out['seconds']} s, "
                      f"{out['allocations_per_s']}/s, duplicates {out['duplicates']}, CPU per allocation: replicas "
                      f"{out['replica_cpu_ms_per_allocation']} ms, etcd {out['etcd_cpu_ms_per_allocation']} ms",
                      flush=True)
                ok = ok and out["acked"] == out["clients"] and out["duplicates"] == 0
            for store in ("file", "etcd") if r % 2 == 0 else ("etcd", "file"):
                wipe_etcd(lab)
                out = boots(lab, work, lab.replicas[0], store, n_boots, firmware, data, first=5_000_000 + r * 10_000)
                boot_samples.setdefault(f"boot {store}", []).append(out)
                print(f"round {r + 1} boot {store}: {out['completed']}/{n_boots} booted, a boot's own time p50 "
                      f"{out['boot_ms_p50']} ms; " + ", ".join(f"{k} {v['p50_ms']:.1f}" for k, v in out["stages"].items())
                      + " (p50 ms)", flush=True)
                ok = ok and out["completed"] == n_boots
    rates = {label: median([s["allocations_per_s"] for s in runs]) for label, runs in samples.items()}
    summary = {"allocations_per_s": rates,
               "etcd_over_file": round(rates["etcd x1"] / rates["file x1"], 3),
               "growth": {label: round(rates[label] / rates["etcd x1"], 3) for label in rates if label.startswith("etcd")},
               "boot_ms_p50": {k: median([s["boot_ms_p50"] for s in v]) for k, v in boot_samples.items()}}
    summary["added_ms_per_boot"] = round(summary["boot_ms_p50"]["boot etcd"] - summary["boot_ms_p50"]["boot file"], 2)
    print(f"allocation rate etcd/file (1 replica): {summary['etcd_over_file']:.2f}x")
    print("rate with replicas (etcd, against 1): " + ", ".join(f"{k} {v:.2f}x" for k, v in summary["growth"].items()))
    print(f"added per boot with etcd: {summary['added_ms_per_boot']} ms (p50 of a boot's own time)")
    print(f"every client got an address, none twice: {'yes' if ok else 'no'}")
    if not args.smoke:
        path = write_results("replicas", {"rounds": rounds, "clients_per_segment": clients,
                                          "concurrency": args.concurrency, "boots": n_boots, "summary": summary,
                                          "allocation": samples, "boot": boot_samples})
        print(f"results: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
