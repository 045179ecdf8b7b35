"""The fuzz campaign (issue 13): mutated and random packets at every port bootd listens on, with a good
client interleaved that must be answered exactly right every time.

Topology (as bench/dhcp.py): a server namespace holding bootd and a client namespace joined by a veth pair
(192.0.2.0/24 exists only inside them), so DHCP broadcasts work. The client end has two addresses: the
fuzzer sends from 192.0.2.2, the good client from 192.0.2.3 (per-client limits the fuzzer fills are not
the good client's). bootd runs proxy-DHCP (67 + 4011), TFTP (69), DNS (UDP + TCP 53, zone example.com),
HTTP (8080, a small matchbox data dir) and the read-write gRPC API (8081, certificates from `bootd certs
init`), at log level WARNING.

Targets, one after the other, each driven by bench/fuzz_load.py in the client namespace: dhcp67,
dhcp4011, tftp69, tftp-transfer, dns-udp, dns-tcp (`--packets` each), http (`--http-packets`, with
`--idle` idle connections held throughout and slow senders) and grpc (`--grpc-packets`). Good requests,
every `--every` packets: a PXE DISCOVER (OFFER, its xid, undionly.kpxe), a REQUEST on 4011 (ACK,
ipxe.efi), a whole TFTP file checked by sha256, node1's A record over UDP and over TCP, /boot.ipxe's exact
bytes, a gRPC ProfileList with a client certificate.

What is checked (exit 1 otherwise): every good request answered right, no unhandled exception in bootd's
log ('Traceback', 'internal error', aiohttp's 'Error handling request', asyncio's 'Exception in
callback' / 'exception was never retrieved'), every internal_errors counter of /api/v1/stats at 0, bootd
still running, and its peak RSS (VmHWM) under `--rss-bound-mib`. Results: bench/results/fuzz-*.json
(not written with --smoke).

`--sighup`: instead of the campaign, SIGHUP bootd every `--sighup-interval` seconds, `--sighups` times,
each time with a changed bootd.yaml (a machine and a DNS record come and go), while good DHCP (67, 4011),
TFTP, DNS (UDP, TCP) and HTTP clients run in a loop: not one good request may fail, and every SIGHUP must
be a reload done (bootd runs at log level INFO here to say so).

Usage (root): python -m bench.fuzz [--packets 1000000] [--seed 1] [--smoke] [--sighup]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import write_results
from tests.netns import NetLab

ROOT = Path(__file__).parents[1]
SERVER_IP, FUZZ_IP, GOOD_IP = "192.0.2.1", "192.0.2.2", "192.0.2.3"
# The stats counter that counts each target's packets as bootd received them (TFTP transfer ports and HTTP
# have none).
COUNTER = {"dhcp67": "dhcp_received", "dhcp4011": "dhcp_received", "tftp69": "tftp_requests",
           "dns-udp": "dns_queries", "dns-tcp": "dns_queries"}
UDP_TARGETS = ["dhcp67", "dhcp4011", "tftp69", "tftp-transfer", "dns-udp", "dns-tcp"]
# What an unhandled exception leaves in the log, whoever logs it.
# aiohttp logs a request it refuses (400, 413) as WARNING "Error handling request": a logged drop, not an
# exception; a handler that raised is logged at ERROR with a Traceback.
UNHANDLED = re.compile(r"Traceback|internal error|ERROR aiohttp|Exception in callback|"
                       r"exception was never retrieved|Unhandled exception")


def write_setup(work: Path) -> tuple[Path, str]:
    """bootd.yaml, its data dir, firmware, TFTP root and certificates; returns the config and the sha256 of
    the TFTP file the good client fetches."""
    for sub in ("data/groups", "data/profiles", "data/assets", "state/firmware", "tftp"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "data/groups/default.json").write_text('{"id": "default", "profile": "p"}')
    (work / "data/profiles/p.json").write_text('{"id": "p", "boot": {"kernel": "/assets/k"}}')
    (work / "data/assets/k").write_bytes(random.Random(7).randbytes(100_000))
    for name in ("undionly.kpxe", "ipxe.efi"):
        (work / "state/firmware" / name).write_bytes(random.Random(name).randbytes(40_000))
    small = random.Random(8).randbytes(64 * 1024 + 17)
    (work / "tftp/small.bin").write_bytes(small)
    tls = work / "tls"
    if not (tls / "client.crt").exists():
        subprocess.run([sys.executable, "-m", "appliance", "certs", "init", "--san", f"IP:{SERVER_IP}", "--out",
                        str(tls)], check=True, capture_output=True, cwd=ROOT)
    config = work / "bootd.yaml"
    config.write_text(f"""\
