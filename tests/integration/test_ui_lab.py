"""`bootd lab up`'s page URL: bootd runs inside a namespace, and the host's own browser reaches its /ui/ through
a port on the host's 127.0.0.1 forwarded into that namespace (appliance/lab/forward.py), the page's event
stream and `bootd status` included. The forwarder is the function `lab up` calls; the QEMU run of `lab up`
itself is tests/e2e/test_lab.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from appliance.lab import forward_to_host
from tests.bootd_process import BootdProcess
from tests.integration.test_http import write

pytestmark = pytest.mark.netns
MAC = "52:54:00:f0:00:01"


def host_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def test_the_page_of_a_bootd_in_a_namespace_is_reachable_from_the_hosts_loopback(netlab, tmp_path):
    netlab.add_client("192.0.2.10/24")  # the server end of its veth pair gets the server address
    data = tmp_path / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/vmlinuz"}})
    write(data / "groups/default.json", {"id": "default", "profile": "p"})
    (tmp_path / "bootd.yaml").write_text(
        f"http:\n  address: {netlab.server_ip}\n  port: 8080\n  data_dir: {data}\n"
        f"machines:\n  - {{name: node1, mac: \"{MAC}\"}}\n")
    bootd = BootdProcess(tmp_path / "bootd.yaml", lab=netlab, ns=netlab.server_ns).start()
    links = host_links()
    url, forwarder = forward_to_host(netlab.server_ns, f"{netlab.server_ip}:8080", tmp_path / "forward.log", port=0)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/ui/")
        base = url.removesuffix("/ui/")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"<title>bootd: machines</title>" in response.read()
        with urllib.request.urlopen(f"{base}/api/v1/events", timeout=10) as stream:
            assert stream.status == 200
            # a machine's step inside the namespace reaches the host's view through the forwarder
            step = netlab.run(netlab.server_ns, ["curl", "-sf", "-o", "/dev/null",
                                                 f"http://{netlab.server_ip}:8080/ipxe?mac={MAC}"])
            assert step.returncode == 0
            while not ((line := stream.readline()).startswith(b"data: ") and MAC.encode() in line):
                assert line, "the stream ended"
        status = subprocess.run([sys.executable, "-m", "appliance", "status", "--endpoint", base],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "node1" in status.stdout and "boot-config" in status.stdout
        assert host_links() == links  # nothing added to the host's interfaces
    finally:
        os.killpg(forwarder.pid, signal.SIGTERM)
        forwarder.wait(10)
        assert bootd.stop() == 0
