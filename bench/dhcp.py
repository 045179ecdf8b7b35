"""DHCP side by side: bootd and dnsmasq answer the same PXE DISCOVERs; offers/s and latency ratios.

Topology (research/bench.md §5): a server namespace and a client namespace joined by a veth pair
(10.96.0.0/16 exists only inside them). Server on CPU 1, load (bench/dhcp_load.py) on CPU 0.
Workloads, each round alternating the servers:
- proxy, closed loop (32 outstanding), a new MAC per DISCOVER: max offers/s. bootd runs with its
  per-machine decision and progress events on (every OFFER is an event), at its default log level (info)
  as dnsmasq runs with --quiet-dhcp; "proxy varied" does the same with clients as varied as real firmware
  (a random GUID each, BIOS and UEFI, five vendor-class and parameter-list kinds).
- proxy, open loop at 1000/s: p50/p99 latency.
- The proxy workloads are sent by bench/dhcp_load.c (compiled with the system's cc into the work dir; the
  Python generator when there is no compiler), and each round also runs them against bench/dhcp_echo.py, a
  responder that does nothing but patch a pre-built OFFER: the load generator's ceiling, printed and kept
  in the results (a server measured near it was limited by the load, not by its own work). Each sample
  keeps the server's CPU per answer (server_us_per_offer), which no load generator limits.
- authoritative (a /16 range: 10.96.0.10-10.96.255.250), bootd vs dnsmasq --no-ping:
  "authoritative max": DISCOVER->OFFER, closed loop over 200 MACs;
  "authoritative DORA": whole DISCOVER-OFFER-REQUEST-ACK exchanges, a new MAC each (sequential, as perfdhcp),
  64 in flight; bootd's ACK leaves only once its lease is fsynced to the journal (dnsmasq's lease file is
  /dev/null here: it keeps nothing);
  "authoritative fill": 60,000 new clients take a lease (DORA, 64 in flight) from a fresh server (the range
  92% taken by the end); the ACK rate over the first and the last tenth (allocation must cost the same when
  the range is full).
Before measuring, one sample OFFER from each server is checked: OFFER, server id, GUID echoed, option
60 PXEClient, and a boot path (bootd: the file; dnsmasq: its PXE menu, which names the same file on 4011).

Usage (root): python -m bench.dhcp [--rounds 3] [--secs 5] [--only proxy|authoritative] [--smoke]
(--smoke: one short round, a fill of 2,000: both servers' answers checked, no performance asserted)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from appliance.dhcp.packet import MessageType, Option, parse_packet
from bench.common import LOAD_CPU, SERVER_CPU, cpu_seconds, median, wait_quiet, write_results
from tests.netns import NetLab, _end_group

ROOT = Path(__file__).parents[1]
SERVER_IP = "10.96.0.1"
FILL = 60_000


def dnsmasq(interface: str, authoritative: bool, logging: bool = False) -> list[str]:
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", f"--interface={interface}",
            "--bind-interfaces", "--log-facility=-", "--dhcp-leasefile=/dev/null", "--dhcp-userclass=set:ipxe,iPXE"]
    argv += [] if logging else ["--quiet-dhcp"]  # logging: a line per request and per reply, as by default
    if authoritative:
        return argv + ["--dhcp-range=10.96.0.10,10.96.255.250,255.255.0.0,1h", "--no-ping", "--dhcp-authoritative", "--dhcp-lease-max=70000",
                       "--dhcp-boot=tag:!ipxe,undionly.kpxe", f"--dhcp-boot=tag:ipxe,http://{SERVER_IP}:8080/bootd.ipxe"]
    return argv + ["--dhcp-range=10.96.0.0,proxy,255.255.0.0",
                   "--pxe-service=tag:!ipxe,0,PXE chainload to iPXE,undionly.kpxe",
                   "--pxe-service=tag:!ipxe,7,PXE chainload to iPXE UEFI,ipxe.efi",
                   f"--pxe-service=tag:ipxe,0,iPXE,http://{SERVER_IP}:8080/bootd.ipxe"]


def bootd_config(work: Path, authoritative: bool) -> Path:
    (work / "data/groups").mkdir(parents=True, exist_ok=True)
    (work / "data/profiles").mkdir(parents=True, exist_ok=True)
    # A default group: every MAC is bootd's to boot, as every MAC is dnsmasq's (without one, bootd would
    # leave the load's random MACs to their next boot device and answer nothing).
    (work / "data/groups/default.json").write_text('{"id": "default", "profile": "p"}')
    (work / "data/profiles/p.json").write_text('{"id": "p", "boot": {"kernel": "/assets/k"}}')
    (work / "state/firmware").mkdir(parents=True, exist_ok=True)
    for name in ("undionly.kpxe", "ipxe.efi"):
        (work / "state/firmware" / name).write_bytes(b"\0" * 1024)
    dhcp = ("  mode: authoritative\n  subnet: 10.96.0.0/16\n  range: [10.96.0.10, 10.96.255.250]\n  lease: 1h\n"
            if authoritative else "  mode: proxy\n")
    path = work / f"bootd-{'auth' if authoritative else 'proxy'}.yaml"
    path.write_text(f"state_dir: {work / 'state'}\nhttp:\n  address: {SERVER_IP}\n  port: 8080\n"
                    f"  data_dir: {work / 'data'}\ndhcp:\n{dhcp}")
    (work / "state/leases.json").unlink(missing_ok=True)
    (work / "state/leases.journal").unlink(missing_ok=True)
    return path


_C_OPTIONS = ("--dora", "--count", "--sequential", "--first", "--acked", "--deciles")  # dhcp_load.py's only


def build_c_load(work: Path) -> Path | None:
    """bench/dhcp_load.c compiled into the work dir; None (the Python generator) when there is no compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    binary = work / "dhcp_load"
    result = subprocess.run([cc, "-O2", "-o", str(binary), str(ROOT / "bench/dhcp_load.c")], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"bench/dhcp_load.c did not compile, using the Python load generator:\n{result.stderr}", file=sys.stderr)
        return None
    return binary