state_dir: {work / 'state'}
domain: example.com
listen: {{address: {SERVER_IP}}}
names: {{provisioner: matchbox, controllers: k8s, workers: tectonic}}
http: {{address: {SERVER_IP}, port: 8080, data_dir: {work / 'data'}}}
dhcp: {{mode: proxy}}
tftp: {{root: {work / 'tftp'}}}
dns:
  address: {SERVER_IP}
  port: 53
  records:
    - {{name: etcd, type: CNAME, value: k8s}}
    - {{name: _etcd-server-ssl._tcp, type: SRV, value: "0 0 2380 node1"}}
api:
  address: {SERVER_IP}
  port: 8081
  cert_file: {tls / 'server.crt'}
  key_file: {tls / 'server.key'}
  ca_file: {tls / 'ca.crt'}
machines:
  - {{name: node1, mac: "52:54:00:a1:9c:ae", ip: 192.0.2.21, role: controller, profile: p}}
  - {{name: node2, mac: "52:54:00:b2:2f:86", ip: 192.0.2.22, role: worker, profile: p}}
  - {{name: node3, mac: "52:54:00:c3:3f:97", ip: 192.0.2.23, role: worker, profile: p}}
""")
    return config, hashlib.sha256(small).hexdigest()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB, and open descriptors."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


class Sampler:
    """bootd's descriptors and RSS, every 0.2 s while a target runs: the peaks."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_fds, self.peak_rss_kib = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status = proc_status(self.pid)
            except OSError:
                return
            self.peak_fds = max(self.peak_fds, status["fds"])
            self.peak_rss_kib = max(self.peak_rss_kib, status["VmRSS"])

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def udp_drops(lab: NetLab) -> dict[str, int]:
    """The server namespace's UDP receive-buffer drops (what bootd never saw)."""
    text = lab.run(lab.server_ns, ["cat", "/proc/net/snmp"]).stdout
    header, values = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")][:2]
    fields = dict(zip(header, map(int, values)))
    return {"RcvbufErrors": fields.get("RcvbufErrors", 0), "InErrors": fields.get("InErrors", 0)}


def stats(lab: NetLab, client) -> dict:
    code = f"import urllib.request;print(urllib.request.urlopen('http://{SERVER_IP}:8080/api/v1/stats',timeout=10).read().decode())"
    result = lab.run(client.ns, [sys.executable, "-c", code])
    return json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr[-300:]}


def counted(stats_json: dict) -> dict[str, int]:
    """What bootd says it received: DHCP packets, TFTP requests on 69, DNS messages (UDP and TCP)."""
    return {"dhcp_received": stats_json.get("dhcp", {}).get("received", 0),
            "tftp_requests": stats_json.get("tftp", {}).get("requests", 0),
            "dns_queries": stats_json.get("dns", {}).get("queries", 0)}


def internal_errors(stats_json: dict) -> dict[str, int]:
    return {name: section["internal_errors"] for name, section in stats_json.items()
            if isinstance(section, dict) and "internal_errors" in section}


def unhandled_lines(log: Path) -> list[str]:
    lines = []
    with open(log, errors="replace") as f:
        for line in f:
            if UNHANDLED.search(line):
                lines.append(line.rstrip()[:300])
    return lines


