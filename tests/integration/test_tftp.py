"""TFTP through real clients on loopback: tftp-hpa, atftp (blksize, tsize, windowsize), curl, tftpy and
bench's windowed client; a hostile path corpus; 10% loss both ways; an RRQ flood past the bounds."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tftpy

from bench.udp_relay import UdpRelay
from tests.bootd_process import BootdProcess

ROOT = Path(__file__).parents[2]
FILES = {
    "undionly.kpxe": os.urandom(74_213),
    "ipxe.efi": os.urandom(850_528),
}
ROOT_FILES = {
    "boot/grub/grub.cfg": b"set timeout=1\n" * 100,
    "pxelinux.cfg/default": b"DEFAULT linux\n",
    "images/kernel.v1.2.3": os.urandom(1_000_000),
    "a.b.c": b"dots",
    "exact512": os.urandom(512),
    "empty": b"",
    "deep/er/and/deeper/file": b"deep",
    "with space.txt": b"space",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_config(tmp: Path, extra: str = "") -> Path:
    for name, content in FILES.items():
        path = tmp / "state/firmware" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    root = tmp / "tftproot"
    for name, content in ROOT_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "link-inside").symlink_to(root / "a.b.c")
    (root / "link-outside").symlink_to(tmp / "secret")
    (root / "sub").mkdir()
    (tmp / "secret").write_bytes(b"secret")
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "bootd.yaml").write_text(
        f"state_dir: {tmp / 'state'}\nhttp:\n  enabled: false\n  data_dir: {tmp / 'data'}\n"
        f"tftp:\n  address: 127.0.0.1\n  port: 0\n  root: {root}\n{extra}")
    return tmp / "bootd.yaml"


@pytest.fixture(scope="module")
def tftp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tftp")
    bootd = BootdProcess(make_config(tmp)).start()
    bootd.port = int(next(a for a in bootd.addresses if a.startswith("tftp://")).rsplit(":", 1)[1])
    yield bootd
    assert bootd.stop() == 0


def run(argv: list[str], cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, timeout=timeout)


def client(tftp, *args: str) -> dict:
    result = run([sys.executable, "-m", "bench.tftp_client", "--server", f"127.0.0.1:{tftp.port}", *args], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- third-party clients get byte-identical files ---------------------------------------------------------

@pytest.mark.parametrize("name", ["undionly.kpxe", "ipxe.efi"])
def test_tftp_hpa(tftp, tmp_path, name):
    out = tmp_path / name
    result = run(["tftp", "127.0.0.1", str(tftp.port), "-m", "binary", "-c", "get", name, str(out)])
    assert result.returncode == 0, result.stderr
    assert sha(out.read_bytes()) == sha(FILES[name])


@pytest.mark.parametrize("options", [[], ["--option", "blksize 1468", "--option", "tsize 0"],
                                     ["--option", "blksize 1468", "--option", "windowsize 8"]],
                         ids=["plain", "blksize-tsize", "windowsize"])
def test_atftp(tftp, tmp_path, options):
    out = tmp_path / "ipxe.efi"
    result = run(["atftp", "--get", "-r", "ipxe.efi", "-l", str(out), *options, "127.0.0.1", str(tftp.port)])
    assert result.returncode == 0, result.stderr
    assert sha(out.read_bytes()) == sha(FILES["ipxe.efi"])


def test_curl(tftp, tmp_path):
    out = tmp_path / "kernel"
    result = run(["curl", "-sS", "--tftp-blksize", "1468", "-o", str(out),
                  f"tftp://127.0.0.1:{tftp.port}/images/kernel.v1.2.3"])
    assert result.returncode == 0, result.stderr
    assert sha(out.read_bytes()) == sha(ROOT_FILES["images/kernel.v1.2.3"])


def test_tftpy(tftp, tmp_path):
    out = tmp_path / "undionly.kpxe"
    tftpy.TftpClient("127.0.0.1", tftp.port, options={"blksize": 1024}).download("undionly.kpxe", str(out), timeout=2)
    assert sha(out.read_bytes()) == sha(FILES["undionly.kpxe"])


def test_windowed_concurrent_and_events(tftp):
    start = len(tftp.lines)
    result = client(tftp, "--file", "ipxe.efi", "--count", "8", "--blksize", "1468", "--windowsize", "8", "--tsize")
    assert result["completed"] == 8, result
    assert {t["sha256"] for t in result["transfers"]} == {sha(FILES["ipxe.efi"])}
    assert {t["windowsize"] for t in result["transfers"]} == {8}
    line = tftp.wait_for_log(lambda l: l.get("stage") == "tftp" and "sent ipxe.efi" in l.get("message", ""), start=start)
    assert "blksize 1468, windowsize 8" in line["message"]


def test_tsize_probe_then_real_transfer(tftp):
    """OVMF: RRQ with tsize, read the OACK, abort with ERROR 8, ask again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.sendto(b"\x00\x01ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00",
                ("127.0.0.1", tftp.port))
    oack, tid = sock.recvfrom(2048)
    assert oack[:2] == b"\x00\x06" and b"tsize\x00850528\x00" in oack and b"windowsize\x004\x00" in oack
    start = len(tftp.lines)
    sock.sendto(b"\x00\x05\x00\x08User aborted the transfer\x00", tid)
    sock.close()
    line = tftp.wait_for_log(lambda l: "ended by the client after the first answer" in l.get("message", ""), start=start)
    assert line["ok"] is True
    result = client(tftp, "--file", "ipxe.efi", "--blksize", "1468", "--windowsize", "4")
    assert result["completed"] == 1


