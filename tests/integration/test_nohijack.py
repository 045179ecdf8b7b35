"""Never hijack a machine, through the real daemon: bootd's /bootd/ipxe tells a machine it has nothing for
to move on (while matchbox's /ipxe still 404s byte for byte), DHCP does not answer a MAC no group could
select (scapy-crafted PXE packets in a namespace), and the progress API lists such a machine with the
reason and how to claim it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from appliance.dhcp.server import REFRESH_SECONDS
from tests.bootd_process import BootdProcess
from tests.integration.test_dhcp import FIRMWARE, decode, probe, pxe_packet, server_stats
from tests.integration.test_http import CONFIG, IPXE_P, NOT_FOUND, fetch, make_data_dir, write

STRANGER = "52:54:00:5e:00:01"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("nohijack")
    data = make_data_dir(root)  # groups select by uuid and by MAC; none is a default group
    (root / "bootd.yaml").write_text(CONFIG.format(data=data))
    bootd = BootdProcess(root / "bootd.yaml").start()
    yield bootd
    assert bootd.stop() == 0


async def test_a_matched_machine_gets_exactly_what_ipxe_gives(server):
    status, headers, body = await fetch(server, "/bootd/ipxe?uuid=a1b2c3d4&mac=52-54-00-00-00-01&hostname=")
    assert (status, body.decode()) == (200, IPXE_P)
    assert headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_an_unmatched_machine_is_told_why_and_sent_on_while_ipxe_still_404s(server):
    query = f"uuid=0000&mac={STRANGER.replace(':', '-')}&domain=&hostname=&serial=&arch=i386"
    status, _, body = await fetch(server, f"/bootd/ipxe?{query}")
    script = body.decode()
    assert status == 200 and script.startswith("#!ipxe\n")
    assert f"echo bootd: nothing to boot for {STRANGER}: no group selects it\n" in script
    assert f'mac: "{STRANGER}", profile: PROFILE' in script  # how to claim it, on the console
    assert script.endswith("sleep 5 ||\n") and "chain" not in script and "exit" not in script
    # the progress view lists the machine, why bootd sent it on, and how to claim it
    status, _, body = await fetch(server, "/api/v1/machines")
    listed = {m["mac"]: m for m in json.loads(body)["machines"]}
    view = listed[STRANGER]
    assert view["known"] is False and view["stage"] == "boot-config" and view["ok"] is False
    detail = view["stages"][-1]["detail"]
    assert "no profile for" in detail and "next boot device" in detail
    assert f'add under machines: in bootd.yaml: - {{name: NAME, mac: "{STRANGER}", profile: PROFILE}}' in detail
    # matchbox's own route is unchanged: Go's 404 for the same miss
    status, _, body = await fetch(server, f"/ipxe?{query}")
    assert (status, body.decode()) == (404, NOT_FOUND)


async def test_a_profile_with_nothing_to_boot_sends_the_machine_on(server):
    status, _, body = await fetch(server, "/bootd/ipxe?uuid=noboot&mac=52-54-00-5e-00-02")
    assert status == 200 and "has nothing to boot" in body.decode() and body.decode().endswith("sleep 5 ||\n")
    assert (await fetch(server, "/ipxe?uuid=noboot"))[:3:2] == (404, NOT_FOUND.encode())


async def test_a_claimed_machine_with_a_missing_profile_fails_so_the_script_retries(server):
    status, _, body = await fetch(server, "/bootd/ipxe?uuid=mp&mac=52-54-00-5e-00-03")
    script = body.decode()
    assert status == 200 and script.endswith("exit 1\n") and "profile 'does-not-exist' not found" in script
    status, _, body = await fetch(server, "/api/v1/machines/52:54:00:5e:00:03")
    view = json.loads(body)
    assert view["ok"] is False and "does-not-exist" in view["stages"][-1]["detail"]


# --- DHCP: a MAC no group could ever select is not answered ----------------------------------------------

KNOWN = "52:54:00:5e:10:01"


def start(lab, tmp_path: Path, dhcp: str) -> BootdProcess:
    data = tmp_path / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/k"}})
    write(data / "groups/installed.json", {"id": "installed", "profile": "p", "selector": {"os": "installed"}})
    for name, content in FIRMWARE.items():
        write(tmp_path / "state/firmware" / name, content)
    (tmp_path / "bootd.yaml").write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"http:\n  address: {lab.server_ip}\n  port: 8080\n  data_dir: {data}\n"
        f"dhcp:\n{dhcp}machines:\n  - {{name: known, mac: \"{KNOWN}\", profile: p}}\n")
    return BootdProcess(tmp_path / "bootd.yaml", lab=lab, ns=lab.server_ns).start()


def answered_macs(answers: list[dict]) -> list[str]:
    return [decode(a)[0].chaddr[:6].hex(":") for a in answers]


def test_proxy_leaves_a_mac_no_group_can_select_to_its_next_boot_device(netlab, tmp_path):
    client = netlab.add_client("192.0.2.10/24")
    bootd = start(netlab, tmp_path, "  mode: proxy\n")
    try:
        bootd.wait_for_log(lambda l: "PXE answered for 1 MACs" in l.get("message", ""))
        # in order: the stranger's DISCOVER (BIOS PXE, then iPXE) first, the known machine's last; the first
        # answer is the known machine's, so the stranger's were not answered (one thread, in order)
        packets = [pxe_packet(STRANGER, "discover", 0), pxe_packet(STRANGER, "discover", 0, (77, b"iPXE")),
                   pxe_packet(KNOWN, "discover", 0)]
        answers = probe(netlab, client.ns, *packets, expect=1, iface=client.ifname)
        assert answered_macs(answers) == [KNOWN]
        assert server_stats(netlab)["dhcp"]["dropped"]["no-profile"] == 2
        view = json.loads(netlab.run(client.ns, ["curl", "-sf",
                                                 f"http://192.0.2.1:8080/api/v1/machines/{STRANGER}"]).stdout)
        assert view["stage"] == "dhcp" and view["ok"] is False
        detail = view["stages"][0]["detail"]
        assert "no-profile" in detail and f'mac: "{STRANGER}"' in detail and "machines:" in detail
        # a default group, added while bootd runs, makes every MAC selectable: the stranger is answered
        # (the data dir is looked at again at most every REFRESH_SECONDS, when a packet comes)
        write(tmp_path / "data/groups/default.json", {"id": "default", "profile": "p"})
        time.sleep(REFRESH_SECONDS + 0.1)
        answers = probe(netlab, client.ns, pxe_packet(STRANGER, "discover", 0), iface=client.ifname)
        assert answered_macs(answers) == [STRANGER]
        assert decode(answers[0])[0].file.rstrip(b"\0") == b"undionly.kpxe"
        bootd.wait_for_log(lambda l: "PXE answered for any MAC" in l.get("message", ""))
    finally:
        assert bootd.stop() == 0


def test_authoritative_gives_a_mac_no_group_can_select_an_address_but_no_boot_file(netlab, tmp_path):
    client = netlab.add_client("192.0.2.10/24")
    bootd = start(netlab, tmp_path, "  mode: authoritative\n  subnet: 192.0.2.0/24\n"
                                    "  range: [192.0.2.100, 192.0.2.110]\n")
    try:
        [stranger] = probe(netlab, client.ns, pxe_packet(STRANGER, "discover", 0), iface=client.ifname)
        reply, options = decode(stranger)
        assert reply.yiaddr == "192.0.2.100" and reply.file.rstrip(b"\0") == b"" and 67 not in options
        [known] = probe(netlab, client.ns, pxe_packet(KNOWN, "discover", 0), iface=client.ifname)
        assert decode(known)[0].file.rstrip(b"\0") == b"undionly.kpxe"
        view = json.loads(netlab.run(client.ns, ["curl", "-sf",
                                                 f"http://192.0.2.1:8080/api/v1/machines/{STRANGER}"]).stdout)
        assert view["ok"] is False and "no boot" in view["stages"][0]["detail"]
    finally:
        assert bootd.stop() == 0