def start_bootd(lab: NetLab, config: Path, log: Path, level: str = "warning"):
    out = open(log, "ab")
    proc = lab.start(lab.server_ns, [sys.executable, "-m", "appliance", "run", "-c", str(config),
                                     "--log-level", level], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out.close()
    return proc


def wait_ready(lab: NetLab, client, proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bootd exited ({proc.returncode})")
        if "dns" in stats(lab, client):
            return
        time.sleep(0.3)
    raise RuntimeError("bootd never answered /api/v1/stats")


def run_target(lab: NetLab, client, args, target: str, packets: int, sha: str, extra: list[str]) -> dict:
    argv = [sys.executable, "-m", "bench.fuzz_load", "--target", target, "--packets", str(packets), "--seed",
            str(args.seed), "--every", str(args.every), "--iface", client.ifname, "--server", SERVER_IP,
            "--fuzz-ip", FUZZ_IP, "--good-ip", GOOD_IP, "--work", str(args.work), "--small-sha256", sha, *extra]
    result = lab.run(client.ns, argv, cwd=ROOT, timeout=24 * 3600)
    if result.returncode != 0:
        return {"target": target, "sent": 0, "good": 1, "good_ok": 0, "failures": [result.stderr[-2000:]]}
    return json.loads(result.stdout)


def campaign(lab: NetLab, client, proc, args, sha: str, log: Path) -> tuple[dict, bool]:
    targets = [t for t in UDP_TARGETS + ["http", "grpc"] if not args.only or t in args.only]
    results = {}
    start = time.monotonic()
    for target in targets:
        packets = {"http": args.http_packets, "grpc": args.grpc_packets}.get(target, args.packets)
        extra = ["--idle", str(args.idle), "--slow", str(args.slow)] if target == "http" else []
        drops0, counted0 = udp_drops(lab), counted(stats(lab, client))
        with Sampler(proc.pid) as sampler:
            result = run_target(lab, client, args, target, packets, sha, extra)
        result["bootd_peak_fds"], result["bootd_peak_rss_mib"] = sampler.peak_fds, round(sampler.peak_rss_kib / 1024, 1)
        drops1 = udp_drops(lab)
        result["udp_rcvbuf_drops"] = drops1["RcvbufErrors"] - drops0["RcvbufErrors"]
        counted1 = counted(stats(lab, client))
        result["bootd_counted"] = {k: counted1[k] - counted0[k] for k in counted1}
        result["bootd_after"] = proc_status(proc.pid) if proc.poll() is None else "exited"
        results[target] = result
        print(f"{target:14s} sent {result['sent']:>8d}  good {result['good_ok']}/{result['good']}  "
              f"{result.get('seconds', 0):7.1f}s  kernel drops {result['udp_rcvbuf_drops']}  bootd peak "
              f"{result['bootd_peak_fds']} fds, {result['bootd_peak_rss_mib']} MiB  counted by bootd "
              f"{ {k: v for k, v in result['bootd_counted'].items() if v} }  {result.get('detail', {})}",
              flush=True)
        for failure in result["failures"][:5]:
            print(f"  FAILED: {failure}", flush=True)
    seconds = time.monotonic() - start
    alive = proc.poll() is None
    final_stats = stats(lab, client) if alive else {}
    status = proc_status(proc.pid) if alive else {}
    unhandled = unhandled_lines(log)
    errors = internal_errors(final_stats)
    sent = sum(r["sent"] for r in results.values())
    good = sum(r["good"] for r in results.values())
    good_ok = sum(r["good_ok"] for r in results.values())
    peak_mib = status.get("VmHWM", 0) / 1024
    ok = alive and good == good_ok and not unhandled and not any(errors.values()) and peak_mib < args.rss_bound_mib
    summary = {"seed": args.seed, "packets_per_target": args.packets, "every": args.every, "idle_http": args.idle,
               "seconds": round(seconds, 1), "packets_sent": sent, "good_requests": good, "good_answered": good_ok,
               "good_pct": round(100 * good_ok / max(good, 1), 4), "unhandled_exceptions": len(unhandled),
               "unhandled_sample": unhandled[:10], "internal_errors": errors, "peak_rss_mib": round(peak_mib, 1),
               "rss_bound_mib": args.rss_bound_mib, "bootd_alive": alive, "bootd_final": status, "passed": ok,
               "targets": results, "stats": final_stats}
    reached = {target: r["bootd_counted"][key] for target, key in COUNTER.items()
               if (r := results.get(target)) is not None}
    summary["reached_bootd"] = reached
    print(f"packets sent: {sent}")
    print("reached bootd (its own counters, good and pacing requests included): "
          + ", ".join(f"{t} {n}/{results[t]['sent']}" for t, n in reached.items()))
    print(f"good answers: {good_ok}/{good}")
    print(f"unhandled exceptions: {len(unhandled)}")
    for line in unhandled[:10]:
        print(f"  {line}")
    print(f"internal errors: {errors}")
    print(f"peak RSS: {peak_mib:.1f} MiB (bound {args.rss_bound_mib} MiB)")
    print(f"duration: {seconds:.0f} s")
    return summary, ok


def sighup_mode(lab: NetLab, client, proc, args, sha: str, log: Path) -> tuple[dict, bool]:
    """SIGHUPs while good clients of every protocol run in a loop (bench.fuzz_load --target good-loop)."""
    argv = [sys.executable, "-m", "bench.fuzz_load", "--target", "good-loop", "--packets", "0",
            "--iface", client.ifname, "--server", SERVER_IP, "--fuzz-ip", FUZZ_IP, "--good-ip", GOOD_IP,
            "--work", str(args.work), "--small-sha256", sha, "--seconds",
            str(args.sighups * args.sighup_interval + 2)]
    loop = lab.start(client.ns, argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    start = time.monotonic()
    sent = 0
    config = args.work / "bootd.yaml"
    base = config.read_text()
    # Each reload has something to do: a fourth machine and a DNS record come and go (what the good clients
    # ask for stays the same). The file is replaced whole (rename), as an operator's editor would.
    changed = base + '  - {name: node4, mac: "52:54:00:d4:4f:a8", ip: 192.0.2.24, role: worker, profile: p}\n'
    changed = changed.replace("    - {name: etcd, type: CNAME, value: k8s}\n",
                              "    - {name: etcd, type: CNAME, value: k8s}\n    - {name: extra, type: A, value: 192.0.2.99}\n")
    for i in range(args.sighups):
        if proc.poll() is not None:
            break
        staged = config.with_suffix(".new")
        staged.write_text(changed if i % 2 == 0 else base)
        staged.replace(config)
        os.kill(proc.pid, signal.SIGHUP)
        sent += 1
        time.sleep(args.sighup_interval)
    out, err = loop.communicate(timeout=120)
    result = json.loads(out) if loop.returncode == 0 else {"good": 1, "good_ok": 0, "failures": [err[-2000:]]}
    alive = proc.poll() is None
    unhandled = unhandled_lines(log)
    errors = internal_errors(stats(lab, client)) if alive else {}
    with open(log, errors="replace") as f:
        lines = f.readlines()
    refused = sum(1 for line in lines if "reload refused" in line)
    reloaded = sum(1 for line in lines if "appliance.daemon: reloaded" in line)
    ok = alive and result["good"] == result["good_ok"] and result["good"] > 0 and not unhandled \
        and not any(errors.values()) and not refused and reloaded == sent
    print(f"sighups sent: {sent}")
    print(f"good answers: {result['good_ok']}/{result['good']}  {result.get('detail', {})}")
    for failure in result["failures"][:5]:
        print(f"  FAILED: {failure}")
    print(f"unhandled exceptions: {len(unhandled)}")
    print(f"reloads done: {reloaded}, refused: {refused}")
    return {"sighups": sent, "seconds": round(time.monotonic() - start, 1), "good_requests": result["good"],
            "good_answered": result["good_ok"], "failures": result["failures"], "detail": result.get("detail"),
            "unhandled_exceptions": len(unhandled), "internal_errors": errors, "bootd_alive": alive,
            "reloads_done": reloaded, "reloads_refused": refused, "passed": ok}, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000, help="per DHCP, TFTP and DNS target")
    parser.add_argument("--http-packets", type=int, help="malformed HTTP requests (default: packets / 10)")
    parser.add_argument("--grpc-packets", type=int, help="garbage gRPC connections (default: packets / 100)")
    parser.add_argument("--idle", type=int, help="idle HTTP connections held (default 10000; 2000 with --smoke)")
    parser.add_argument("--slow", type=int, default=20, help="HTTP clients sending a byte at a time")
    parser.add_argument("--every", type=int, default=1000, help="a good request every this many packets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rss-bound-mib", type=int, default=256)
    parser.add_argument("--only", nargs="*", help="these targets only")
    parser.add_argument("--smoke", action="store_true", help="the suite's run: no results file")
    parser.add_argument("--sighup", action="store_true", help="SIGHUPs under good load instead of the campaign")
    parser.add_argument("--sighups", type=int, default=60)
    parser.add_argument("--sighup-interval", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/fuzz"))
    args = parser.parse_args(argv)
    args.http_packets = args.http_packets if args.http_packets is not None else max(1, args.packets // 10)
    args.grpc_packets = args.grpc_packets if args.grpc_packets is not None else max(1, args.packets // 100)
    args.idle = args.idle if args.idle is not None else (2000 if args.smoke else 10_000)
    args.work.mkdir(parents=True, exist_ok=True)
    config, sha = write_setup(args.work)
    log = args.work / "bootd.log"
    log.write_bytes(b"")
    with NetLab(f"fz{os.getpid() % 100000}", server_address=f"{SERVER_IP}/24") as lab:
        client = lab.add_client(address=f"{FUZZ_IP}/24")
        lab.run(client.ns, ["ip", "addr", "add", f"{GOOD_IP}/24", "dev", client.ifname], timeout=10)
        proc = start_bootd(lab, config, log, "info" if args.sighup else "warning")
        wait_ready(lab, client, proc)
        if args.sighup:
            summary, ok = sighup_mode(lab, client, proc, args, sha, log)
            name = "fuzz-sighup"
        else:
            summary, ok = campaign(lab, client, proc, args, sha, log)
            name = "fuzz"
    print(f"result: {'PASS' if ok else 'FAIL'}")
    if not args.smoke:
        print(f"results: {write_results(name, summary)}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
