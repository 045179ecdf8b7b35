"""What the fuzz campaign (bench/fuzz.py) found in the HTTP side, each through a real socket: requests a
hostile client sends are answered 4xx (never a 500 and a traceback), and a flood of idle connections
neither exhausts bootd's descriptors nor keeps a fresh client out."""

import json
import os
import resource
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.bootd_process import BootdProcess


def start(tmp_path: Path, nofile: str | None = None) -> BootdProcess:
    data = tmp_path / "data"
    (data / "profiles").mkdir(parents=True)
    (data / "groups").mkdir()
    (data / "profiles/p.json").write_text('{"id": "p", "boot": {"kernel": "/assets/k"}}')
    (data / "groups/default.json").write_text('{"id": "default", "profile": "p"}')
    (tmp_path / "bootd.yaml").write_text(f"state_dir: {tmp_path / 'state'}\n"
                                         f"http: {{address: 127.0.0.1, port: 0, data_dir: {data}}}\n")
    bootd = BootdProcess(tmp_path / "bootd.yaml")
    if nofile is not None:
        bootd.argv = ["prlimit", f"--nofile={nofile}", *bootd.argv]
    return bootd.start()


def request(bootd: BootdProcess, method: str, path: str, body: bytes | None = None,
            timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(bootd.url(path), data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def bootd(tmp_path):
    bootd = start(tmp_path)
    yield bootd
    assert bootd.stop() == 0  # fails on any traceback in the log


def test_a_report_nested_too_deeply_is_a_400(bootd):
    # 10,000 '[' fit the 16 KiB report limit, and json's C decoder recursed past Python's limit: a 500.
    status, body = request(bootd, "POST", "/api/v1/machines/52:54:00:00:00:01/report", b"[" * 10_000)
    assert status == 400
    assert json.loads(body) == {"error": "not JSON: nested too deeply"}


@pytest.mark.parametrize("path", ["/assets/" + "a" * 5000, "/assets/x/" + "b" * 300, "/firmware/" + "c" * 300])
def test_a_file_name_too_long_is_a_404(bootd, path):
    # stat() of such a name fails with ENAMETOOLONG: that was a 500 and a traceback.
    status, _ = request(bootd, "GET", path)
    assert status == 404


def test_a_report_body_sent_too_slowly_is_a_408(bootd):
    url = urlsplit(bootd.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/machines/52:54:00:00:00:01/report HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n{")  # and then nothing: the body never comes
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408 "), reply


def test_a_report_cut_short_by_its_client_is_no_traceback(bootd):
    # The body is read until its end now; a client that leaves half-way made that read raise.
    url = urlsplit(bootd.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/machines/52:54:00:00:00:01/report HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n{\"stage\"")
    status, _ = request(bootd, "GET", "/api/v1/machines")  # and bootd answers the next client
    assert status == 200


def test_a_report_cannot_forge_log_lines(bootd):
    # Found by the fuzz campaign: a report's values went into the log line as sent, newlines and all.
    report = {"stage": "a\n2026-12-02 13:00:00,000 ERROR forged", "sha\r": "b\x1b[31m"}
    status, _ = request(bootd, "POST", "/api/v1/machines/52:54:00:00:00:01/report", json.dumps(report).encode())
    assert status == 200
    line = bootd.wait_for_log(lambda line: "reported:" in line.get("message", ""))
    assert line["message"] == "52:54:00:00:00:01 report: reported: stage=a?2026-12-02 13:00:00,000 ERROR forged, " \
                              "sha?=b?[31m"
    status, body = request(bootd, "GET", "/api/v1/machines/52:54:00:00:00:01")
    assert json.loads(body)["report"] == report  # what the machine said is kept as it said it


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_nofile(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max open files"))
    return int(line.split()[3])


def test_the_open_file_limit_is_raised_to_the_hard_one(tmp_path):
    bootd = start(tmp_path, nofile="256:8192")
    try:
        assert soft_nofile(bootd.proc.pid) == 8192
    finally:
        assert bootd.stop() == 0


def test_idle_connections_past_the_cap_close_the_oldest_and_a_fresh_client_is_served(tmp_path):
    # 512 descriptors and no higher hard limit: the cap is 128 connections. 600 clients connect and send
    # nothing; before the cap, accept() failed with EMFILE and the good client waited for the idle ones'
    # keep-alive timeout (75 s) instead of an answer.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))  # for our 600 sockets
    bootd = start(tmp_path, nofile="512:512")
    url = urlsplit(bootd.base_url)
    idle = [socket.create_connection((url.hostname, url.port)) for _ in range(600)]
    try:
        status, body = request(bootd, "GET", "/boot.ipxe", timeout=5)
        assert status == 200 and body.startswith(b"#!ipxe\n")
        status, body = request(bootd, "GET", "/api/v1/stats", timeout=5)
        http = json.loads(body)["http"]
        assert http["max_connections"] == 128
        assert http["closed_idle"] >= 600 - 128
        assert open_files(bootd.proc.pid) < 512
        # the oldest idle connections were the ones closed: the first is closed, the last still open
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""
        idle[-1].setblocking(False)
        with pytest.raises(BlockingIOError):
            idle[-1].recv(1)
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert bootd.stop() == 0