# --- paths -------------------------------------------------------------------------------------------------

HOSTILE = [
    "../secret", "../../etc/passwd", "/etc/passwd", "/secret", "..", ".", "./..", "sub/../../secret",
    "sub/../..", "a/../../secret", "..\\secret", "sub\\..\\..\\secret", "\\etc\\passwd", "C:\\secret",
    "link-outside", "sub/../link-outside", "//etc/passwd", "/", "////", "..//secret", "./../secret",
    "sub/./../../secret", "a.b.c/..", "deep/../../secret", "deep/er/../../../secret", "deep/er/and/../../../../secret",
    "pxelinux.cfg/../../secret", "boot/../../secret", "..%2fsecret", "%2e%2e/secret", "....//secret",
    "sub/..", "sub/.", "sub/", "images/", "images/..", "/images/kernel.v1.2.3", "\\", "...\\..\\secret",
    "../" * 20 + "etc/passwd", "a" * 300, "sub/" * 60 + "x", "dir\\file", "./a.b.c", "deep/./er", "boot//grub/grub.cfg/..",
    "nonexistent", "images/none", "sub/missing", "../tftproot/a.b.c", "/tftproot/a.b.c", "~root/.ssh/id_rsa",
]
LEGIT = ["boot/grub/grub.cfg", "pxelinux.cfg/default", "images/kernel.v1.2.3", "a.b.c", "exact512", "empty",
         "deep/er/and/deeper/file", "with space.txt", "link-inside", "undionly.kpxe", "ipxe.efi"]


def rrq(port: int, name: str) -> bytes:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        sock.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", ("127.0.0.1", port))
        return sock.recvfrom(70000)[0]
    finally:
        sock.close()


def test_hostile_paths_are_refused_with_an_error(tftp):
    assert len(HOSTILE) >= 50
    for name in HOSTILE:
        reply = rrq(tftp.port, name)
        assert reply[:2] == b"\x00\x05", (name, reply[:40])  # an ERROR, never DATA
        assert int.from_bytes(reply[2:4], "big") in (1, 2, 4), (name, reply)
        assert b"secret" not in reply[4:] or b"access" in reply
    # The reply goes out before its log line is written (lines are formatted off the hot path),
    # so wait for the line rather than look for it at once.
    tftp.wait_for_log(lambda l: "refused" in l.get("message", ""))


def test_legitimate_paths_are_served(tftp, tmp_path):
    everything = {**FILES, **ROOT_FILES, "link-inside": ROOT_FILES["a.b.c"]}
    for name in LEGIT:
        result = client(tftp, "--file", name)
        assert result["completed"] == 1, (name, result)
        assert result["transfers"][0]["sha256"] == sha(everything[name]), name


@pytest.mark.parametrize("packet, code", [
    (b"\x00\x02file\x00octet\x00", 2),  # WRQ
    (b"\x00\x01ipxe.efi\x00mail\x00", 4),  # unknown mode
    (b"\x00\x01ipxe.efi\x00octet\x00blksize\x002\x00", 8),  # absurd option value
    (b"\x00\x09junk\x00octet\x00", 4),  # not a request
    (b"\x00\x01ipxe.efi\x00octet", 4),  # no NUL terminator
])
def test_bad_requests_get_an_error(tftp, packet, code):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.sendto(packet, ("127.0.0.1", tftp.port))
    reply = sock.recvfrom(2048)[0]
    sock.close()
    assert reply[:2] == b"\x00\x05" and int.from_bytes(reply[2:4], "big") == code


