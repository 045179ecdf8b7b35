"""Start and idle (issue 16): how long `bootd run` takes to be ready, and how much memory it holds idle, with
every service on: DHCP (proxy or authoritative, alternating run by run), TFTP, DNS, HTTP (events, the UI, its
stream), the read-write API with TLS client certificates, /metrics on a listener of its own.

Each run starts bootd in a network namespace made here (lo and a veth pair, 10.99.0.1/24 on bd0), pinned to
one core, with $NOTIFY_SOCKET pointing at a socket of this script: start-to-ready is the time from the fork
to the daemon's own READY=1 (sent once every socket is bound and the API serves). Then bootd is left alone for
`--settle` seconds (no request) and its memory read from /proc/PID/status and smaps_rollup: VmRSS (what the
target counts), RssAnon/RssFile, Pss, VmHWM, threads. After that a probe in the namespace asks each service
once (HTTP /boot.ipxe, the UI page, /metrics, a DNS A query, a TFTP read, a PXE DHCP request on 4011, an API
GroupList over TLS with the client certificate): a service that does not answer fails the run, so a number
is never for a daemon with something off. RSS after that one request each is kept too.

Usage (root): python -m bench.startup [--runs 8] [--settle 5] [--smoke]
Results: bench/results/startup-*.json (not with --smoke), with the load average before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from pyroute2 import NetNS

from bench.common import SERVER_CPU, LoopbackNamespace, median, stop, write_results

NAMESPACE = "bootd-bench-startup"
ADDRESS = "10.99.0.1"
HTTP_PORT, API_PORT, METRICS_PORT = 8080, 8081, 9100
MACHINE_MAC = "52:54:00:12:34:56"


def write_work(work: Path) -> None:
    """The data dir, firmware, TFTP root and certificates every run shares (the config is per mode)."""
    if work.exists():
        shutil.rmtree(work)
    data = work / "data"
    for sub in ("profiles", "groups", "ignition", "generic", "assets"):
        (data / sub).mkdir(parents=True)
    (data / "profiles/p.json").write_text(json.dumps(
        {"id": "p", "boot": {"kernel": "/assets/vmlinuz", "initrd": ["/assets/initrd"], "args": ["console=ttyS0"]},
         "ignition_id": "p.yaml"}))
    (data / "groups/default.json").write_text(json.dumps({"id": "default", "profile": "p"}))
    (data / "ignition/p.yaml").write_text("variant: fcos\nversion: 1.4.0\n")
    (data / "assets/vmlinuz").write_bytes(b"k" * 4096)
    (data / "assets/initrd").write_bytes(b"i" * 4096)
    firmware = work / "state/firmware"
    firmware.mkdir(parents=True)
    for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi"):
        (firmware / name).write_bytes(os.urandom(8192))
    (work / "tftproot").mkdir()
    (work / "tftproot/hello.bin").write_bytes(b"hello " * 100)
    subprocess.run([sys.executable, "-m", "appliance", "certs", "init", "--san", f"IP:{ADDRESS}",
                    "--out", str(work / "tls")], check=True, capture_output=True)


def write_config(work: Path, dhcp_mode: str, api: bool = True) -> Path:
    dhcp = ("dhcp:\n  mode: proxy\n" if dhcp_mode == "proxy" else
            "dhcp:\n  mode: authoritative\n  subnet: 10.99.0.0/24\n  range: [10.99.0.100, 10.99.0.200]\n"
            f"  router: {ADDRESS}\n  dns_servers: [{ADDRESS}]\n")
    path = work / f"bootd-{dhcp_mode}{'' if api else '-no-api'}.yaml"
    path.write_text(
        f"state_dir: {work / 'state'}\ndomain: lab.test\n"
        "listen:\n  interfaces: [bd0]\n"
        f"http:\n  address: {ADDRESS}\n  port: {HTTP_PORT}\n  data_dir: {work / 'data'}\n"
        + dhcp +
        f"tftp:\n  root: {work / 'tftproot'}\n"
        f"dns:\n  address: {ADDRESS}\n  records:\n    - {{name: x, type: A, value: 192.0.2.99}}\n"
        + (f"api:\n  address: {ADDRESS}\n  port: {API_PORT}\n  cert_file: {work / 'tls/server.crt'}\n"
           f"  key_file: {work / 'tls/server.key'}\n  ca_file: {work / 'tls/ca.crt'}\n" if api else "") +
        f"metrics:\n  address: {ADDRESS}\n  port: {METRICS_PORT}\n"
        f"machines:\n  - {{name: node1, mac: \"{MACHINE_MAC}\", ip: 10.99.0.21, role: worker, profile: p}}\n")
    return path


class Namespace(LoopbackNamespace):
    """The benchmark's namespace, with a veth pair: bootd listens on bd0 (listen.interfaces), bd1 is the other
    end, up and unaddressed."""

    def __init__(self) -> None:
        super().__init__(NAMESPACE)

    def __enter__(self) -> Self:
        super().__enter__()
        with NetNS(NAMESPACE) as ns:
            ns.link("add", ifname="bd0", kind="veth", peer="bd1")
            ns.link("set", index=ns.link_lookup(ifname="bd1")[0], state="up")
            index = ns.link_lookup(ifname="bd0")[0]
            ns.addr("add", index=index, address=ADDRESS, prefixlen=24)
            ns.link("set", index=index, state="up")
        return self


def memory(pid: int) -> dict:
    """VmRSS, RssAnon, RssFile, VmHWM (status) and Pss (smaps_rollup), in MiB; threads."""
    out: dict = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
        elif key == "Threads":
            out["threads"] = int(value)
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Pss", "Pss_Anon"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def one_run(work: Path, config: Path, settle: float, source: Path) -> dict:
    notify_path = work / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": str(source)}
    argv = ["ip", "netns", "exec", NAMESPACE, "taskset", "-c", SERVER_CPU,
            sys.executable, "-m", "appliance", "run", "-c", str(config)]
    loadavg = [round(x, 2) for x in os.getloadavg()]
    with open(work / "bootd.log", "ab") as log:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=source)
    try:
        notify.settimeout(60)
        ready = None
        while ready is None:
            message = notify.recv(4096).decode()
            if "READY=1" in message.split("\n"):
                ready = time.monotonic() - started
        time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"bootd exited ({proc.returncode}): see {work / 'bootd.log'}")
        idle = memory(proc.pid)  # `ip netns exec` and taskset exec into bootd: same PID
        probe = subprocess.run(["ip", "netns", "exec", NAMESPACE, sys.executable, "-m", "bench.startup",
                                "--probe", str(work)], check=False, capture_output=True, text=True, timeout=120,
                               cwd=Path(__file__).parents[1])
        answered = json.loads(probe.stdout) if probe.returncode == 0 else {"probe_failed": probe.stderr[-2000:]}
        time.sleep(0.5)
        after = memory(proc.pid)
    finally:
        notify.close()
        stop(proc)
    return {"loadavg_before": loadavg, "ready_s": round(ready, 3), "idle": idle, "after_one_request_each": after,
            "answered": answered}


# ---- the probe: runs inside the namespace, asks each service once, prints JSON ----

def _http(path: str, port: int = HTTP_PORT) -> int:
    with socket.create_connection((ADDRESS, port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {ADDRESS}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def _dns() -> bool:
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x01x\x03lab\x04test\x00" + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, (ADDRESS, 53))
        answer = sock.recv(512)
    return answer[:2] == b"\x12\x34" and struct.unpack("!H", answer[6:8])[0] == 1 and answer.endswith(
        bytes([192, 0, 2, 99]))


def _tftp() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"\x00\x01hello.bin\x00octet\x00", (ADDRESS, 69))
        data, peer = sock.recvfrom(1024)
        sock.sendto(b"\x00\x04" + data[2:4], peer)
    return data[:2] == b"\x00\x03" and data[4:].startswith(b"hello ")


def _pxe() -> bool:
    """A PXE client's DHCPREQUEST to port 4011: the boot-server answer (proxy and authoritative both serve 4011)."""
    mac = bytes.fromhex(MACHINE_MAC.replace(":", ""))
    options = (b"\x63\x82\x53\x63" + b"\x35\x01\x03" + b"\x3c\x09PXEClient" + b"\x5d\x02\x00\x00"
               + b"\x61\x11\x00" + bytes(range(16)) + b"\xff")
    packet = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x42424242, 0, 0, bytes(4), bytes(4),
                         bytes(4), bytes(4), mac.ljust(16, b"\0"), b"", b"") + options
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind((ADDRESS, 0))
        sock.sendto(packet, (ADDRESS, 4011))
        answer = sock.recv(2048)
    return answer[0] == 2 and answer[4:8] == b"\x42\x42\x42\x42"


