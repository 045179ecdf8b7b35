"""A fleet: N simulated machines each do what firmware does, against bootd and against dnsmasq + nginx.

Each machine (a coroutine in bench/fleet.py's client, on CPU 0; the servers on CPU 1):
 1. PXE ROM DHCP: DISCOVER -> OFFER -> REQUEST -> ACK (BIOS, arch 0); the boot file named is fetched next;
 2. TFTP of that file (undionly.kpxe, 70 KB, blksize 1456 lock-step as PXE ROMs do);
 3. iPXE DHCP (user class iPXE): DISCOVER -> OFFER -> REQUEST -> ACK; the script URL named is fetched next;
 4. GET the script (/bootd.ipxe), then GET /ipxe?mac=... (its boot configuration);
 5. GET the kernel and the initrd (small assets, 256 KiB each);
 6. a pause as the kernel boots (0.5-1.5 s), GET /ignition?mac=...;
 7. a pause (0.2-0.6 s), the report (bootd: POST /api/v1/machines/MAC/report; nginx: POST /report/MAC).
A NAK (dnsmasq offers the same address to machines whose MACs hash alike, and NAKs all but the first
to ask for it) makes a machine start over, up to 8 times. Machines start at random moments within a window (N / 100 s: the same arrival rate, 100 a second, for
every N). Every
answer is checked (the OFFER names a file, TFTP gives the file's bytes, every HTTP answer is 200 with the
expected bytes). Printed per N: machines completed, per-stage p50/p99 (ms), seconds from the first DISCOVER
to the last report, the server's CPU seconds per machine and its peak RSS (VmHWM, MB; dnsmasq + nginx
summed). dnsmasq + nginx serve the same files (nginx serves what bootd rendered for each path).

bootd runs authoritative DHCP (a /16), TFTP and HTTP at its default log level, events on.

A machine talks to the servers DHCP named (TFTP: the ACK's next-server; HTTP: the script URL's host), as
firmware does, so with several replicas on a segment the machines spread over whichever answered first. A
REQUEST nobody answers (the server that offered died) makes the machine start over with a DISCOVER.

Usage (root): python -m bench.fleet [--sizes 100,1000,10000] [--smoke]
(--smoke: 20 machines on each side; every machine must complete; no performance asserted)

The simulator alone, inside a namespace on a segment (bench/replicas.py and tests/e2e/test_replicas.py):
  --storm --count N [--first I | --macs FILE] --window S --iface IF [--concurrency K]: DHCP only, each client
    one DORA; prints JSON with every MAC's ACKed address and the server that ACKed it, the clients that
    started over, and `duplicates` (an address ACKed to two MACs, as the clients saw it);
  --reboot FILE --iface IF: INIT-REBOOT (a broadcast REQUEST for a known address, naming no server) for each
    MAC and address of FILE; prints each answer (ACK or NAK, address, server).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from bench.common import LOAD_CPU, SERVER_CPU, cpu_seconds, wait_quiet, write_results
from tests.netns import NetLab, _end_group

ROOT = Path(__file__).parents[1]
SERVER = "10.95.0.1"
CLIENT = "10.95.255.254"
PORT = 8080
FIRMWARE_BYTES = 70_000
ASSET_BYTES = 256 * 1024
STAGES = ("dhcp_pxe", "tftp", "dhcp_ipxe", "script", "config", "kernel", "initrd", "ignition", "report")
IGNITION = '{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/hostname","contents":{"source":"data:,{{.mac}}"}}]}}'
NGINX = """worker_processes 1;
daemon off;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  sendfile on; default_type application/octet-stream; access_log off;
  server {{
    listen {server}:{port} backlog=4096;
    root {work}/www;
    location = /bootd.ipxe {{ default_type text/plain; try_files /bootd.ipxe =404; }}
    location = /ipxe {{ default_type text/plain; try_files /ipxe.txt =404; }}
    location = /ignition {{ default_type application/json; try_files /ignition.json =404; }}
    location /report/ {{ return 200 "ok"; }}
  }}
}}
"""


def prepare(work: Path) -> dict[str, list[str]]:
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
        "kernel": f"http://{SERVER}:{PORT}/assets/vmlinuz", "initrd": [f"http://{SERVER}:{PORT}/assets/initrd.img"],
        "args": ["console=ttyS0", f"ignition.config.url=http://{SERVER}:{PORT}/ignition?mac=${{mac:hexhyp}}"]}}))
    (data / "groups/default.json").write_text(json.dumps({"id": "default", "profile": "fleet"}))
    (data / "ignition/fleet.ign").write_text(IGNITION.replace("{{.mac}}", "fleet"))
    state = work / "state"
    state.mkdir(exist_ok=True)
    (work / "bootd.yaml").write_text(
        f"state_dir: {state}\nlisten: {{address: {SERVER}}}\nhttp: {{address: {SERVER}, port: {PORT}, "
        f"data_dir: {data}}}\ndhcp:\n  mode: authoritative\n  firmware_dir: {firmware}\n  subnet: 10.95.0.0/16\n"
        f"  range: [10.95.0.10, 10.95.255.250]\n  router: {SERVER}\n  lease: 1h\n"
        # every simulated machine reaches TFTP from the client's one address: the per-client limit (8, for
        # one machine's retries) would stand for the whole fleet
        f"tftp: {{address: {SERVER}, max_per_client: 1000, max_transfers: 1000}}\n")
    www = work / "www"
    (www / "assets").mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "initrd.img"):
        (www / "assets" / name).write_bytes((data / "assets" / name).read_bytes())
    (work / "nginx.conf").write_text(NGINX.format(work=work, server=SERVER, port=PORT))
    dnsmasq = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
               "--user=root", "--dhcp-range=10.95.0.10,10.95.255.250,255.255.0.0,1h", "--no-ping",
               "--dhcp-authoritative", "--dhcp-lease-max=70000", "--dhcp-leasefile=/dev/null", "--enable-tftp",
               f"--tftp-root={firmware}", f"--dhcp-option=3,{SERVER}", "--dhcp-userclass=set:ipxe,iPXE",
               "--dhcp-match=set:bios,option:client-arch,0", "--dhcp-boot=tag:bios,tag:!ipxe,undionly.kpxe",
               f"--dhcp-boot=tag:ipxe,http://{SERVER}:{PORT}/bootd.ipxe", "--log-facility=-", "--quiet-dhcp",
               "--tftp-max=10000"]
    return {"bootd": [sys.executable, "-m", "appliance", "run", "-c", str(work / "bootd.yaml")],
            "dnsmasq": dnsmasq, "nginx": ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)]}


def reset_state(work: Path) -> None:
    for name in ("leases.json", "leases.journal"):
        (work / "state" / name).unlink(missing_ok=True)


# --- the client: runs inside the client namespace (python -m bench.fleet --client ...) ---------------------

def dhcp_packet(kind: int, mac: bytes, xid: int, ipxe: bool, requested: bytes = b"", server: bytes = b"") -> bytes:
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4), bytes(4),
                         bytes(4), mac.ljust(16, b"\0"), b"", b"")

    def option(code: int, value: bytes) -> bytes:
        return bytes((code, len(value))) + value

    options = option(53, bytes((kind,))) + option(57, struct.pack("!H", 1472)) + option(93, b"\0\0") \
        + option(94, b"\x01\x02\x01") + option(97, b"\0" + mac.ljust(16, b"\xee")) \
        + option(60, b"PXEClient:Arch:00000:UNDI:002001") + option(55, bytes([1, 3, 6, 43, 60, 66, 67]))
    if ipxe:
        options += option(77, b"iPXE") + option(175, b"\x13\x01\x01")
    if requested:
        options += option(50, requested)
    if server:
        options += option(54, server)
    return header + b"\x63\x82\x53\x63" + options + b"\xff"


def dhcp_option(data: bytes, code: int) -> bytes:
    i = 240
    while i < len(data) - 1 and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        if data[i] == code:
            return data[i + 2 : i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return b""


class DhcpClient(asyncio.DatagramProtocol):
    """One socket on :68 for every simulated machine; a reply goes to the exchange waiting on its xid."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Queue] = {}
        self.restarts: dict[bytes, int] = {}  # MAC: REQUESTs nobody answered (its server died), so DISCOVER again
        self.acked = 0

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) >= 240 and (queue := self.waiting.get(int.from_bytes(data[4:8], "big"))) is not None:
            queue.put_nowait(data)

    async def exchange(self, transport, packet: bytes, xid: int, answers: set[int],
                       tries: int = 4) -> bytes | None:
        """The first answer of a kind in `answers`, retransmitting after 1, 2, 3... s of silence; None if none."""
        queue: asyncio.Queue = asyncio.Queue()
        self.waiting[xid] = queue
        loop = asyncio.get_running_loop()
        try:
            for attempt in range(tries):
                transport.sendto(packet, ("255.255.255.255", 67))
                deadline = loop.time() + 1.0 + attempt
                while (left := deadline - loop.time()) > 0:
                    try:
                        data = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                    if (dhcp_option(data, 53) or b"\0")[0] in answers:
                        return data
            return None
        finally:
            self.waiting.pop(xid, None)

    async def dora(self, transport, mac: bytes, xid: int, ipxe: bool, tries: int = 4) -> bytes:
        """DISCOVER, OFFER, REQUEST, ACK; the ACK is returned. After a NAK (a server that offered an address
        it then gave to another client) or a REQUEST nobody answers (the server that offered died) it starts
        over with a new xid, as firmware does; `restarts` counts the silent ones. NoOffer when no server
        offers anything (`tries` DISCOVERs)."""
        why = "no answer to REQUEST"
        for attempt in range(8):
            this_xid = xid ^ (attempt << 28)
            offer = await self.exchange(transport, dhcp_packet(1, mac, this_xid, ipxe), this_xid, {2}, tries)
            if offer is None:
                raise NoOffer(f"no OFFER for {mac.hex(':')} after {tries} DISCOVERs")
            server = dhcp_option(offer, 54) or offer[20:24]
            answer = await self.exchange(transport, dhcp_packet(3, mac, this_xid, ipxe, offer[16:20], server),
                                         this_xid, {5, 6}, tries)
            if answer is None:
                self.restarts[mac] = self.restarts.get(mac, 0) + 1
                continue
            if dhcp_option(answer, 53)[:1] == b"\x05":
                self.acked += 1
                return answer
            why = dhcp_option(answer, 56).decode(errors="replace")
        raise RuntimeError(f"no ACK in 8 rounds: {mac.hex(':')}: {why}")

    async def init_reboot(self, transport, mac: bytes, xid: int, address: bytes, tries: int = 4) -> bytes | None:
        """RFC 2131's INIT-REBOOT: a client that knows its address asks for it again, broadcast, naming no
        server (its server may be gone); any server that holds its lease must ACK, one that knows another
        holder NAKs. The answer (ACK or NAK), or None."""
        return await self.exchange(transport, dhcp_packet(3, mac, xid, False, address), xid, {5, 6}, tries)