def load(lab: NetLab, client, *args: str, secs: float, generator: Path | None = None) -> dict:
    if generator is not None and not any(arg in _C_OPTIONS for arg in args):
        argv = [str(generator)]
    else:
        argv = [sys.executable, "-m", "bench.dhcp_load"]
    result = lab.run(client.ns, ["taskset", "-c", LOAD_CPU, *argv, "--iface", client.ifname, "--secs", str(secs), *args],
                     cwd=ROOT, timeout=secs + 60)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return {"generator": "python", **json.loads(result.stdout)}


def check_offer(name: str, sample_hex: str, fixed_guid: bool = True) -> str:
    """What a person would check in the OFFER; returns the boot path it names, or raises."""
    offer = parse_packet(bytes.fromhex(sample_hex))
    problems = []
    if offer.message_type != MessageType.OFFER:
        problems.append(f"message type {offer.message_type}")
    if offer.options.get(Option.SERVER_ID) != bytes(map(int, SERVER_IP.split("."))):
        problems.append("server id")
    guid = offer.options.get(Option.GUID)
    if guid is not None and (guid[:1] != b"\x00" or len(guid) != 17 or fixed_guid and guid[1:] != bytes(range(16))):
        problems.append("GUID not echoed")
    if offer.file or Option.BOOT_FILE in offer.options:
        boot = (offer.file or offer.options[Option.BOOT_FILE].rstrip(b"\0")).decode()
    elif Option.VENDOR in offer.options:
        boot = "PXE menu (file named in the 4011 answer)"
    else:
        problems.append("no boot path")
        boot = ""
    if problems:
        raise RuntimeError(f"{name}: bad OFFER: {', '.join(problems)}")
    return boot


def run_server(lab: NetLab, argv: list[str], log: Path):
    with open(log, "wb") as out:
        return lab.start(lab.server_ns, ["taskset", "-c", SERVER_CPU, *argv], stdout=out, stderr=subprocess.STDOUT)


