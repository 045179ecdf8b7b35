"""HTTP side by side: bootd and nginx serve the same files, wrk loads them, bootd/nginx ratios are printed.

Workloads (research/bench.md §6): a 50 MB asset with 1 and with 16 connections (MB/s), and the boot
scripts `/ipxe?mac=...` and `/boot.ipxe` and a Butane template's `/ignition?mac=...` with 16 connections
(requests/s). bootd runs at its default log level with its progress events on; `/ipxe` against the static
`/boot.ipxe` from the same bootd is the per-machine cost (issue 16: >= 0.9x; /ignition >= 0.5x). nginx serves the scripts as
static files holding bootd's exact answers, so both servers send the same bytes; the run checks that
before it measures. Server on CPU 1 (nginx with one worker, sendfile on), wrk on CPU 0, in a loopback-only
namespace; servers alternate each round, and medians are reported.

Usage (root): python -m bench.http [--rounds 3] [--secs 8] [--smoke]
`--smoke`: one short round that checks both servers answer identically (the tests run it); no results file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import LoopbackNamespace, cpu_seconds, median, stop, wait_quiet, write_results

NS = f"bootd-bench-http-{os.getpid()}"  # several runs (a smoke test, a real run) never share one
PORT = 8090
MAC = "52-54-00-be-9c-01"
WORKLOADS = (  # name, path, connections, metric
    ("50MB c1", "/assets/f50m.bin", 1, "MB_s"),
    ("50MB c16", "/assets/f50m.bin", 16, "MB_s"),
    ("ipxe c16", f"/ipxe?mac={MAC}", 16, "rps"),
    ("boot.ipxe c16", "/boot.ipxe", 16, "rps"),
    ("ignition c16", f"/ignition?mac={MAC}", 16, "rps"),
)
BUTANE = """\
variant: flatcar
version: 1.1.0
passwd:
  users:
    - name: core
      ssh_authorized_keys:
        - "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBench bench"
storage:
  files:
    - path: /etc/hostname
      mode: 0644
      contents:
        inline: "{{.request.query.mac}}"
systemd:
  units:
    - name: bench.service
      enabled: true
      contents: |
        [Service]
        ExecStart=/usr/bin/echo {{.request.query.mac}}
        [Install]
        WantedBy=multi-user.target
"""
NGINX_CONF = """\
user root;  # the benchmark work dir may be private to root (pytest tmp dirs are 0700)
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  sendfile on; tcp_nopush on; access_log off; keepalive_requests 100000;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    location /assets/ {{ alias {data}/assets/; }}
    location = /ipxe {{ default_type "text/plain; charset=utf-8"; alias {work}/static/ipxe; }}
    location = /boot.ipxe {{ default_type "text/plain; charset=utf-8"; alias {work}/static/boot.ipxe; }}
    location = /ignition {{ default_type "application/json"; alias {work}/static/ignition; }}
  }}
}}
"""
UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def prepare(work: Path, asset_bytes: int) -> Path:
    data = work / "data"
    for sub in ("profiles", "groups", "assets", "ignition"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    (data / "ignition/bench.yaml").write_text(BUTANE)
    (data / "profiles/p.json").write_text(json.dumps({"id": "p", "ignition_id": "bench.yaml", "boot": {
        "kernel": "${bootd}/assets/f50m.bin", "initrd": ["${bootd}/assets/initrd.img"],
        "args": ["console=ttyS0", "flatcar.config.url=${bootd}/ignition?mac=${mac:hexhyp}"]}}))
    (data / "groups/default.json").write_text(json.dumps({"id": "default", "profile": "p"}))
    asset = data / "assets/f50m.bin"
    if not asset.exists() or asset.stat().st_size != asset_bytes:
        with open(asset, "wb") as f:
            chunk = hashlib.sha256(b"bootd").digest() * 32768  # 1 MiB, deterministic
            for _ in range(asset_bytes // len(chunk)):
                f.write(chunk)
    (work / "bootd.yaml").write_text(
        f"http:\n  address: 127.0.0.1\n  port: {PORT}\n  data_dir: {data}\n")
    (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, data=data, port=PORT))
    (work / "static").mkdir(exist_ok=True)
    return data


def servers(work: Path) -> dict[str, list[str]]:
    return {
        "nginx": ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-e", str(work / "nginx-error.log")],
        "bootd": [sys.executable, "-m", "appliance", "run", "-c", str(work / "bootd.yaml")],
    }


def curl(ns: LoopbackNamespace, path: str, out: Path) -> None:
    ns.run(["curl", "-sf", "--retry", "20", "--retry-connrefused", "--retry-delay", "0", "-o", str(out),
            f"http://127.0.0.1:{PORT}{path}"], timeout=60)


def answers(ns: LoopbackNamespace, work: Path, name: str) -> dict[str, str]:
    """sha256 of each workload's answer from the server that is up now."""
    out = {}
    for label, path, _, _ in WORKLOADS:
        target = work / f"answer-{name}"
        curl(ns, path, target)
        out[path] = hashlib.sha256(target.read_bytes()).hexdigest()
        target.unlink()
    return out


