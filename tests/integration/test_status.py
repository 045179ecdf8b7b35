"""`bootd status` against the real daemon: piped (plain text once, the exit code scripts read) and in a real
terminal (tmux: the live view follows events as they happen, Ctrl-C ends it with the same exit code).

Machines are played by HTTP requests carrying `mac=` labels, as iPXE sends them; one machine's group
names a profile that does not exist, so its boot fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.integration.test_http import write

NODE1, NODE2, BROKEN, STRANGER = ("52:54:00:5a:00:01", "52:54:00:5a:00:02", "52:54:00:5a:00:03",
                                  "52:54:00:5a:00:04")
BOOTD = [sys.executable, "-m", "appliance"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def bootd(tmp_path):
    data = tmp_path / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/vmlinuz"}})
    write(data / "groups/default.json", {"id": "default", "profile": "p"})
    write(data / "groups/broken.json", {"id": "broken", "profile": "missing", "selector": {"mac": BROKEN}})
    (tmp_path / "bootd.yaml").write_text(
        f"http:\n  address: 127.0.0.1\n  port: {free_port()}\n  data_dir: {data}\n"
        f"machines:\n  - {{name: node1, mac: \"{NODE1}\"}}\n  - {{name: node2, mac: \"{NODE2}\"}}\n"
        f"  - {{name: broken, mac: \"{BROKEN}\"}}\n")
    server = BootdProcess(tmp_path / "bootd.yaml").start()
    yield server
    assert server.stop() == 0


def get(server: BootdProcess, path: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(server.url(path), data=data), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BOOTD, "status", *args], capture_output=True, text=True, timeout=60)


def test_piped_status_is_plain_text_once_and_its_exit_code_says_a_boot_failed(bootd):
    assert get(bootd, f"/ipxe?mac={NODE1}") == 200
    # a machine bootd does not know, whose report carries a terminal escape sequence
    assert get(bootd, f"/api/v1/machines/{STRANGER}/report", json.dumps({"x": "\x1b[2Jcleared"}).encode()) == 200
    result = status("-c", str(bootd.config))  # the endpoint from the config's http address
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "MAC", "IP"]
    row = next(line for line in lines if line.startswith("node1"))
    assert NODE1 in row and "default/p" in row and "boot-config" in row
    assert next(line for line in lines if line.startswith("node2")).split()[2] == "-"  # configured, not seen yet
    assert "\x1b" not in result.stdout and "?[2Jcleared" in result.stdout
    assert f'  - {{name: machine-5a0004, mac: "{STRANGER}"}}' in lines  # how to claim the unknown one

    assert get(bootd, f"/ipxe?mac={BROKEN}") == 404
    result = status("--endpoint", bootd.base_url, "--watch")  # not a terminal: once, as without --watch
    assert result.returncode == 3
    assert "broken: boot-config failed: /ipxe: group 'broken' (groups/broken.json): profile 'missing' not found" \
        in result.stdout.splitlines()
    assert "FAILED boot-config" in next(line for line in result.stdout.splitlines() if line.startswith("broken"))


def test_status_says_what_is_wrong_without_a_traceback(tmp_path):
    result = status("--endpoint", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and result.stderr.startswith("bootd status: cannot reach bootd at http://127.0.0.1:")
    result = status("-c", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "missing.yaml: cannot read" in result.stderr
    assert "Traceback" not in result.stderr


class Tmux:
    """A tmux server of this test's own (its own socket), ended with kill-server on that socket."""

    def __init__(self, name: str) -> None:
        self.socket = name

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def screen(self, escapes: bool = False) -> str:
        return self("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "t")

    def wait_for(self, text: str, timeout: float = 15) -> str:
        """The screen once it shows `text` (tmux has no event to wait on: the pane is read every 50 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed {text!r}:\n{screen}")
            time.sleep(0.05)


@pytest.fixture
def tmux():
    terminal = Tmux(f"bootd-status-{os.getpid()}")
    yield terminal
    subprocess.run(["tmux", "-L", terminal.socket, "kill-server"], capture_output=True)


def test_watch_in_a_terminal_follows_events_live_and_ctrl_c_ends_it(bootd, tmux):
    command = " ".join([*BOOTD, "status", "--endpoint", bootd.base_url, "--watch"])
    root = Path(__file__).parents[2]
    tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "40", "-c", str(root),
         f"sh -c 'trap : INT; {command}; echo exit=$?; sleep 600'")  # the shell outlives Ctrl-C to say the code
    tmux.wait_for("live")
    screen = tmux.wait_for("3 machines: 3 not seen")
    assert "node2" in screen

    assert get(bootd, f"/ipxe?mac={NODE2}") == 200
    screen = tmux.wait_for("1 boot-config")
    row = next(line for line in screen.splitlines() if line.startswith("node2"))
    assert "default/p" in row and "boot-config" in row

    assert get(bootd, f"/ipxe?mac={BROKEN}") == 404
    tmux.wait_for("1 FAILED")
    painted = tmux.screen(escapes=True)
    reason = "broken: boot-config failed: /ipxe: group 'broken'"
    assert f"\x1b[31m{reason}" in painted  # red on a terminal

    tmux("send-keys", "-t", "t", "C-c")
    tmux.wait_for("exit=3")  # a machine's last boot failed