def wait_answering(lab: NetLab, client, extra: list[str]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if load(lab, client, "--rate", "20", *extra, secs=0.3)["offers"]:
            return
    raise RuntimeError("server never answered")


def stop(proc) -> None:
    _end_group(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", choices=("proxy", "authoritative"), help="one mode's workloads (default: both)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/dhcp"))
    args = parser.parse_args(argv)
    rounds, secs = (1, 1.0) if args.smoke else (args.rounds, args.secs)
    fill = 2000 if args.smoke else FILL
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    generator = build_c_load(work)
    workloads = [  # name, server mode, load arguments
        ("proxy max", "proxy", ["--window", "32"]),
        ("proxy varied", "proxy", ["--window", "32", "--varied"]),
        ("proxy 1000/s", "proxy", ["--rate", "1000", "--varied"]),
        ("authoritative max", "authoritative", ["--window", "32", "--macs", "200"]),
        ("authoritative DORA", "authoritative", ["--window", "64", "--dora", "--sequential", "--first", "1000000"]),
        ("authoritative fill", "fill", ["--window", "64", "--dora", "--sequential", "--count", str(fill), "--deciles"]),
    ]
    samples: dict[str, dict[str, list[dict]]] = {}
    boots: dict[str, str] = {}
    busy: list[float] = []
    with NetLab(f"bd{os.getpid() % 100000}", server_address=f"{SERVER_IP}/16") as lab:
        client = lab.add_client()
        server_if = f"{lab.name[:8]}s0"
        for r in range(rounds):
            servers = ["echo", "dnsmasq", "dnsmasq-log", "bootd"] if r % 2 == 0 else ["bootd", "dnsmasq-log", "dnsmasq", "echo"]
            modes = ("proxy", "authoritative", "fill") if r == 0 else ("proxy", "authoritative")  # one fill
            for mode in [m for m in modes if args.only is None or (m == "proxy") == (args.only == "proxy")]:
                authoritative = mode != "proxy"
                for name in servers:
                    if name in ("dnsmasq-log", "echo") and authoritative:
                        continue  # logging dnsmasq: proxy only (what the issue compares it in); echo: proxy's ceiling
                    if name == "echo":
                        argv = [sys.executable, "-m", "bench.dhcp_echo", "--iface", server_if, "--server-ip", SERVER_IP]
                    elif name == "bootd":
                        argv = [sys.executable, "-m", "appliance", "run", "-c", str(bootd_config(work, authoritative))]
                    else:
                        argv = dnsmasq(server_if, authoritative, logging=name == "dnsmasq-log")
                    busy.append(0.0 if args.smoke else wait_quiet())
                    proc = run_server(lab, argv, work / f"{name}.log")
                    try:
                        wait_answering(lab, client, ["--macs", "200"] if authoritative else [])
                        for label, server_mode, load_args in workloads:
                            if server_mode != mode or name == "echo" and "--rate" in load_args:
                                continue
                            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                            result = load(lab, client, *load_args, secs=secs if mode != "fill" else 120, generator=generator)
                            cpu = cpu_seconds(proc.pid) - c0
                            result["server_cpu_pct"] = round(100 * cpu / (time.monotonic() - t0))
                            result["server_us_per_offer"] = round(1e6 * cpu / max(result["offers"], 1), 1)
                            sample = result.pop("sample")
                            if name == "echo":
                                samples.setdefault(label, {}).setdefault(name, []).append(result)
                                continue
                            if "--dora" not in load_args:
                                boots[f"{name} {'authoritative' if authoritative else 'proxy'}"] = check_offer(name, sample, "--varied" not in load_args)
                            elif not sample or parse_packet(bytes.fromhex(sample)).message_type != MessageType.ACK:
                                raise RuntimeError(f"{name}: {label}: no ACK")
                            if mode == "fill" and name == "bootd" and result["offers"] != fill:
                                raise RuntimeError(f"{name}: fill: {result['offers']} offers of {fill}")
                            samples.setdefault(label, {}).setdefault(name, []).append(result)
                    finally:
                        stop(proc)
    table = {}
    print(f"{'workload':18s} {'dnsmasq':>10s} {'bootd':>10s} {'ratio':>6s} {'vs log':>6s}   us/offer dnsmasq/log/bootd"
          "   p99 ms dnsmasq/bootd   load ceiling")
    for label, by_server in samples.items():
        row = {}
        for name in [n for n in ("dnsmasq", "dnsmasq-log", "bootd", "echo") if n in by_server]:
            runs = by_server[name]
            row[name] = {"offers_per_s": median([r["offers_per_s"] for r in runs]),
                         "p50_ms": median([r["p50_ms"] or 0 for r in runs]),
                         "p99_ms": median([r["p99_ms"] or 0 for r in runs]),
                         "loss_pct": median([r["loss_pct"] for r in runs]),
                         "server_cpu_pct": median([r["server_cpu_pct"] for r in runs]),
                         "server_us_per_offer": median([r["server_us_per_offer"] for r in runs])}
        row["ratio"] = row["bootd"]["offers_per_s"] / max(row["dnsmasq"]["offers_per_s"], 1e-9)
        # offers per CPU second, bootd against dnsmasq: what the ratio would be with both servers saturated
        row["cpu_ratio"] = row["dnsmasq"]["server_us_per_offer"] / max(row["bootd"]["server_us_per_offer"], 1e-9)
        if "dnsmasq-log" in row:
            row["ratio_vs_logging"] = row["bootd"]["offers_per_s"] / max(row["dnsmasq-log"]["offers_per_s"], 1e-9)
            row["cpu_ratio_vs_logging"] = (row["dnsmasq-log"]["server_us_per_offer"]
                                           / max(row["bootd"]["server_us_per_offer"], 1e-9))
        if "echo" in row:
            row["load_ceiling_per_s"] = row.pop("echo")["offers_per_s"]
        for name in [n for n in ("dnsmasq", "bootd") if n in by_server]:
            tenths = [r["deciles_per_s"] for r in by_server[name] if r.get("deciles_per_s")]
            if tenths:  # the fill: the last tenth's rate against the first's, per run, median
                row[name]["last_vs_first_tenth"] = median([t[-1] / t[0] for t in tenths if t[0] and t[-1]])
        table[label] = row
        d, b, g = row["dnsmasq"], row["bootd"], row.get("dnsmasq-log")
        print(f"{label:18s} {d['offers_per_s']:8.0f}/s {b['offers_per_s']:8.0f}/s {row['ratio']:5.2f}x "
              + (f"{row['ratio_vs_logging']:5.2f}x" if g else "     -")
              + f"   {d['server_us_per_offer']:.1f}/{g['server_us_per_offer'] if g else '-'}/{b['server_us_per_offer']:.1f}"
              f"   {d['p99_ms']:.2f}/{b['p99_ms']:.2f}"
              + (f"   {row['load_ceiling_per_s']:.0f}/s" if "load_ceiling_per_s" in row else ""))
    for name in ("dnsmasq", "bootd"):
        if "last_vs_first_tenth" in table.get("authoritative fill", {}).get(name, {}):
            print(f"fill of {fill}: {name}: last tenth / first tenth = "
                  f"{table['authoritative fill'][name]['last_vs_first_tenth']:.2f}x")
    for name, boot in sorted(boots.items()):
        print(f"OFFER checked: {name}: {boot}")
    print("answers checked: yes")
    if not args.smoke:
        version = subprocess.run(["dnsmasq", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        path = write_results("dhcp", {"rounds": rounds, "secs": secs, "peer": version, "busy_before_each_server": busy,
                                      "load_generator": "bench/dhcp_load.c" if generator else "bench/dhcp_load.py",
                                      "results": table, "samples": samples, "boot_paths": boots})
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