def wrk(ns: LoopbackNamespace, path: str, conns: int, secs: int) -> dict[str, float]:
    out = ns.run(["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "30s",
                  f"http://127.0.0.1:{PORT}{path}"], timeout=secs + 60)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    amount, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out).groups()
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error answers on {path}:\n{out}")
    return {"rps": rps, "MB_s": float(amount) * UNITS[unit] / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=8)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/http"))
    args = parser.parse_args(argv)
    rounds, secs = (1, 1) if args.smoke else (args.rounds, args.secs)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, (4 if args.smoke else 50) * 1024 * 1024)
    argvs = servers(work)
    samples: dict[str, dict[str, list[dict[str, float]]]] = {s: {w[0]: [] for w in WORKLOADS} for s in argvs}
    busy_seen: list[float] = []
    with LoopbackNamespace(NS) as ns:
        # bootd first, once, to write its answers as nginx's static files; then compare every answer.
        proc = ns.start(argvs["bootd"], work / "bootd.log")
        try:
            curl(ns, f"/ipxe?mac={MAC}", work / "static/ipxe")
            curl(ns, "/boot.ipxe", work / "static/boot.ipxe")
            curl(ns, f"/ignition?mac={MAC}", work / "static/ignition")
            reference = answers(ns, work, "bootd")
        finally:
            stop(proc)
        for r in range(rounds):
            order = list(argvs) if r % 2 == 0 else list(reversed(argvs))
            for name in order:
                busy_seen.append(0.0 if args.smoke else wait_quiet())
                proc = ns.start(argvs[name], work / f"{name}.log")
                try:
                    got = answers(ns, work, name)
                    if got != reference:
                        print(f"{name} answers differ from bootd's: {got} != {reference}", file=sys.stderr)
                        return 1
                    for label, path, conns, _metric in WORKLOADS:
                        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                        result = wrk(ns, path, conns, secs)
                        result["server_cpu_pct"] = 100 * (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
                        samples[name][label].append(result)
                finally:
                    stop(proc)
    table = {}
    print(f"{'workload':16s} {'nginx':>12s} {'bootd':>12s} {'ratio':>7s}  cpu% nginx/bootd")
    for label, _path, _conns, metric in WORKLOADS:
        peer = median([s[metric] for s in samples["nginx"][label]])
        ours = median([s[metric] for s in samples["bootd"][label]])
        cpu = (median([s["server_cpu_pct"] for s in samples["nginx"][label]]),
               median([s["server_cpu_pct"] for s in samples["bootd"][label]]))
        ratio = ours / peer if peer else float("nan")
        table[label] = {"metric": metric, "nginx": peer, "bootd": ours, "ratio": ratio,
                        "server_cpu_pct": {"nginx": cpu[0], "bootd": cpu[1]}}
        unit = "MB/s" if metric == "MB_s" else "req/s"
        print(f"{label:16s} {peer:10.1f} {unit[:2]} {ours:10.1f} {unit[:2]} {ratio:6.2f}x  {cpu[0]:.0f}/{cpu[1]:.0f}")
    per_machine = {}
    for label in ("ipxe c16", "ignition c16"):
        static = median([s["rps"] for s in samples["bootd"]["boot.ipxe c16"]])
        per_machine[label] = median([s["rps"] for s in samples["bootd"][label]]) / static if static else float("nan")
        print(f"bootd {label.split()[0]} / its static boot.ipxe: {per_machine[label]:.2f}x")
    print("answers identical: yes")
    if not args.smoke:
        nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        path = write_results("http", {"rounds": rounds, "secs": secs, "busy_before_each_server": busy_seen,
                                      "peer": nginx_version, "results": table, "samples": samples,
                                      "bootd_per_machine_vs_static": per_machine})
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