def _api(work: Path) -> bool:
    import grpc  # only the probe needs it

    from appliance.api.client import ApiClient
    from appliance.store.writes import Kind
    client = ApiClient(f"{ADDRESS}:{API_PORT}", work / "tls/ca.crt", work / "tls/client.crt", work / "tls/client.key")
    try:
        return b"default" in client.get(Kind.GROUP, None)
    except grpc.RpcError:
        return False
    finally:
        client.close()


def probe(work: Path) -> int:
    answers = {"http_boot_ipxe": _http("/boot.ipxe") == 200, "ui": _http("/") == 200,
               "metrics": _http("/metrics", METRICS_PORT) == 200, "dns": _dns(), "tftp": _tftp(), "dhcp_4011": _pxe(),
               "api_tls": _api(work) if (work / "api-on").exists() else "off (--no-api)"}
    print(json.dumps(answers))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="runs, alternating proxy and authoritative DHCP")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds left alone after READY before reading RSS")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/startup"))
    parser.add_argument("--smoke", action="store_true", help="two runs, 1 s settle, no results file")
    parser.add_argument("--note", default="", help="kept in the results file (what else ran)")
    parser.add_argument("--compare", type=Path, help="another tree (e.g. `git archive` of an older commit): each "
                        "run starts both, in alternating order, for a same-run A/B")
    parser.add_argument("--no-api", action="store_true", help="without the read-write API (grpc: about 14 MB)")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe is not None:
        return probe(args.probe)
    runs, settle = (2, 1.0) if args.smoke else (args.runs, args.settle)
    write_work(args.work)
    configs = {mode: write_config(args.work, mode, api=not args.no_api) for mode in ("proxy", "authoritative")}
    if not args.no_api:
        (args.work / "api-on").touch()
    results = []
    here = Path(__file__).parents[1]
    trees = {"this": here} if args.compare is None else {"this": here, "compare": args.compare.absolute()}
    plan = []
    for index in range(runs):
        names = list(trees) if index % 2 == 0 else list(reversed(trees))
        plan += [(index, name) for name in names]
    for source in trees.values():  # as installed: byte-code compiled, so no run pays for compiling an edited file
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(source / "appliance")], check=True,
                       capture_output=True)
    with Namespace():
        for index, tree in plan:
            mode = "proxy" if index % 2 == 0 else "authoritative"
            run = {"dhcp": mode, "tree": tree, **one_run(args.work, configs[mode], settle, trees[tree])}
            results.append(run)
            idle = run["idle"]
            print(f"run {index + 1} {tree:7s} {mode:13s} ready {run['ready_s']:.3f} s  idle VmRSS {idle['VmRSS']} MiB "
                  f"(anon {idle['RssAnon']}, file {idle['RssFile']}, Pss {idle['Pss']}, threads {idle['threads']})  "
                  f"after one request each {run['after_one_request_each']['VmRSS']} MiB  "
                  f"load {run['loadavg_before'][0]}", flush=True)
            missing = [name for name, ok in run["answered"].items() if ok is not True and not str(ok).startswith("off")]
            if missing:
                print(f"services that did not answer: {missing} {run['answered']}", file=sys.stderr)
                return 1
    summary = {}
    for tree in trees:
        ready = [r["ready_s"] for r in results if r["tree"] == tree]
        rss = [r["idle"]["VmRSS"] for r in results if r["tree"] == tree]
        summary[tree] = {"median_ready_s": median(ready), "median_idle_vmrss_mib": median(rss)}
        print(f"{tree}: start to ready median {median(ready):.3f} s (min {min(ready):.3f}, max {max(ready):.3f}); "
              f"idle VmRSS median {median(rss):.1f} MiB (min {min(rss)}, max {max(rss)})")
    print("every service answered: yes")
    if not args.smoke:
        path = write_results("startup", {"runs": runs, "settle_s": settle, "note": args.note, "api": not args.no_api,
                                         "trees": {k: str(v) for k, v in trees.items()}, "summary": summary,
                                         "python": sys.version.split()[0], "results": results})
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
