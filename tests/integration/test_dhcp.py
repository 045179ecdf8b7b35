"""DHCP through real sockets in namespaces: scapy-crafted PXE packets (a codec that is not bootd's), busybox
udhcpc as a real client, curl fetching the HTTP-boot URL, and a mutation storm. Nothing leaves the lab."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP, DHCPRevOptions

from tests.bootd_process import BootdProcess
from tests.integration.test_http import write

pytestmark = pytest.mark.netns
ROOT = Path(__file__).parents[2]
FIRMWARE = {"undionly.kpxe": os.urandom(70_000), "ipxe.efi": os.urandom(200_000)}
GUID = b"\x00" + bytes(range(16))


def pxe_packet(mac: str, kind: str, arch: int, *extra, xid: int = 0x2468, vendor: bytes | None = None,
               ciaddr: str = "0.0.0.0", flags: int = 0x8000) -> bytes:
    vendor = vendor or f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
    options = [("message-type", kind), ("vendor_class_id", vendor), (93, arch.to_bytes(2, "big")),
               (94, b"\x01\x02\x01"), (97, GUID), ("param_req_list", [1, 3, 6, 43, 60, 66, 67]), *extra, "end"]
    return bytes(BOOTP(op=1, chaddr=bytes.fromhex(mac.replace(":", "")), xid=xid, flags=flags, ciaddr=ciaddr)
                 / DHCP(options=options))


def decode(answer: dict) -> tuple[BOOTP, dict]:
    """The reply as scapy reads it, options keyed by scapy's name and by number."""
    reply = BOOTP(bytes.fromhex(answer["data"]))
    options = {}
    for option in reply[DHCP].options:
        if isinstance(option, tuple):
            name, value = option[0], option[1]
            options[name] = value
            if name in DHCPRevOptions:
                options[DHCPRevOptions[name][0]] = value
    return reply, options


