"""SIGHUP is a transaction: every part the new config needs is built and every socket that changes is bound
before anything running changes; if one part fails, bootd keeps running the old config whole."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

from tests.bootd_process import BootdProcess


def free_udp_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def config(tmp: Path, *, tftp_port: int, dns_port: int, address: str, machines: str = "") -> str:
    return (f"state_dir: {tmp / 'state'}\ndomain: example.com\n"
            f"http:\n  address: 127.0.0.1\n  port: 0\n  data_dir: {tmp / 'data'}\n"
            f"tftp:\n  address: 127.0.0.1\n  port: {tftp_port}\n  root: {tmp / 'tftproot'}\n"
            f"dns:\n  address: 127.0.0.1\n  port: {dns_port}\n  records:\n    - {{name: x, type: A, value: {address}}}\n"
            + (f"machines:\n{machines}" if machines else ""))


def dig(port: int, name: str) -> str:
    return subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=2", "+tries=2", name],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def tftp_ok(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        sock.sendto(b"\x00\x01hello.txt\x00octet\x00", ("127.0.0.1", port))
        data = sock.recvfrom(2048)[0]
        return data[:4] == b"\x00\x03\x00\x01" and data[4:] == b"hello"
    except OSError:
        return False
    finally:
        sock.close()


def machines(bootd: BootdProcess) -> set[str]:
    with urllib.request.urlopen(bootd.url("/api/v1/machines"), timeout=10) as response:
        return {m["name"] for m in json.load(response)["machines"]}


def test_a_reload_that_cannot_bind_one_socket_changes_nothing_then_applies_whole(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "tftproot").mkdir()
    (tmp_path / "tftproot/hello.txt").write_bytes(b"hello")
    first, taken, dns_sock = free_udp_port(), free_udp_port(), free_udp_port()
    tftp_a, tftp_b, dns_port = first.getsockname()[1], taken.getsockname()[1], dns_sock.getsockname()[1]
    first.close()
    dns_sock.close()
    path = tmp_path / "bootd.yaml"
    path.write_text(config(tmp_path, tftp_port=tftp_a, dns_port=dns_port, address="192.0.2.10"))
    bootd = BootdProcess(path).start()
    try:
        assert dig(dns_port, "x.example.com") == "192.0.2.10" and tftp_ok(tftp_a)
        # the new config moves TFTP to a port another process holds, changes the A record, adds a machine
        path.write_text(config(tmp_path, tftp_port=tftp_b, dns_port=dns_port, address="192.0.2.20",
                               machines='  - {name: node9, mac: "52:54:00:00:00:09"}\n'))
        bootd.send(signal.SIGHUP)
        refused = bootd.wait_for_log(lambda l: "reload refused" in l.get("message", ""), timeout=20)
        assert f":{tftp_b}" in refused["message"]
        assert dig(dns_port, "x.example.com") == "192.0.2.10"  # the zone did not move on alone
        assert tftp_ok(tftp_a) and "node9" not in machines(bootd)
        taken.close()
        mark = len(bootd.lines)
        bootd.send(signal.SIGHUP)
        bootd.wait_for_log(lambda l: l.get("message", "").startswith("reloaded"), timeout=20, start=mark)
        assert dig(dns_port, "x.example.com") == "192.0.2.20"
        assert tftp_ok(tftp_b) and not tftp_ok(tftp_a) and "node9" in machines(bootd)
    finally:
        taken.close()
        assert bootd.stop() == 0