# --- loss and floods (servers of their own) ----------------------------------------------------------------

class RelayThread:
    def __init__(self, server_port: int, drop_every: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.relay = UdpRelay(("127.0.0.1", 0), ("127.0.0.1", server_port), drop_every=drop_every)
        ready = threading.Event()

        def begin() -> None:
            self.relay.start()
            ready.set()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(begin)
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.relay.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.mark.parametrize("windowsize", [1, 4])
def test_ten_percent_loss_both_ways(tmp_path, windowsize):
    # retries 7 with backoff (1+2+4+8*5 s) ends a transfer whose last ACK was lost after the client left well
    # inside the 60 s the test waits for the end lines. The relay drops every 10th packet each way (not a
    # random 10%: a rare run of losses could leave the client longer without a packet than it waits), and the
    # client waits 30 s of silence (100 x 0.3 s), longer than the server's backoff between two resends.
    bootd = BootdProcess(make_config(tmp_path, "  timeout: 1\n  retries: 7\n")).start()
    port = int(next(a for a in bootd.addresses if a.startswith("tftp://")).rsplit(":", 1)[1])
    relay = RelayThread(port, drop_every=10)  # 10% each way, never two in a row for a lone flow
    try:
        result = run([sys.executable, "-m", "bench.tftp_client", "--server", f"127.0.0.1:{relay.relay.port}",
                      "--file", "undionly.kpxe", "--count", "4", "--blksize", "1024", "--windowsize", str(windowsize),
                      "--timeout", "0.3", "--retries", "100", "--deadline", "150"], cwd=ROOT, timeout=160)
        summary = json.loads(result.stdout)
        assert summary["completed"] == 4, [t for t in summary["transfers"] if not t["ok"]]
        assert {t["sha256"] for t in summary["transfers"]} == {sha(FILES["undionly.kpxe"])}
        # Every transfer the server started ends with one line, once the server stops waiting for a last ACK.
        # Over a lossy path the client may leave while the server waits for the ACK of a last window of
        # several blocks; the server cannot know those arrived and says how many blocks were acknowledged
        # instead of "sent" (the client, above, proved it got them all).
        def lines(starting: bool) -> list[str]:  # the details of the tftp lines: "<peer> tftp: <detail>"
            details = [l["message"].split(" tftp: ", 1)[1] for l in bootd.lines if l.get("stage") == "tftp"]
            return [d for d in details if "undionly.kpxe" in d and d.startswith("start ") == starting]

        bootd.wait_for_log(lambda _l: len(lines(False)) >= len(lines(True)) >= 4, timeout=60)
        finished = lines(False)
        assert len(finished) == 4, finished  # one session per transfer: a retransmitted RRQ is a duplicate
        blocks_each = len(FILES["undionly.kpxe"]) // 1024 + 1
        for message in finished:
            if not message.startswith("sent undionly.kpxe"):
                acknowledged = int(re.search(r"; (\d+) of \d+ blocks acknowledged", message).group(1))
                assert acknowledged >= blocks_each - windowsize, message  # at most the last window unconfirmed
        sent = sum(int(re.search(r", (\d+) DATA", m).group(1)) for m in finished)
        blocks = 4 * blocks_each
        drops = relay.relay.dropped["to_server"] + relay.relay.dropped["to_client"]
        assert drops > 0
        # every DATA beyond the first copy of each block is explained by a drop (a window per drop at most)
        assert blocks <= sent <= blocks + windowsize * drops, (sent, blocks, drops)
    finally:
        relay.close()
        assert bootd.stop() == 0


def test_rrq_flood_past_the_bounds(tmp_path):
    bootd = BootdProcess(make_config(tmp_path, "  max_transfers: 4\n  max_per_client: 100\n")).start()
    port = int(next(a for a in bootd.addresses if a.startswith("tftp://")).rsplit(":", 1)[1])
    try:
        result = run([sys.executable, "-m", "bench.tftp_client", "--server", f"127.0.0.1:{port}", "--file",
                      "ipxe.efi", "--count", "24", "--retries", "3"], cwd=ROOT, timeout=120)
        summary = json.loads(result.stdout)
        refused = [t for t in summary["transfers"] if not t["ok"]]
        # all 24 requests arrive within milliseconds, a transfer takes far longer: exactly 4 are admitted
        assert summary["completed"] == 4 and len(refused) == 20, summary
        assert all("server busy" in t["error"] for t in refused)
        assert all(t["sha256"] == sha(FILES["ipxe.efi"]) for t in summary["transfers"] if t["ok"])
    finally:
        assert bootd.stop() == 0


def parse_oack(packet: bytes) -> dict[str, str]:
    assert packet[:2] == b"\x00\x06", packet[:4]
    fields = packet[2:].rstrip(b"\0").split(b"\0")
    return {k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2])}