def probe(lab, ns: str, *payloads: bytes, to: str = "255.255.255.255:67", bind: str = "0.0.0.0:68",
          expect: int = 1, wait: float = 3.0, iface: str | None = None) -> list[dict]:
    argv = [sys.executable, "-m", "tests.udp_probe", "--bind", bind, "--to", to, "--wait", str(wait),
            "--expect", str(expect), *([f"--iface={iface}"] if iface else []), *(p.hex() for p in payloads)]
    result = lab.run(ns, argv, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start_bootd(lab, tmp_path: Path, dhcp: str, machines: str = "") -> BootdProcess:
    data = tmp_path / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/k"}})
    write(data / "groups/default.json", {"id": "default", "profile": "p"})
    for name, content in FIRMWARE.items():
        write(tmp_path / "state/firmware" / name, content)
    (tmp_path / "bootd.yaml").write_text(
        f"state_dir: {tmp_path / 'state'}\ndomain: lab.test\n"
        f"http:\n  address: {lab.server_ip}\n  port: 8080\n  data_dir: {data}\n"
        f"dhcp:\n{dhcp}" + (f"machines:\n{machines}" if machines else ""))
    return BootdProcess(tmp_path / "bootd.yaml", lab=lab, ns=lab.server_ns).start()


@pytest.fixture
def proxy_lab(netlab, tmp_path):
    client = netlab.add_client("192.0.2.10/24")
    bootd = start_bootd(netlab, tmp_path, "  mode: proxy\n")
    yield netlab, client, bootd
    assert bootd.stop() == 0


def test_proxy_offers_per_arch_and_4011_ack(proxy_lab):
    lab, client, bootd = proxy_lab
    mac = "52:54:00:00:10:01"
    answers = {}
    for arch in (0, 7, 16):
        vendor = b"HTTPClient:Arch:00016" if arch == 16 else None
        [answer] = probe(lab, client.ns, pxe_packet(mac, "discover", arch, vendor=vendor), iface=client.ifname)
        answers[arch] = decode(answer)
    bios, bios_options = answers[0]
    assert bios.op == 2 and bios.yiaddr == "0.0.0.0" and bios.siaddr == "192.0.2.1" and bios.flags == 0x8000
    assert bios_options["message-type"] == 2 and bios_options["server_id"] == "192.0.2.1"
    assert bios_options["vendor_class_id"] == b"PXEClient" and bios_options[97] == GUID
    assert bios.file.rstrip(b"\0") == b"undionly.kpxe" and "vendor_specific" in bios_options
    uefi, uefi_options = answers[7]
    assert uefi.file.rstrip(b"\0") == b"ipxe.efi" and "vendor_specific" not in uefi_options  # BINL
    http, http_options = answers[16]
    url = http.file.rstrip(b"\0").decode()
    assert url == "http://192.0.2.1:8080/firmware/ipxe.efi" and http_options["vendor_class_id"] == b"HTTPClient"
    fetched = lab.run(client.ns, ["curl", "-sf", url], text=False)
    assert hashlib.sha256(fetched.stdout).digest() == hashlib.sha256(FIRMWARE["ipxe.efi"]).digest()
    # EDK2's BINL step: REQUEST from the client's address, port 4011, to bootd's 4011; ACK comes back there.
    [answer] = probe(lab, client.ns, pxe_packet(mac, "request", 7, ciaddr="192.0.2.10", flags=0),
                     to="192.0.2.1:4011", bind="192.0.2.10:4011")
    ack, ack_options = decode(answer)
    assert answer["from"] == "192.0.2.1:4011"
    assert ack_options["message-type"] == 5 and ack.file.rstrip(b"\0") == b"ipxe.efi"
    # iPXE: the script URL, on 67 and on 4011 whatever boot item it asks for
    [answer] = probe(lab, client.ns, pxe_packet(mac, "discover", 0, (77, b"iPXE")), iface=client.ifname)
    assert decode(answer)[0].file.rstrip(b"\0") == b"http://192.0.2.1:8080/bootd.ipxe"
    [answer] = probe(lab, client.ns, pxe_packet(mac, "request", 0, (77, b"iPXE"), (43, bytes([71, 4, 0x80, 0, 0, 0, 255])),
                                                 ciaddr="192.0.2.10", xid=0), to="192.0.2.1:4011", bind="192.0.2.10:68")
    assert decode(answer)[0].file.rstrip(b"\0") == b"http://192.0.2.1:8080/bootd.ipxe"
    view = json.loads(lab.run(client.ns, ["curl", "-sf", f"http://192.0.2.1:8080/api/v1/machines/{mac}"]).stdout)
    assert [e["stage"] for e in view["events"]].count("dhcp") == 6
    # the binary fetched over HTTP is the firmware step of the same boot (iPXE's DHCP after it starts none)
    assert [s["stage"] for s in view["stages"]] == ["dhcp", "firmware"] and view["boots"] == 1
    assert "ipxe-script" in view["stages"][0]["detail"]


def test_proxy_ignores_plain_dhcp_and_requests_on_67(proxy_lab):
    lab, client, bootd = proxy_lab
    plain = bytes(BOOTP(op=1, chaddr=bytes.fromhex("525400001002"), xid=1) / DHCP(options=[("message-type", "discover"), "end"]))
    request_67 = pxe_packet("52:54:00:00:10:02", "request", 0)
    assert probe(lab, client.ns, plain, request_67, expect=0, wait=1.0, iface=client.ifname) == []
    stats = server_stats(lab)["dhcp"]
    assert stats["dropped"]["not-pxe"] == 1 and stats["dropped"]["not-for-proxy"] == 1


def test_mutated_packets_never_stop_good_clients(proxy_lab, tmp_path):
    lab, client, bootd = proxy_lab
    rng = random.Random(4)
    seeds = [pxe_packet("52:54:00:00:20:01", "discover", arch) for arch in (0, 7, 9, 16)] + [
        pxe_packet("52:54:00:00:20:01", "request", 7, (77, b"iPXE"), (43, bytes([71, 4, 0, 0, 0, 0, 255])))]
    mutants = []
    for i in range(10_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            if not data:
                data = bytearray(b"\x01")
            action = rng.random()
            if action < 0.5:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif action < 0.7:
                del data[rng.randrange(len(data)):]
            elif action < 0.85 and len(data) > 240:  # an option length that runs past the end
                data[rng.randrange(240, len(data))] = 255
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        mutants.append(bytes(data) or b"\x01")
    rss_before = _rss_kib(bootd)
    for port, batch in ((67, mutants[:5000]), (4011, mutants[5000:])):
        chunk = tmp_path / f"mutants-{port}.txt"
        chunk.write_text("\n".join(m.hex() for m in batch))
        result = lab.run(client.ns, [sys.executable, "-m", "tests.udp_probe", "--bind", "192.0.2.10:0",
                                     "--to", f"192.0.2.1:{port}", "--wait", "0.5", "--pause", "0.0001",
                                     "--file", str(chunk)],
                         cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
    [answer] = probe(lab, client.ns, pxe_packet("52:54:00:00:20:99", "discover", 0), iface=client.ifname)
    assert decode(answer)[0].file.rstrip(b"\0") == b"undionly.kpxe"
    stats = server_stats(lab)
    assert stats["dhcp"]["internal_errors"] == 0, stats
    assert stats["dhcp"]["received"] >= 10_000, stats  # paced, so the socket buffer never overflows
    assert _rss_kib(bootd) - rss_before < 30_000, "memory grew by more than 30 MB"


def _rss_kib(bootd: BootdProcess) -> int:
    for line in Path(f"/proc/{bootd.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- authoritative mode ----------------------------------------------------------------------------------

AUTHORITATIVE = """\
  mode: authoritative
  subnet: 192.0.2.0/24
  range: [192.0.2.100, 192.0.2.102]
  router: 192.0.2.1
  dns_servers: [192.0.2.1]
  lease: 1h
  options: {42: [192.0.2.1], 26: 1500}
"""
RESERVED_MAC = "52:54:00:aa:00:21"


def udhcpc(lab, client, *args: str) -> dict[str, str]:
    """Run busybox udhcpc once in the client's namespace; return what its script was told."""
    script = Path("/tmp") / f"{lab.name}-udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && env | grep -E "^(ip|dns|domain|search|router|subnet|hostname|lease|mtu|ntpsrv)=" '
                      '> "/tmp/$interface.lease"\nexit 0\n')
    script.chmod(0o755)
    lease_file = Path(f"/tmp/{client.ifname}.lease")
    lease_file.unlink(missing_ok=True)
    result = lab.run(client.ns, ["busybox", "udhcpc", "-f", "-q", "-n", "-t", "4", "-T", "1", "-i", client.ifname,
                                 "-s", str(script), *args], timeout=60)
    if not lease_file.exists():
        return {"_failed": result.stderr}
    return dict(line.split("=", 1) for line in lease_file.read_text().splitlines())


def test_authoritative_real_client_gets_reservation_and_lease_survives_restart(bridged_netlab, tmp_path):
    netlab = bridged_netlab
    reserved = netlab.add_client(mac=RESERVED_MAC)
    other = netlab.add_client(mac="52:54:00:bb:00:01")
    machines = f'  - {{name: node1, mac: "{RESERVED_MAC}", ip: 192.0.2.21, role: controller}}\n'
    bootd = start_bootd(netlab, tmp_path, AUTHORITATIVE, machines)
    try:
        lease = udhcpc(netlab, reserved)
        assert lease.get("ip") == "192.0.2.21", lease
        assert lease["dns"].strip() == "192.0.2.1" and lease["domain"] == "lab.test" and lease["hostname"] == "node1"
        assert lease["search"].strip() == "lab.test"
        assert lease["router"].strip() == "192.0.2.1" and lease["subnet"] == "255.255.255.0"
        assert lease["lease"] == "3600" and lease["mtu"] == "1500" and lease["ntpsrv"].strip() == "192.0.2.1"
        first = udhcpc(netlab, other)
        assert first.get("ip") == "192.0.2.100", first
    finally:
        assert bootd.stop() == 0
    saved = json.loads((tmp_path / "state/leases.json").read_text())
    assert {l["ip"] for l in saved["leases"]} == {"192.0.2.21", "192.0.2.100"}
    bootd = BootdProcess(tmp_path / "bootd.yaml", lab=netlab, ns=netlab.server_ns).start()
    try:
        assert udhcpc(netlab, other, "-r", "192.0.2.102").get("ip") == "192.0.2.100"  # its lease, not what it asked
    finally:
        assert bootd.stop() == 0


def test_more_clients_than_the_pool_never_share_an_address(bridged_netlab, tmp_path):
    netlab = bridged_netlab
    clients = [netlab.add_client(mac=f"52:54:00:cc:00:{i:02x}") for i in range(5)]
    bootd = start_bootd(netlab, tmp_path, AUTHORITATIVE)
    try:
        procs = []
        for client in clients:
            procs.append(netlab.start(client.ns, ["busybox", "udhcpc", "-f", "-q", "-n", "-t", "3", "-T", "1",
                                                  "-i", client.ifname, "-s", "/bin/true"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for proc in procs:
            proc.wait(60)
        stats = server_stats(netlab)
        granted = on_disk(tmp_path / "state")  # a set: one address per lease, bound to one MAC each
        assert len(granted) == 3, granted
        assert stats["dhcp"]["dropped"].get("pool-exhausted", 0) >= 2
    finally:
        assert bootd.stop() == 0


def on_disk(state: Path) -> set[str]:
    """The leases bootd has on disk (its snapshot and the journal since), read as bootd's next start reads them."""
    from appliance.dhcp.leases import LeaseTable
    return {str(lease.ip) for lease in LeaseTable.load(state / "leases.json").leases(0)}


def server_stats(lab) -> dict:
    return json.loads(lab.run(lab.server_ns, ["curl", "-sf", "http://192.0.2.1:8080/api/v1/stats"]).stdout)


def test_decline_moves_the_client_to_another_address(bridged_netlab, tmp_path):
    netlab = bridged_netlab
    squatter = netlab.add_client("192.0.2.100/24")  # holds the first pool address without a lease
    client = netlab.add_client(mac="52:54:00:dd:00:01")
    bootd = start_bootd(netlab, tmp_path, AUTHORITATIVE)
    try:
        lease = udhcpc(netlab, client, "-a")  # ARP-checks the offer, finds the squatter, DECLINEs
        assert lease.get("ip") == "192.0.2.101", lease
        view = json.loads(netlab.run(netlab.server_ns, ["curl", "-sf",
                                                         f"http://192.0.2.1:8080/api/v1/machines/{client.mac}"]).stdout)
        assert any("declined 192.0.2.100" in e["detail"] for e in view["events"]), view
        assert squatter.address == "192.0.2.100"
    finally:
        assert bootd.stop() == 0


def test_a_decline_from_another_mac_does_not_take_a_clients_lease(bridged_netlab, tmp_path):
    netlab = bridged_netlab
    holder = netlab.add_client(mac="52:54:00:dd:00:02")
    stranger = netlab.add_client(mac="52:54:00:dd:00:03")
    bootd = start_bootd(netlab, tmp_path, AUTHORITATIVE)
    try:
        assert udhcpc(netlab, holder).get("ip") == "192.0.2.100"
        decline = pxe_packet(stranger.mac, "decline", 0, ("requested_addr", "192.0.2.100"),
                             ("server_id", "192.0.2.1"))
        assert probe(netlab, stranger.ns, decline, expect=0, wait=1.0, iface=stranger.ifname) == []  # never answered
        assert udhcpc(netlab, holder, "-r", "192.0.2.100").get("ip") == "192.0.2.100"  # renewed, not NAKed
        assert server_stats(netlab)["dhcp"]["dropped"].get("decline-not-holder") == 1
    finally:
        assert bootd.stop() == 0


def test_a_full_disk_fails_lease_writes_loudly_and_serving_goes_on(bridged_netlab, tmp_path):
    """The state dir on an 8 MiB tmpfs, filled up before the first lease: the client still gets its lease, the
    log says the lease file cannot be written, nothing partial is left; once there is room, the next change
    writes everything (the lease that could not be written too)."""
    netlab = bridged_netlab
    first = netlab.add_client(mac="52:54:00:ee:10:01")
    second = netlab.add_client(mac="52:54:00:ee:10:02")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "bootd-test-full", str(state)], check=True)
    try:
        bootd = start_bootd(netlab, tmp_path, AUTHORITATIVE)
        try:
            filler = state / "filler"
            with open(filler, "wb", buffering=0) as f:
                for chunk in (b"\0" * 4096, b"\0"):  # pages, then whatever a page's tail still takes
                    try:
                        while True:
                            f.write(chunk)
                    except OSError:
                        pass  # ENOSPC: the disk is full
            assert udhcpc(netlab, first).get("ip") == "192.0.2.100"  # still served
            bootd.wait_for_log(lambda l: "cannot write" in l.get("message", "") and "leases" in l.get("message", ""),
                               timeout=10)
            assert not list(state.glob("*lease*")) and not list(state.glob(".*lease*"))  # nothing partial
            assert server_stats(netlab)["dhcp"]["lease_write_failures"] >= 1
            filler.unlink()
            assert udhcpc(netlab, second).get("ip") == "192.0.2.101"  # this write takes the first lease along
            assert on_disk(state) == {"192.0.2.100", "192.0.2.101"}
        finally:
            assert bootd.stop() == 0
    finally:
        subprocess.run(["umount", str(state)], check=True)


def test_kill_9_during_lease_writes_never_leaves_a_partial_lease_file(bridged_netlab, tmp_path):
    """bootd is killed (SIGKILL) eight times while a client binds one address after another; after every
    kill the lease file is whole JSON, and the next start removes the temp file a cut-short write left."""
    netlab = bridged_netlab
    client = netlab.add_client()
    dhcp = AUTHORITATIVE.replace("range: [192.0.2.100, 192.0.2.102]", "range: [192.0.2.100, 192.0.2.250]")
    requests = [pxe_packet(f"02:00:00:00:09:{i:02x}", "request", 0, ("requested_addr", f"192.0.2.{100 + i}"),
                           ("server_id", "192.0.2.1")).hex() for i in range(150)]
    payloads = tmp_path / "requests.hex"
    payloads.write_text("\n".join(requests))
    bootd = start_bootd(netlab, tmp_path, dhcp)
    leases = tmp_path / "state/leases.json"
    for _ in range(8):
        sender = netlab.start(client.ns, [sys.executable, "-m", "tests.udp_probe", "--iface", client.ifname,
                                          "--bind", "0.0.0.0:68", "--to", "255.255.255.255:67", "--wait", "0",
                                          "--pause", "0.002", "--file", str(payloads)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bootd.wait_for_log(lambda l: "ACK 192.0.2." in l.get("message", ""), timeout=30)
        bootd.kill()  # mid-stream: wherever the writer happens to be
        sender.wait(60)
        if leases.exists():  # the snapshot, when there is one, is whole, whatever the moment of the kill
            saved = json.loads(leases.read_text())
            assert saved["version"] == 1 and all(l["ip"].startswith("192.0.2.") for l in saved["leases"])
        journal = leases.with_suffix(".journal")  # every line of the journal is whole
        assert all(json.loads(line) for line in journal.read_text().splitlines())
        assert on_disk(leases.parent)
        bootd = BootdProcess(tmp_path / "bootd.yaml", lab=netlab, ns=netlab.server_ns).start()
        assert not list(leases.parent.glob(".leases.json.*"))  # the start swept what a cut-short write left
    assert bootd.stop() == 0


def test_authoritative_mode_advertises_no_ipv6_so_ipxe_does_not_wait(bridged_netlab, tmp_path):
    client = bridged_netlab.add_client(mac="52:54:00:ee:00:01")
    bootd = start_bootd(bridged_netlab, tmp_path, AUTHORITATIVE)
    try:
        assert udhcpc(bridged_netlab, client).get("ip") == "192.0.2.100"  # a client seen on the segment
        result = bridged_netlab.run(client.ns, [sys.executable, "-m", "tests.ra_listen", "--iface", client.ifname],
                                    cwd=ROOT, timeout=30)
        advertisement = json.loads(result.stdout)
        assert advertisement is not None, result.stderr + bootd.log_text()
        assert advertisement["source"].startswith("fe80:") and advertisement["hoplimit"] == 255
        assert advertisement["router_lifetime"] == 0 and advertisement["flags"] == 0  # not a router, no DHCPv6
        assert advertisement["options"] == ""  # no prefix, nothing that could take traffic
    finally:
        assert bootd.stop() == 0


def test_probe_lists_the_dhcp_server_and_bootd_proxy(bridged_netlab, tmp_path):
    """`bootd probe` on a segment with a plain DHCP server (dnsmasq, no PXE) and bootd in proxy mode."""
    lab = bridged_netlab
    client = lab.add_client()
    bootd = start_bootd(lab, tmp_path, "  mode: proxy\n")
    lab.run(lab.server_ns, ["ip", "addr", "add", "192.0.2.2/24", "dev", "br0"])
    lab.start(lab.server_ns, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                              "--interface=br0", "--listen-address=192.0.2.2", "--bind-interfaces",
                              "--dhcp-range=192.0.2.50,192.0.2.60,1h", "--no-ping", "--dhcp-leasefile=/dev/null",
                              "--log-facility=-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = lab.run(client.ns, [sys.executable, "-m", "appliance", "probe", "-i", client.ifname,
                                     "--timeout", "3"], cwd=ROOT, timeout=60)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        # dnsmasq picks the address by a hash of the (random) MAC: any address of its range is right
        offers = [ipaddress.ip_address(l.split("offers ", 1)[1].split()[0]) for l in lines
                  if l.startswith("dhcp ") and "offers " in l]
        assert len(offers) == 1, result.stdout
        assert ipaddress.ip_address("192.0.2.50") <= offers[0] <= ipaddress.ip_address("192.0.2.60"), result.stdout
        assert any(l.startswith("proxy-dhcp") and "server 192.0.2.1" in l and "undionly.kpxe" in l for l in lines), \
            result.stdout
        assert lines[-1].startswith("2 answers")
    finally:
        assert bootd.stop() == 0


def test_each_listen_interface_answers_with_its_own_address(netlab, tmp_path):
    first = netlab.add_client()
    second = netlab.add_client(server_address="198.51.100.1/24")
    ignored = netlab.add_client(server_address="203.0.113.1/24")
    bootd = start_bootd(netlab, tmp_path, "  mode: proxy\n")
    bootd.stop()
    config = (tmp_path / "bootd.yaml").read_text().replace(
        "http:", f"listen:\n  interfaces: [{first.server_ifname}, {second.server_ifname}]\nhttp:", 1).replace(
        "address: 192.0.2.1", "address: 0.0.0.0")
    (tmp_path / "bootd.yaml").write_text(config)
    bootd = BootdProcess(tmp_path / "bootd.yaml", lab=netlab, ns=netlab.server_ns).start()
    try:
        for client, server in ((first, "192.0.2.1"), (second, "198.51.100.1")):
            [answer] = probe(netlab, client.ns, pxe_packet("52:54:00:00:30:01", "discover", 0), iface=client.ifname)
            offer, options = decode(answer)
            assert offer.siaddr == server and options["server_id"] == server
        assert probe(netlab, ignored.ns, pxe_packet("52:54:00:00:30:02", "discover", 0), iface=ignored.ifname,
                     expect=0, wait=1.0) == []
        assert server_stats_at(netlab, "192.0.2.1")["dhcp"]["dropped"]["other-interface"] == 1
    finally:
        assert bootd.stop() == 0


def server_stats_at(lab, address: str) -> dict:
    return json.loads(lab.run(lab.server_ns, ["curl", "-sf", f"http://{address}:8080/api/v1/stats"]).stdout)
