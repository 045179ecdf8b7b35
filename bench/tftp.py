"""TFTP side by side: bootd and dnsmasq serve the same 1 MB file; wall-time ratios.

Workloads (research/bench.md §4), in a loopback-only namespace, server on CPU 1, client and relay on CPU 0,
servers alternating each round. The client is bench/tftp_load.c, compiled with the system's cc into the work dir
(bench/tftp_client.py, the Python client, when there is no compiler or with --python-client: it can cost more
CPU than the server it measures, so its windowed times measure the client):
- one transfer through a relay that adds 0.25 ms each way (no netem here), blksize 1468 + windowsize 8
  (dnsmasq 2.90 does not do windowsize, so its transfer stays lock-step);
- 64 concurrent transfers, lock-step (blksize 1468);
- 64 concurrent transfers, blksize 1468 + windowsize 8.
Every transfer is checked against the file before a time counts (the C client compares each block with the
file at its offset and the length with the file's; the Python client's sha256 is compared with the file's).
Beside the times: each server's CPU seconds (and per MB served) and the client's own CPU seconds, so a client
that saturates its core shows.

Usage (root): python -m bench.tftp [--rounds 3] [--smoke] [--python-client]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import LOAD_CPU, LoopbackNamespace, cpu_seconds, median, stop, wait_quiet, write_results

ROOT = Path(__file__).parents[1]
RELAY_PORT = 6969
WORKLOADS = (  # label, relay delay ms, count, client options
    ("1x1MB +0.5ms RTT ws8", 0.25, 1, ["--blksize", "1468", "--windowsize", "8"]),
    ("64x1MB lockstep", 0.0, 64, ["--blksize", "1468"]),
    ("64x1MB ws8", 0.0, 64, ["--blksize", "1468", "--windowsize", "8"]),
)


def servers(work: Path) -> dict[str, list[str]]:
    (work / "data").mkdir(exist_ok=True)
    (work / "bootd.yaml").write_text(
        f"state_dir: {work / 'state'}\nhttp:\n  enabled: false\n  data_dir: {work / 'data'}\n"
        f"dhcp:\n  firmware_dir: {work / 'files'}\ntftp:\n  address: 127.0.0.1\n  port: 69\n  max_transfers: 200\n"
        f"  max_per_client: 200\n")
    return {
        "dnsmasq": ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--enable-tftp",
                    "--user=root",  # the work dir may be private to root (pytest tmp dirs are 0700)
                    f"--tftp-root={work / 'files'}", "--tftp-max=200", "--listen-address=127.0.0.1",
                    "--bind-interfaces", "--log-facility=-", "--quiet-tftp"],
        "bootd": [sys.executable, "-m", "appliance", "run", "-c", str(work / "bootd.yaml"), "--log-level", "warning"],
    }


def build_c_client(work: Path) -> Path | None:
    """bench/tftp_load.c compiled into the work dir; None (the Python client) when there is no compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    binary = work / "tftp_load"
    result = subprocess.run([cc, "-O2", "-Wall", "-o", str(binary), str(ROOT / "bench/tftp_load.c")],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"bench/tftp_load.c did not compile, using the Python client:\n{result.stderr}", file=sys.stderr)
        return None
    return binary