def test_requests_that_are_never_answered_cannot_hold_the_server_full(tmp_path):
    """Spoofed sources never acknowledge: four of them (each asking for a 255 s timeout) fill max_transfers;
    once each has gone unanswered through its first timeout, a real client still gets its file."""
    bootd = BootdProcess(make_config(tmp_path, "  max_transfers: 4\n")).start()
    port = int(next(a for a in bootd.addresses if a.startswith("tftp://")).rsplit(":", 1)[1])
    silent = []
    try:
        for i in range(4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.0.0.{10 + i}", 0))  # four "clients", so max_per_client does not decide
            sock.settimeout(15)
            sock.sendto(b"\x00\x01ipxe.efi\x00octet\x00timeout\x00255\x00blksize\x001024\x00", ("127.0.0.1", port))
            silent.append(sock)
        for sock in silent:
            first, _ = sock.recvfrom(2048)
            assert parse_oack(first) == {"blksize": "1024"}  # 255 s is over bootd's cap: left out
        for sock in silent:  # the OACK again: the first timeout passed with no answer (not 255 s: bootd's own)
            again, _ = sock.recvfrom(2048)
            assert again == first
        got = tmp_path / "got.efi"
        result = run(["curl", "-sS", "--max-time", "30", "-o", str(got), f"tftp://127.0.0.1:{port}/ipxe.efi"])
        assert result.returncode == 0, result.stderr
        assert sha(got.read_bytes()) == sha(FILES["ipxe.efi"])
        dropped = bootd.wait_for_log(lambda l: "dropped: the server was full" in l.get("message", ""), timeout=10)
        assert "0 of 831 blocks acknowledged" in dropped["message"], dropped
    finally:
        for sock in silent:
            sock.close()
        assert bootd.stop() == 0


def rss_kib(pid: int) -> int:
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS"))
    return int(line.split()[1])


def test_a_large_file_is_read_as_it_is_sent_not_whole(tmp_path):
    """A file past 8 MiB is read block by block: the event loop never stalls on reading it whole, the
    daemon's memory does not grow by its size, and its descriptor is closed when the transfer ends."""
    config = make_config(tmp_path)
    big = os.urandom(1 << 20) * 40  # 40 MiB
    (tmp_path / "tftproot/big.img").write_bytes(big)
    bootd = BootdProcess(config).start()
    port = int(next(a for a in bootd.addresses if a.startswith("tftp://")).rsplit(":", 1)[1])
    try:
        fds_before = len(os.listdir(f"/proc/{bootd.proc.pid}/fd"))
        rss_before = rss_kib(bootd.proc.pid)
        got = tmp_path / "got.img"
        result = run(["curl", "-sS", "--max-time", "120", "--tftp-blksize", "1468", "-o", str(got),
                      f"tftp://127.0.0.1:{port}/big.img"], timeout=150)
        assert result.returncode == 0, result.stderr
        assert sha(got.read_bytes()) == sha(big)
        assert rss_kib(bootd.proc.pid) - rss_before < 20 * 1024  # not the 40 MiB of the file
        bootd.wait_for_log(lambda l: "sent big.img" in l.get("message", ""), timeout=30)
        assert len(os.listdir(f"/proc/{bootd.proc.pid}/fd")) == fds_before
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        sock.sendto(b"\x00\x01big.img\x00netascii\x00", ("127.0.0.1", port))
        error = sock.recvfrom(2048)[0]
        sock.close()
        assert error[:4] == b"\x00\x05\x00\x04" and b"netascii" in error  # illegal operation, said why
    finally:
        assert bootd.stop() == 0
