"""The live progress page (/ui/) in Debian's headless Chromium, against the real daemon in a namespace.

Machines are played by a client namespace making the requests a PXE machine makes: a scapy-crafted DHCP
DISCOVER (UEFI x64) to bootd's proxy DHCP, then iPXE's HTTP requests with curl (/boot.ipxe, /ipxe?mac=,
the kernel under /assets/). The browser sits in the same client namespace, so it reaches bootd as an
operator's laptop on the provisioning network would. Each step must show in the machine's row within a
second with no reload (the page's own JS state survives), a missing kernel shows bootd's reason in the
row, and HTML sent by a client is shown as text.

Screenshots go to the test's tmp dir, and to $BOOTD_TEST_ARTIFACTS when set.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess
from tests.cdp import Browser, Page
from tests.integration.test_dhcp import pxe_packet
from tests.integration.test_http import write

pytestmark = pytest.mark.netns
ROOT = Path(__file__).parents[2]
KNOWN = "52:54:00:7e:00:02"  # in machines: as node2
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'


@pytest.fixture
def ui_lab(netlab, tmp_path):
    client = netlab.add_client("192.0.2.10/24")
    data = tmp_path / "data"
    write(data / "profiles/install.json", {"id": "install", "boot": {"kernel": "/assets/vmlinuz",
                                                                     "initrd": ["/assets/initrd.img"]}})
    write(data / "groups/default.json", {"id": "default", "profile": "install"})
    write(data / "assets/initrd.img", b"initrd")
    write(tmp_path / "state/firmware/ipxe.efi", b"\0" * 1000)
    write(tmp_path / "state/firmware/undionly.kpxe", b"\0" * 1000)
    (tmp_path / "bootd.yaml").write_text(
        f"state_dir: {tmp_path / 'state'}\ndomain: lab.test\n"
        f"http:\n  address: {netlab.server_ip}\n  port: 8080\n  data_dir: {data}\n"
        f"dhcp:\n  mode: proxy\n"
        f"machines:\n  - {{name: node2, mac: \"{KNOWN}\"}}\n")
    bootd = BootdProcess(tmp_path / "bootd.yaml", lab=netlab, ns=netlab.server_ns).start()
    browser = Browser(["ip", "netns", "exec", client.ns]).start()
    try:
        yield netlab, client, bootd, browser
    finally:
        browser.close()
    assert bootd.stop() == 0


def shots(tmp_path: Path, page: Page, name: str) -> Path:
    path = page.screenshot(tmp_path / "screenshots" / f"{name}.png", down_to="main")
    if target := os.environ.get("BOOTD_TEST_ARTIFACTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def dhcp_discover(lab, client, mac: str) -> None:
    packet = pxe_packet(mac, "discover", 7)
    argv = [sys.executable, "-m", "tests.udp_probe", "--bind", "0.0.0.0:68", "--to", "255.255.255.255:67",
            "--wait", "3", "--expect", "1", f"--iface={client.ifname}", packet.hex()]
    result = lab.run(client.ns, argv, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout), result.stderr


def curl(lab, client, url: str, *args: str) -> int:
    result = lab.run(client.ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args, url])
    return int(result.stdout)


def cell(mac: str, name: str) -> str:
    """JS: the text of a cell of `mac`'s row."""
    return f"(document.querySelector('tr[data-mac=\"{mac}\"] td.{name}') || {{}}).textContent"


