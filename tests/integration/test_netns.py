"""bootd inside a network namespace, a client in another: a machine's steps are attributed to its MAC even
when a request carries none (the kernel's neighbour table, read with a netlink dump: appliance/net.py)."""

from __future__ import annotations

import json
import os

import pytest

from tests.bootd_process import BootdProcess
from tests.integration.test_http import write

pytestmark = pytest.mark.netns


def test_machine_progress_through_a_real_network(netlab, tmp_path):
    client = netlab.add_client("192.0.2.10/24")
    data = tmp_path / "data"
    write(data / "profiles/p.json", {"id": "p", "ignition_id": "p.ign", "boot": {
        "kernel": "${bootd}/assets/image/kernel", "initrd": ["${bootd}/assets/image/initrd"], "args": ["console=ttyS0"]}})
    write(data / "groups/default.json", {"id": "default", "profile": "p"})
    write(data / "ignition/p.ign", {"ignition": {"version": "3.4.0"}})
    write(data / "assets/image/kernel", os.urandom(100_000))
    write(data / "assets/image/initrd", os.urandom(200_000))
    (tmp_path / "bootd.yaml").write_text(f"http:\n  address: {netlab.server_ip}\n  port: 8080\n  data_dir: {data}\n")
    bootd = BootdProcess(tmp_path / "bootd.yaml", lab=netlab, ns=netlab.server_ns).start()
    try:
        base = f"http://{netlab.server_ip}:8080"
        hexhyp = client.mac.replace(":", "-")

        def get(path: str, *curl_args: str) -> str:
            result = netlab.run(client.ns, ["curl", "-sf", *curl_args, base + path])
            assert result.returncode == 0, (path, result.stderr, bootd.log_text())
            return result.stdout

        script = get("/bootd.ipxe")  # no MAC in the request: found through the neighbour table
        assert f"set bootd {base}\n" in script
        assert "kernel ${bootd}/assets/image/kernel console=ttyS0" in get(f"/ipxe?mac={hexhyp}")
        assert get("/assets/image/kernel", "-o", "/dev/null", "-w", "%{size_download}") == "100000"
        assert get("/assets/image/initrd", "-o", "/dev/null", "-w", "%{size_download}") == "200000"
        get(f"/ignition?mac={hexhyp}")
        bootd.wait_for_log(lambda l: l.get("stage") == "ignition")
        view = json.loads(get(f"/api/v1/machines/{client.mac}"))
        assert view["ip"] == client.address
        assert [s["stage"] for s in view["stages"]] == ["boot-script", "boot-config", "kernel", "initrd", "ignition"]
        assert all(s["ok"] for s in view["stages"])
        times = [s["time"] for s in view["stages"]]
        assert times == sorted(times)
    finally:
        assert bootd.stop() == 0