def client(ns: LoopbackNamespace, port: int, count: int, options: list[str], binary: Path | None,
           expect: Path) -> dict:
    """One run of the client on the load CPU; its CPU seconds are its rusage (a waited-for child's)."""
    common = ["--server", f"127.0.0.1:{port}", "--file", expect.name, "--count", str(count), "--timeout", "1",
              "--deadline", "120", *options]
    argv = [str(binary), *common, "--expect", str(expect)] if binary else [sys.executable, "-m", "bench.tftp_client",
                                                                            *common]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = ns.run(argv, timeout=180)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out)
    result["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.setdefault("client", "python")
    return result


def checked(transfer: dict, digest: str) -> bool:
    """The C client's transfer matched the file block by block; the Python client's sha256 is the file's."""
    if not transfer["ok"]:
        return False
    return transfer["sha256"] == digest if "sha256" in transfer else transfer.get("verified") is True


def wait_serving(ns: LoopbackNamespace, binary: Path | None, expect: Path) -> None:
    deadline = time.monotonic() + 15
    probe = ["--retries", "1", "--timeout", "0.2"] + (["--dally", "0"] if binary else [])
    while time.monotonic() < deadline:
        if client(ns, 69, 1, probe, binary, expect)["completed"]:
            return
    raise RuntimeError("the server never answered")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/tftp"))
    parser.add_argument("--python-client", action="store_true", help="bench/tftp_client.py, not bench/tftp_load.c")
    args = parser.parse_args(argv)
    rounds = 1 if args.smoke else args.rounds
    work = args.work
    (work / "files").mkdir(parents=True, exist_ok=True)
    content = hashlib.sha256(b"bootd-tftp").digest() * (1024 * 1024 // 32)
    expect = work / "files/f1m.bin"
    expect.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    binary = None if args.python_client else build_c_client(work)
    print(f"client: {binary or 'bench/tftp_client.py (Python)'}")
    argvs = servers(work)
    samples: dict[str, dict[str, list[dict]]] = {w[0]: {s: [] for s in argvs} for w in WORKLOADS}
    busy = []
    with LoopbackNamespace(f"bootd-bench-tftp-{os.getpid()}") as ns:
        for r in range(rounds):
            for name in (list(argvs) if r % 2 == 0 else list(reversed(argvs))):
                busy.append(0.0 if args.smoke else wait_quiet())
                proc = ns.start(argvs[name], work / f"{name}.log")
                try:
                    wait_serving(ns, binary, expect)
                    for label, delay, count, options in WORKLOADS:
                        if args.smoke and count > 1:
                            count = 4
                        relay = None
                        port = 69
                        if delay:
                            relay = subprocess.Popen(ns.argv([sys.executable, "-m", "bench.udp_relay", "--listen",
                                                              f"127.0.0.1:{RELAY_PORT}", "--server", "127.0.0.1:69",
                                                              "--delay-ms", str(delay)], cpu=LOAD_CPU),
                                                     cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
                            assert relay.stdout is not None and relay.stdout.readline().strip() == b"ready"
                            port = RELAY_PORT
                        try:
                            c0 = cpu_seconds(proc.pid)
                            result = client(ns, port, count, options, binary, expect)
                            result["server_cpu_s"] = cpu_seconds(proc.pid) - c0
                        finally:
                            if relay is not None:
                                stop(relay)
                        bad = [t for t in result["transfers"] if not checked(t, digest)]
                        if bad:
                            print(f"{name} {label}: {len(bad)} transfers failed or differ: {bad[:2]}", file=sys.stderr)
                            return 1
                        result.pop("transfers")
                        samples[label][name].append(result)
                finally:
                    stop(proc)
    table = {}
    megabytes = {label: (4 if args.smoke and count > 1 else count) * len(content) / 2**20
                 for label, _, count, _ in WORKLOADS}
    print(f"{'workload':22s} {'dnsmasq':>8s} {'bootd':>8s}  time bootd/dnsmasq   server CPU-s dnsmasq/bootd"
          f" (ratio; ms/MB)   client CPU-s dnsmasq/bootd")
    for label, by_server in samples.items():
        dm = median([s["seconds"] for s in by_server["dnsmasq"]])
        bd = median([s["seconds"] for s in by_server["bootd"]])
        cpu = (median([s["server_cpu_s"] for s in by_server["dnsmasq"]]),
               median([s["server_cpu_s"] for s in by_server["bootd"]]))
        client_cpu = (median([s["client_cpu_s"] for s in by_server["dnsmasq"]]),
                      median([s["client_cpu_s"] for s in by_server["bootd"]]))
        per_mb = (1000 * cpu[0] / megabytes[label], 1000 * cpu[1] / megabytes[label])
        table[label] = {"dnsmasq_s": dm, "bootd_s": bd, "time_ratio": bd / dm, "speedup": dm / bd,
                        "server_cpu_s": {"dnsmasq": cpu[0], "bootd": cpu[1]},
                        "cpu_ratio": cpu[1] / cpu[0] if cpu[0] else float("nan"),
                        "server_cpu_ms_per_mb": {"dnsmasq": per_mb[0], "bootd": per_mb[1]},
                        "client_cpu_s": {"dnsmasq": client_cpu[0], "bootd": client_cpu[1]}}
        print(f"{label:22s} {dm * 1000:6.0f}ms {bd * 1000:6.0f}ms  {bd / dm:6.2f}x ({dm / bd:.1f}x faster)"
              f"   {cpu[0]:.2f}/{cpu[1]:.2f} ({table[label]['cpu_ratio']:.2f}x; {per_mb[0]:.1f}/{per_mb[1]:.1f})"
              f"   {client_cpu[0]:.2f}/{client_cpu[1]:.2f}")
    print("answers identical: yes (every transfer checked against the file: "
          f"{'block by block' if binary else 'sha256'})")
    if not args.smoke:
        version = subprocess.run(["dnsmasq", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        path = write_results("tftp", {"rounds": rounds, "peer": version, "busy_before_each_server": busy,
                                      "client": "bench/tftp_load.c" if binary else "bench/tftp_client.py",
                                      "results": table, "samples": samples})
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