def test_the_page_follows_a_machine_live_and_shows_why_it_stopped(ui_lab, tmp_path):
    lab, client, bootd, browser = ui_lab
    base = f"http://{lab.server_ip}:8080"
    mac = client.mac  # the machine's DHCP and its HTTP requests come from the same NIC
    page = browser.new_page()
    page.goto(f"{base}/ui/")
    page.wait_for("document.getElementById('connection').textContent === 'live'")
    # the configured machine is listed before it is seen; the page's state must survive every update
    page.wait_for(f"{cell(KNOWN, 'name')} === 'node2'")
    page.evaluate("window.__loadedOnce = 'still the same page'")

    dhcp_discover(lab, client, mac)
    assert page.wait_for(f"{cell(mac, 'stage')} === 'dhcp'", within=1.0) < 1000
    assert page.evaluate(f"{cell(mac, 'arch')}") == "EFI_X64 / UEFI"
    # an unknown machine says what to add to claim it
    assert f'mac: "{mac}"' in page.evaluate(f"{cell(mac, 'name')}")

    assert curl(lab, client, f"{base}/boot.ipxe") == 200
    assert page.wait_for(f"{cell(mac, 'stage')} === 'boot-script'", within=1.0) < 1000
    assert curl(lab, client, f"{base}/ipxe?mac={mac}") == 200
    assert page.wait_for(f"{cell(mac, 'stage')} === 'boot-config'", within=1.0) < 1000
    assert page.evaluate(f"{cell(mac, 'group')}") == "default / install"
    assert page.evaluate(f"{cell(mac, 'ip')}") == client.address
    shots(tmp_path, page, "ui-booting")

    assert curl(lab, client, f"{base}/assets/vmlinuz") == 404  # the profile's kernel is not there
    assert page.wait_for(f"{cell(mac, 'stage')}.includes('kernel asset missing: /assets/vmlinuz')", within=1.0) < 1000
    assert page.evaluate(f"document.querySelector('tr[data-mac=\"{mac}\"]').classList.contains('failed')")
    assert page.evaluate("getComputedStyle(document.querySelector('tr.failed td.stage')).color") == "rgb(176, 0, 32)"
    shots(tmp_path, page, "ui-failed")

    # a row opens the machine's timeline: each stage with its time and duration, and the last events
    page.evaluate(f"document.querySelector('tr[data-mac=\"{mac}\"]').click()")
    page.wait_for("document.querySelectorAll('#timeline-stages tbody tr').length === 4")
    stages = page.evaluate("[...document.querySelectorAll('#timeline-stages tbody tr')]"
                           ".map(tr => [...tr.cells].map(td => td.textContent))")
    assert [row[0] for row in stages] == ["dhcp", "boot-script", "boot-config", "kernel"]
    assert [row[4] for row in stages] == ["ok", "ok", "ok", "failed"]
    assert all(row[3].endswith(" s") for row in stages)
    assert page.evaluate("document.getElementById('timeline-failure').textContent") == \
        "kernel asset missing: /assets/vmlinuz"
    assert page.evaluate("document.querySelectorAll('#timeline-events li').length") == 4
    # and follows it live: the kernel appears, the machine goes on
    write(bootd.config.parent / "data/assets/vmlinuz", b"kernel")
    assert curl(lab, client, f"{base}/assets/vmlinuz") == 200
    page.wait_for("document.querySelector('#timeline-stages tbody tr:last-child td:nth-child(5)').textContent === 'ok'",
                  within=1.0)
    assert page.evaluate(f"{cell(mac, 'stage')}") == "kernel"
    shots(tmp_path, page, "ui-timeline")

    # HTML from a client (a report's values become the machine's last event) is text, never markup. (A
    # machine's name cannot carry any: bootd.yaml's names are host names. The report comes last: bootd
    # takes the IP it came from for the reported MAC's from then on.)
    assert curl(lab, client, f"{base}/api/v1/machines/{KNOWN}/report", "-X", "POST",
                "--data-binary", json.dumps({"note": HOSTILE})) == 200
    page.wait_for(f"{cell(KNOWN, 'last')}.includes('<script>')", within=1.0)
    assert HOSTILE in page.evaluate(f"{cell(KNOWN, 'last')}")
    assert page.evaluate("document.querySelectorAll('#machines img, #machines tbody script').length") == 0
    assert page.evaluate("window.__pwned === undefined")

    # a few hundred machines: rows are updated in place (the same element), and an update still shows at once
    script = ("import http.client\n"
              f"c = http.client.HTTPConnection('{lab.server_ip}', 8080)\n"
              "for n in range(300):\n"
              "    c.request('GET', '/ipxe?mac=52:54:00:7f:%02x:%02x' % (n >> 8, n & 255))\n"
              "    assert c.getresponse().read()\n")
    page.evaluate("window.__row = document.querySelector('tr[data-mac=\"52:54:00:7f:00:00\"]')")
    assert lab.run(client.ns, [sys.executable, "-c", script], timeout=120).returncode == 0
    page.wait_for("document.querySelectorAll('#machines tbody tr').length === 302")
    page.evaluate("window.__row = document.querySelector('tr[data-mac=\"52:54:00:7f:00:00\"]')")
    assert curl(lab, client, f"{base}/api/v1/machines/52:54:00:7f:00:00/report", "-X", "POST",
                "--data-binary", "{}") == 200
    assert page.wait_for(f"{cell('52:54:00:7f:00:00', 'stage')} === 'report'", within=1.0) < 1000
    assert page.evaluate("window.__row === document.querySelector('tr[data-mac=\"52:54:00:7f:00:00\"]')")
    assert page.evaluate("document.getElementById('summary').textContent").startswith("302 machines")

    assert page.evaluate("window.__loadedOnce") == "still the same page"  # never reloaded
    assert not [line for line in browser.console if "rror" in line], browser.console