class NoOffer(Exception):
    """No server offered an address (the pool is exhausted, or no server may allocate)."""


async def tftp_get(name: str, server: str, source: str, blksize: int = 1456, tries: int = 5) -> bytes:
    """A PXE ROM's TFTP read: blksize and tsize, lock-step, a retransmission after 1 s of silence, and no
    dally after the last block (the ROM runs what it got)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    try:
        last = b"\0\1" + f"{name}\0octet\0blksize\0{blksize}\0tsize\0000\0".encode()
        target = (server, 69)
        sock.sendto(last, target)
        received, expected, size = bytearray(), 1, 512
        while True:
            for attempt in range(tries):
                try:
                    data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), 1.0)
                    break
                except TimeoutError:
                    sock.sendto(last, target)
            else:
                raise RuntimeError(f"TFTP {name}: no answer at block {expected}")
            opcode = data[1]
            if opcode == 5:
                message = data[4:].split(b"\0")[0]
                raise RuntimeError(f"TFTP {name}: error {message!r}")
            target = source
            if opcode == 6:  # OACK
                fields = data[2:].split(b"\0")
                options = dict(zip(fields[0::2], fields[1::2]))
                size = int(options.get(b"blksize", b"512"))
                last = b"\0\4\0\0"
                sock.sendto(last, target)
                continue
            if opcode != 3:
                continue
            block = int.from_bytes(data[2:4], "big")
            if block == expected & 0xFFFF:
                received += data[4:]
                expected += 1
            last = b"\0\4" + data[2:4]
            sock.sendto(last, target)
            if block == (expected - 1) & 0xFFFF and len(data) - 4 < size:
                return bytes(received)
    finally:
        sock.close()


def client_mac(index: int) -> bytes:
    return bytes((2, 0x95)) + index.to_bytes(4, "big")


async def machine(index: int, start_at: float, dhcp: DhcpClient, transport, session, peer: str,
                  expect: dict, rng: random.Random, source: str) -> dict[str, float]:
    """One machine's whole boot. The servers are the ones DHCP names (TFTP: the ACK's next-server; HTTP:
    the script URL's), as firmware does, so machines spread over whichever replicas answered them."""
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    mac = client_mac(index)
    hexhyp = mac.hex("-")
    times: dict[str, float] = {}
    mark = time.monotonic()

    def done(stage: str) -> None:
        nonlocal mark
        now = time.monotonic()
        times[stage] = now - mark
        mark = now

    times["start"] = mark
    ack = await dhcp.dora(transport, mac, 0x95000000 + index, ipxe=False)
    boot_file = ack[108:236].split(b"\0")[0].decode() or dhcp_option(ack, 67).rstrip(b"\0").decode()
    if boot_file != "undionly.kpxe":
        raise RuntimeError(f"PXE ACK names {boot_file!r}")
    tftp_server = socket.inet_ntoa(ack[20:24]) if ack[20:24] != bytes(4) else socket.inet_ntoa(dhcp_option(ack, 54))
    done("dhcp_pxe")
    got = await tftp_get(boot_file, tftp_server, source)
    if hashlib.sha256(got).hexdigest() != expect["firmware_sha256"]:
        raise RuntimeError(f"TFTP gave {len(got)} bytes, not the file's")
    done("tftp")
    ack = await dhcp.dora(transport, mac, 0x96000000 + index, ipxe=True)
    script_url = ack[108:236].split(b"\0")[0].decode() or dhcp_option(ack, 67).rstrip(b"\0").decode()
    if not script_url.startswith("http://"):
        raise RuntimeError(f"iPXE ACK names {script_url!r}")
    done("dhcp_ipxe")

    async def get(url: str, expected: bytes | None, method: str = "GET") -> None:
        async with session.request(method, url) as resp:
            body = await resp.read()
            if resp.status != 200 or (expected is not None and body != expected):
                raise RuntimeError(f"{method} {url}: {resp.status} ({len(body)} bytes)")

    base = script_url.rsplit("/", 1)[0]  # http://<the server that answered>:<port>
    await get(script_url, expect["script"].replace(SERVER.encode(), base[7:].rsplit(":", 1)[0].encode()))
    done("script")
    await get(f"{base}/ipxe?mac={hexhyp}", expect["config"].replace(b"MACHINE", hexhyp.encode()) if peer == "bootd"
              else None)
    done("config")
    await get(f"{base}/assets/vmlinuz", expect["kernel"])
    done("kernel")
    await get(f"{base}/assets/initrd.img", expect["initrd"])
    done("initrd")
    await asyncio.sleep(rng.uniform(0.5, 1.5))  # the kernel boots
    mark = time.monotonic()
    await get(f"{base}/ignition?mac={hexhyp}", None)
    done("ignition")
    await asyncio.sleep(rng.uniform(0.2, 0.6))
    mark = time.monotonic()
    report = f"{base}/api/v1/machines/{mac.hex(':')}/report" if peer == "bootd" else f"{base}/report/{hexhyp}"
    await get(report, None, method="POST")
    done("report")
    times["end"] = time.monotonic()
    return times


