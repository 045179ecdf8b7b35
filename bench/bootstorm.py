"""Boot storm: N QEMU machines (TCG, 256 MB) powered on at once; time until every one has reported.

bootd: authoritative DHCP + TFTP + HTTP (the lab's setup). Peer: what matchbox's docs set up today,
dnsmasq as the DHCP + TFTP server (`dhcp-userclass=set:ipxe,iPXE`, iPXE gets the script URL, PXE ROMs
get undionly.kpxe/ipxe.efi, no-ping) beside nginx serving the same script, kernel, initrd and Ignition as
static files; the machines' reports reach nginx as POSTs it logs. The payload and profile are the same on
both sides. Rounds alternate; per-stage times come from bootd's progress view.

Usage (root): python -m bench.bootstorm [--machines 8] [--firmware bios|uefi] [--rounds 1] [--smoke]
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

from appliance.lab import qemu_argv
from appliance.lab.payload import build
from bench.common import median, wait_quiet, write_results
from tests.netns import NetLab, _end_group

ROOT = Path(__file__).parents[1]
SERVER = "192.0.2.1"
SCRIPT = """#!ipxe
set bootd http://192.0.2.1:8080
chain ${bootd}/ipxe?mac=${mac:hexhyp}
"""
PROFILE = """#!ipxe
kernel ${bootd}/assets/vmlinuz initrd=initrd.img console=ttyS0 quiet bootd.ignition=${bootd}/ignition?mac=${mac:hexhyp} bootd.report=${bootd}/report/${mac:hexhyp}
initrd ${bootd}/assets/initrd.img
boot
"""
NGINX = """worker_processes 1;
daemon off;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  sendfile on; default_type application/octet-stream;
  log_format t '$msec $request_method $uri';
  access_log {work}/access.log t;
  server {{
    listen {server}:8080;
    root {work}/www;
    location = /ipxe {{ default_type text/plain; try_files /ipxe.txt =404; }}
    location = /ignition {{ default_type application/json; try_files /lab.ign =404; }}
    location /report/ {{ return 200 "ok"; }}
  }}
}}
"""


def prepare(work: Path, machines: list[tuple[str, str]], firmware_dir: Path) -> tuple[Path, list[str]]:
    kernel, initrd = build()
    www = work / "www"
    (www / "assets").mkdir(parents=True, exist_ok=True)
    shutil.copy(kernel, www / "assets/vmlinuz")
    shutil.copy(initrd, www / "assets/initrd.img")
    (www / "bootd.ipxe").write_text(SCRIPT)
    (www / "ipxe.txt").write_text(PROFILE)
    (www / "lab.ign").write_text('{"ignition":{"version":"3.4.0"}}')
    (work / "nginx.conf").write_text(NGINX.format(work=work, server=SERVER))
    data = work / "data"
    for sub in ("profiles", "groups", "ignition"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    shutil.copytree(www / "assets", data / "assets", dirs_exist_ok=True)
    (data / "profiles/lab.json").write_text(json.dumps({"id": "lab", "ignition_id": "lab.ign", "boot": {
        "kernel": "${bootd}/assets/vmlinuz", "initrd": ["${bootd}/assets/initrd.img"],
        "args": ["initrd=initrd.img", "console=ttyS0", "quiet", "bootd.ignition=${bootd}/ignition?mac=${mac:hexhyp}",
                 "bootd.report=${bootd}/api/v1/machines/${mac:hexhyp}/report"]}}))
    (data / "groups/default.json").write_text(json.dumps({"id": "default", "profile": "lab"}))
    (data / "ignition/lab.ign").write_text('{"ignition":{"version":"3.4.0"}}')
    (work / "bootd.yaml").write_text(
        f"state_dir: {work / 'state'}\nlisten: {{address: {SERVER}}}\nhttp: {{address: {SERVER}, port: 8080, "
        f"data_dir: {data}}}\ndhcp:\n  mode: authoritative\n  firmware_dir: {firmware_dir}\n  subnet: 192.0.2.0/24\n"
        f"  range: [192.0.2.100, 192.0.2.199]\n  router: {SERVER}\ntftp: {{address: {SERVER}}}\n")
    dnsmasq = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--interface=br0",
               "--bind-interfaces", "--user=root", "--dhcp-range=192.0.2.100,192.0.2.199,1h", "--no-ping",
               "--dhcp-leasefile=/dev/null", "--enable-tftp", f"--tftp-root={firmware_dir}",
               f"--dhcp-option=3,{SERVER}", "--dhcp-userclass=set:ipxe,iPXE",
               "--dhcp-match=set:bios,option:client-arch,0", "--dhcp-boot=tag:bios,tag:!ipxe,undionly.kpxe",
               "--dhcp-match=set:efi64,option:client-arch,7", "--dhcp-boot=tag:efi64,tag:!ipxe,ipxe.efi",
               f"--dhcp-boot=tag:ipxe,http://{SERVER}:8080/bootd.ipxe", "--log-facility=-"]
    return work / "bootd.yaml", dnsmasq


def storm(lab: NetLab, work: Path, machines: list[tuple[str, str]], taps: list[str], firmware: str,
          reported, timeout: float) -> tuple[float, int]:
    """Power every machine on; (seconds until all reported, how many did)."""
    started = time.time()
    vms = [lab.start(lab.server_ns, qemu_argv(name, mac, tap, firmware, work), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL) for (name, mac), tap in zip(machines, taps)]
    try:
        while time.time() - started < timeout:
            done = reported()
            if len(done) >= len(machines):
                return max(done.values()) - started, len(done)
            time.sleep(0.5)
        return timeout, len(reported())
    finally:
        for vm in vms:
            _end_group(vm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=8)
    parser.add_argument("--firmware", choices=("bios", "uefi"), default="bios")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/bootstorm"))
    args = parser.parse_args(argv)
    count = 2 if args.smoke else args.machines
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    firmware_dir = Path("/var/tmp/bootd-e2e/firmware")
    if not (firmware_dir / "ipxe.efi").is_file():
        subprocess.run([sys.executable, "-m", "appliance", "firmware", "fetch", "--dir", str(firmware_dir)],
                       check=True, cwd=ROOT, capture_output=True)
    machines = [(f"vm{i}", f"52:54:00:b5:00:{i:02x}") for i in range(count)]
    config, dnsmasq = prepare(work, machines, firmware_dir)
    results: dict[str, list[float]] = {"dnsmasq+nginx": [], "bootd": []}
    stages: list[dict] = []
    for r in range(args.rounds):
        for name in (("dnsmasq+nginx", "bootd") if r % 2 == 0 else ("bootd", "dnsmasq+nginx")):
            if not args.smoke:
                wait_quiet()
            with NetLab(f"bs{os.getpid() % 100000}", server_address=f"{SERVER}/24", bridge=True) as lab:
                lab.run(lab.server_ns, ["ip", "addr", "add", "fd77::1/64", "dev", "br0", "nodad"])
                taps = [lab.add_tap(f"bstap{i}") for i in range(count)]
                if name == "bootd":
                    lab.start(lab.server_ns, [sys.executable, "-m", "appliance", "run", "-c", str(config),
                                              "--log-level", "warning"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

                    def reported() -> dict[str, float]:
                        out = lab.run(lab.server_ns, ["curl", "-sf", f"http://{SERVER}:8080/api/v1/machines"]).stdout
                        views = json.loads(out)["machines"] if out else []
                        return {v["mac"]: v["stages"][-1]["time"] for v in views if v["stage"] == "report"}
                else:
                    (work / "access.log").unlink(missing_ok=True)
                    lab.start(lab.server_ns, dnsmasq, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    lab.start(lab.server_ns, ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

                    def reported() -> dict[str, float]:
                        try:
                            lines = (work / "access.log").read_text().splitlines()
                        except OSError:
                            return {}
                        return {line.split()[2]: float(line.split()[0]) for line in lines
                                if line.split()[1] == "POST" and line.split()[2].startswith("/report/")}
                time.sleep(1.0)  # let the servers bind before the machines power on
                seconds, done = storm(lab, work, machines, taps, args.firmware, reported, args.timeout)
                if done < count:
                    print(f"{name}: only {done}/{count} machines reported within {args.timeout:.0f} s", file=sys.stderr)
                    return 1
                results[name].append(seconds)
                if name == "bootd":
                    out = lab.run(lab.server_ns, ["curl", "-sf", f"http://{SERVER}:8080/api/v1/machines"]).stdout
                    for view in json.loads(out)["machines"]:
                        first = view["stages"][0]["time"]
                        stages.append({s["stage"]: round(s["time"] - first, 2) for s in view["stages"]})
                print(f"round {r + 1} {name}: {count} machines reported in {seconds:.1f} s", flush=True)
    peer, ours = median(results["dnsmasq+nginx"]), median(results["bootd"])
    per_stage = {key: median([s[key] for s in stages if key in s]) for key in stages[0]} if stages else {}
    print(f"{count} x {args.firmware.upper()}: dnsmasq+nginx {peer:.1f} s, bootd {ours:.1f} s: {peer / ours:.2f}x faster")
    print("bootd per-stage medians (s after the first DHCP): " + ", ".join(f"{k} {v}" for k, v in per_stage.items()))
    print("every machine reported: yes")
    if not args.smoke:
        path = write_results("bootstorm", {"machines": count, "firmware": args.firmware, "rounds": args.rounds,
                                           "seconds": results, "bootd_stage_medians": per_stage})
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