async def dhcp_socket(iface: str) -> tuple[DhcpClient, asyncio.DatagramTransport]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("0.0.0.0", 68))
    dhcp = DhcpClient()
    transport, _ = await loop.create_datagram_endpoint(lambda: dhcp, sock=sock)
    return dhcp, transport


async def run_client(count: int, window: float, iface: str, peer: str, work: Path, source: str, first: int) -> dict:
    import aiohttp
    dhcp, transport = await dhcp_socket(iface)
    expect = {"firmware_sha256": hashlib.sha256((work / "firmware/undionly.kpxe").read_bytes()).hexdigest(),
              "script": (work / "expected-script").read_bytes(), "config": (work / "expected-config").read_bytes(),
              "kernel": (work / "data/assets/vmlinuz").read_bytes(),
              "initrd": (work / "data/assets/initrd.img").read_bytes()}
    rng = random.Random(count)
    begin = time.monotonic() + 0.2
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # a machine opens its own connections
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [machine(i, begin + rng.uniform(0, window), dhcp, transport, session, peer, expect,
                         random.Random(i), source) for i in range(first, first + count)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
    transport.close()
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    runs = [r for r in results if isinstance(r, dict)]
    stages = {}
    for stage in STAGES:
        values = sorted(r[stage] for r in runs)
        if values:
            stages[stage] = {"p50_ms": round(1000 * values[len(values) // 2], 2),
                             "p99_ms": round(1000 * values[min(len(values) - 1, int(0.99 * len(values)))], 2)}
    totals = sorted(sum(r[stage] for stage in STAGES) for r in runs)  # a boot's own time, pauses left out
    first_start = min((r["start"] for r in runs), default=0.0)
    last = max((r["end"] for r in runs), default=0.0)
    return {"machines": count, "completed": len(runs), "failed": len(failures), "failures": failures[:5],
            "seconds_first_discover_to_last_report": round(last - first_start, 2), "stages": stages,
            "boot_ms_p50": round(1000 * totals[len(totals) // 2], 2) if totals else None}


# --- DHCP only: a storm of clients racing for addresses, and clients asking again for theirs --------------

async def run_storm(macs: list[bytes], window: float, iface: str, tries: int, progress_every: int,
                    concurrency: int = 0) -> dict:
    """Every MAC does DORA once, arriving at a random moment within `window` s (after 0.2 s); with
    `concurrency`, at most that many at once (a closed loop: the servers' full rate). Returned:
    for each MAC the ACK it got (address, the server that ACKed, seconds since the start), or why not;
    `restarted` lists MACs whose REQUEST went unanswered and which started over (their server died).
    Progress on stderr: `acked N` every `progress_every` ACKs."""
    dhcp, transport = await dhcp_socket(iface)
    rng = random.Random(len(macs))
    begin = time.monotonic() + 0.2
    printed = 0

    slots = asyncio.Semaphore(concurrency or len(macs) or 1)

    async def one(index: int, mac: bytes, start_at: float) -> tuple[str, list]:
        nonlocal printed
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        try:
            async with slots:
                ack = await dhcp.dora(transport, mac, 0x97000000 + index, ipxe=False, tries=tries)
        except NoOffer:
            return mac.hex(":"), ["no-offer"]
        except RuntimeError as exc:
            return mac.hex(":"), ["failed", str(exc)]
        if dhcp.acked >= printed + progress_every:
            printed = dhcp.acked - dhcp.acked % progress_every
            print(f"acked {printed}", file=sys.stderr, flush=True)
        return mac.hex(":"), [socket.inet_ntoa(ack[16:20]), socket.inet_ntoa(dhcp_option(ack, 54)),
                              round(time.monotonic() - begin, 3)]

    started = time.monotonic()
    results = await asyncio.gather(*(one(i, mac, begin + rng.uniform(0, window)) for i, mac in enumerate(macs)))
    transport.close()
    outcomes = dict(results)
    return {"clients": len(macs), "seconds": round(time.monotonic() - started, 2),
            "acked": sum(1 for v in outcomes.values() if v[0] not in ("no-offer", "failed")),
            "no_offer": sum(1 for v in outcomes.values() if v[0] == "no-offer"),
            "failed": sum(1 for v in outcomes.values() if v[0] == "failed"),
            "restarted": sorted(mac.hex(":") for mac in dhcp.restarts), "outcomes": outcomes}


async def run_reboot(leases: list[tuple[bytes, bytes]], iface: str, tries: int) -> dict:
    """INIT-REBOOT for each (MAC, address), all at once: MAC -> [ACK|NAK|none, address, server]."""
    dhcp, transport = await dhcp_socket(iface)

    async def one(index: int, mac: bytes, address: bytes) -> tuple[str, list]:
        answer = await dhcp.init_reboot(transport, mac, 0x98000000 + index, address, tries)
        if answer is None:
            return mac.hex(":"), ["none", "", ""]
        kind = "ACK" if dhcp_option(answer, 53)[:1] == b"\x05" else "NAK"
        return mac.hex(":"), [kind, socket.inet_ntoa(answer[16:20]), socket.inet_ntoa(dhcp_option(answer, 54) or bytes(4))]

    results = await asyncio.gather(*(one(i, mac, address) for i, (mac, address) in enumerate(leases)))
    transport.close()
    return {"answers": dict(results)}


def duplicates(outcomes: dict[str, list]) -> dict[str, list[str]]:
    """Addresses ACKed to more than one MAC (what the clients saw): address -> MACs."""
    holders: dict[str, list[str]] = {}
    for mac, outcome in outcomes.items():
        if outcome[0] not in ("no-offer", "failed"):
            holders.setdefault(outcome[0], []).append(mac)
    return {address: macs for address, macs in holders.items() if len(macs) > 1}


# --- the driver ------------------------------------------------------------------------------------------

def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def server_pids(procs: list[subprocess.Popen]) -> list[int]:
    """The servers' own PIDs (under `ip netns exec` and taskset, which exec into them)."""
    pids = []
    for proc in procs:
        pids.append(proc.pid)
        try:
            pids += [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        except OSError:
            pass
    return pids


def http_get(lab: NetLab, path: str) -> bytes:
    return lab.run(lab.server_ns, ["curl", "-sf", "--retry", "30", "--retry-connrefused", "--retry-delay", "0",
                                   f"http://{SERVER}:{PORT}{path}"], text=False).stdout


def run_size(lab: NetLab, client, work: Path, argvs: dict[str, list[str]], peer: str, count: int) -> dict:
    reset_state(work)
    server_if = f"{lab.name[:8]}s0"
    names = ["bootd"] if peer == "bootd" else ["dnsmasq", "nginx"]
    procs = []
    for name in names:
        argv = argvs[name] + ([f"--interface={server_if}"] if name == "dnsmasq" else [])
        with open(work / f"{name}.log", "wb") as log:
            procs.append(lab.start(lab.server_ns, ["taskset", "-c", SERVER_CPU, *argv], stdout=log,
                                   stderr=subprocess.STDOUT, cwd=ROOT))
    try:
        http_get(lab, "/bootd.ipxe" if peer == "bootd" else "/report/x")  # up
        time.sleep(0.5)
        pids = server_pids(procs)
        c0 = sum(cpu_seconds(p.pid) for p in procs)
        window = max(0.5, count / 100)
        result = lab.run(client.ns, ["taskset", "-c", LOAD_CPU, sys.executable, "-m", "bench.fleet", "--client",
                                     "--count", str(count), "--window", str(window), "--iface", client.ifname,
                                     "--peer", peer, "--work", str(work), "--source", CLIENT], cwd=ROOT,
                       timeout=count / 10 + 600)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        out = json.loads(result.stdout)
        c1 = sum(cpu_seconds(p.pid) for p in procs)
        out["server_cpu_s_per_machine"] = round((c1 - c0) / count, 5)
        out["server_peak_rss_mb"] = peak_rss_mb(pids)
        return out
    finally:
        for proc in procs:
            _end_group(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/bootd-bench/fleet"))
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--iface", default="", help=argparse.SUPPRESS)
    parser.add_argument("--peer", default="bootd", help=argparse.SUPPRESS)
    # the simulator alone, from a namespace on a segment (bench/replicas.py, tests/e2e/test_replicas.py)
    client = parser.add_argument_group("the simulator alone (run inside a namespace on a segment)")
    client.add_argument("--storm", action="store_true", help="DHCP only: --count clients (or --macs) do DORA "
                        "once each within --window s; prints JSON: every MAC's ACKed address and server")
    client.add_argument("--reboot", type=Path, metavar="JSON", help="DHCP only: INIT-REBOOT for each "
                        '{"MAC": "address"} of the file; prints JSON: each answer')
    client.add_argument("--source", default=CLIENT, help="this namespace's own address (TFTP and HTTP)")
    client.add_argument("--first", type=int, default=0, help="the first machine's index (its MAC: 02:95:<index>)")
    client.add_argument("--macs", type=Path, metavar="JSON", help="a list of MACs instead of --count/--first")
    client.add_argument("--tries", type=int, default=4, help="transmissions of each DHCP message before giving up")
    client.add_argument("--progress-every", type=int, default=500)
    client.add_argument("--concurrency", type=int, default=0, help="--storm: at most this many clients at once")
    args = parser.parse_args(argv)
    work = args.work
    if args.client:
        json.dump(asyncio.run(run_client(args.count, args.window, args.iface, args.peer, work, args.source,
                                         args.first)), sys.stdout)
        return 0
    if args.storm:
        macs = ([bytes.fromhex(m.replace(":", "")) for m in json.loads(args.macs.read_text())] if args.macs
                else [client_mac(i) for i in range(args.first, args.first + args.count)])
        out = asyncio.run(run_storm(macs, args.window, args.iface, args.tries, args.progress_every,
                                   args.concurrency))
        out["duplicates"] = duplicates(out["outcomes"])
        json.dump(out, sys.stdout)
        return 0
    if args.reboot:
        leases = [(bytes.fromhex(mac.replace(":", "")), socket.inet_aton(address))
                  for mac, address in json.loads(args.reboot.read_text()).items()]
        json.dump(asyncio.run(run_reboot(leases, args.iface, args.tries)), sys.stdout)
        return 0
    sizes = [20] if args.smoke else [int(s) for s in args.sizes.split(",")]
    work.mkdir(parents=True, exist_ok=True)
    argvs = prepare(work)
    results: dict[str, dict[str, dict]] = {}
    with NetLab(f"bf{os.getpid() % 100000}", server_address=f"{SERVER}/16") as lab:
        client = lab.add_client(f"{CLIENT}/16")
        # every machine's connections come from one address: ports enough, and TIME_WAIT ones reused (this
        # namespace's own settings)
        for setting in ("net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1"):
            lab.run(client.ns, ["sysctl", "-qw", setting])
        # bootd renders the script and the boot configuration; nginx serves exactly those bytes
        boot = lab.start(lab.server_ns, argvs["bootd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd=ROOT)
        try:
            script = http_get(lab, "/bootd.ipxe")
            config = http_get(lab, "/ipxe?mac=MACHINE")
            ignition = http_get(lab, "/ignition?mac=02-95-00-00-00-00")
        finally:
            _end_group(boot)
        www = work / "www"
        (www / "bootd.ipxe").write_bytes(script)
        (www / "ipxe.txt").write_bytes(config)
        (www / "ignition.json").write_bytes(ignition)
        (work / "expected-script").write_bytes(script)
        (work / "expected-config").write_bytes(config)
        for count in sizes:
            for peer in ("dnsmasq+nginx", "bootd") if count % 2 == 0 else ("bootd", "dnsmasq+nginx"):
                busy = 0.0 if args.smoke else wait_quiet()
                out = run_size(lab, client, work, argvs, "bootd" if peer == "bootd" else "nginx", count)
                out["busy_before"] = round(busy, 2)
                results.setdefault(str(count), {})[peer] = out
                print(f"N={count} {peer}: {out['completed']}/{count} booted in "
                      f"{out['seconds_first_discover_to_last_report']} s, server CPU "
                      f"{1000 * out['server_cpu_s_per_machine']:.2f} ms/machine, peak RSS {out['server_peak_rss_mb']} MB"
                      + (f", failures: {out['failures']}" if out["failed"] else ""), flush=True)
                print("   " + ", ".join(f"{stage} {v['p50_ms']:.0f}/{v['p99_ms']:.0f}"
                                        for stage, v in out["stages"].items()) + " (p50/p99 ms)", flush=True)
                if out["completed"] != count:
                    print(f"{peer}: only {out['completed']} of {count} machines completed", file=sys.stderr)
                    if args.smoke:
                        return 1
    ours = {n: r["bootd"]["server_cpu_s_per_machine"] for n, r in results.items()}
    if len(ours) > 1:
        smallest, largest = str(min(map(int, ours))), str(max(map(int, ours)))
        print(f"bootd CPU per machine at N={largest} / at N={smallest}: {ours[largest] / ours[smallest]:.2f}x")
    for n, r in results.items():
        print(f"N={n}: bootd CPU per machine / dnsmasq+nginx's: "
              f"{r['bootd']['server_cpu_s_per_machine'] / max(r['dnsmasq+nginx']['server_cpu_s_per_machine'], 1e-9):.2f}x")
    every = all(r["completed"] == r["machines"] for by_peer in results.values() for r in by_peer.values())
    print(f"every machine completed: {'yes' if every else 'no'}")
    if not args.smoke:  # written whatever happened: an incomplete run is a result too
        path = write_results("fleet", {"sizes": sizes, "results": results})
        print(f"results: {path}")
    return 0 if every else 1


if __name__ == "__main__":
    raise SystemExit(main())
