"""`bootd run` on a temporary data dir and a free loopback port, driven by aiohttp's client and curl.

The fixtures are matchbox's own (research/matchbox.md §7): group G (selector uuid=a1b2c3d4) -> profile P.
"""

from __future__ import annotations

import hashlib
import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.bootd_process import BootdProcess

IGN_34 = {"ignition": {"version": "3.4.0"}, "systemd": {"units": [{"name": "etcd2.service", "enabled": True}]}}
IPXE_P = "#!ipxe\nkernel /image/kernel a=b c\ninitrd /image/initrd_a\ninitrd /image/initrd_b\nboot\n"
NOT_FOUND = "404 page not found\n"


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))


def profile(pid: str, ignition_id: str = "file.ign", boot: bool = True) -> dict:
    p = {"id": pid, "ignition_id": ignition_id}
    if boot:
        p["boot"] = {"kernel": "/image/kernel", "initrd": ["/image/initrd_a", "/image/initrd_b"], "args": ["a=b", "c"]}
    return p


def make_data_dir(root: Path) -> Path:
    data = root / "data"
    write(data / "profiles/g1h2i3j4.json", profile("g1h2i3j4"))
    write(data / "profiles/noboot.json", profile("noboot", boot=False))
    write(data / "profiles/v31.json", profile("v31", ignition_id="v31.ign"))
    write(data / "profiles/badign.json", profile("badign", ignition_id="bad.ign"))
    write(data / "profiles/nofile.json", profile("nofile", ignition_id="absent.ign"))
    write(data / "groups/test-group.json", {"id": "test-group", "profile": "g1h2i3j4", "selector": {"uuid": "a1b2c3d4"},
                                             "metadata": {"pod_network": "10.2.0.0/16", "service_name": "etcd2"}})
    write(data / "groups/noboot.json", {"id": "noboot", "profile": "noboot", "selector": {"uuid": "noboot"}})
    write(data / "groups/v31.json", {"id": "v31", "profile": "v31", "selector": {"uuid": "v31"}})
    write(data / "groups/badign.json", {"id": "badign", "profile": "badign", "selector": {"uuid": "badign"}})
    write(data / "groups/nofile.json", {"id": "nofile", "profile": "nofile", "selector": {"uuid": "nofile"}})
    write(data / "groups/missing-profile.json", {"id": "mp", "profile": "does-not-exist", "selector": {"uuid": "mp"}})
    write(data / "groups/node1.json", {"id": "node1", "profile": "g1h2i3j4", "selector": {"mac": "52:54:00:a1:9c:ae"},
                                        "metadata": {"meta": "data", "etcd": {"name": "node1"},
                                                     "some": {"nested": {"data": "some-value"}}}})
    write(data / "ignition/file.ign", IGN_34)
    write(data / "ignition/v31.ign", {**IGN_34, "ignition": {"version": "3.1.0"}})
    write(data / "ignition/bad.ign", '{"ignition": {"version": "2.2.0"}}')
    write(data / "assets/image/kernel", os.urandom(300_000))
    write(data / "assets/dir/index.html", "<p>index</p>")
    write(data / "assets/sub/file.with.dots.txt", "dots\n")
    (data / "assets/link-inside").symlink_to(data / "assets/sub/file.with.dots.txt")
    (data / "assets/link-outside").symlink_to(data / "profiles/g1h2i3j4.json")
    write(root / "secret.txt", "secret\n")
    return data


CONFIG = """\
http:
  address: 127.0.0.1
  port: 0
  data_dir: {data}
machines:
  - {{name: node9, mac: "52:54:00:99:99:99", profile: g1h2i3j4}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    data = make_data_dir(root)
    (root / "bootd.yaml").write_text(CONFIG.format(data=data))
    bootd = BootdProcess(root / "bootd.yaml").start()
    bootd.root, bootd.data = root, data
    yield bootd
    assert bootd.stop() == 0


async def fetch(server, path: str, method: str = "GET", **kw) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, server.url(path), allow_redirects=False, **kw) as resp:
            return resp.status, resp.headers.copy(), await resp.read()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", *args],
                          capture_output=True, text=True, timeout=30)


# --- conformance table (research/matchbox.md §7) ---------------------------------------------------------

async def test_row1_boot_ipxe_is_the_matchbox_bootstrap(server):
    for path in ("/boot.ipxe", "/boot.ipxe.0"):
        status, headers, body = await fetch(server, path)
        assert status == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
        assert body.decode() == ("#!ipxe\nchain ipxe?uuid=${uuid}&mac=${mac:hexhyp}&domain=${domain}"
                                 "&hostname=${hostname}&serial=${serial}&arch=${buildarch:uristring}\n")


async def test_row2_ipxe_renders_the_profile(server):
    status, _, body = await fetch(server, "/ipxe?uuid=a1b2c3d4")
    assert (status, body.decode()) == (200, IPXE_P)


@pytest.mark.parametrize("path", [
    pytest.param("/ipxe", id="row3-no-labels"),
    pytest.param("/ipxe?uuid=noboot", id="row4-profile-without-boot"),
    pytest.param("/grub?uuid=noboot", id="row4-grub"),
    pytest.param("/ignition", id="row10-no-group"),
    pytest.param("/ignition?uuid=nofile", id="row10-ignition-file-missing"),
    pytest.param("/ipxe?uuid=mp", id="row19-profile-missing-no-fallback"),
    pytest.param("/metadata?uuid=zzz", id="metadata-no-group"),
    pytest.param("/ipxe/", id="unregistered-path"),
])
async def test_misses_are_matchbox_404s(server, path):
    status, headers, body = await fetch(server, path)
    assert (status, body.decode()) == (404, NOT_FOUND)
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_row5_grub(server):
    status, _, body = await fetch(server, "/grub?uuid=a1b2c3d4")
    text = body.decode()
    assert status == 200
    assert 'linuxefi "/image/kernel" a=b c\n' in text and 'initrdefi  "/image/initrd_a" "/image/initrd_b"\n' in text
    assert 'linux "/image/kernel" a=b c\n' in text and 'initrd  "/image/initrd_a" "/image/initrd_b"\n' in text


async def test_row6_raw_ignition_34(server):
    status, headers, body = await fetch(server, "/ignition?uuid=a1b2c3d4")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == IGN_34 and b"\n" not in body


async def test_row7_ignition_31_is_served_as_34(server):
    status, _, body = await fetch(server, "/ignition?uuid=v31")
    assert status == 200 and json.loads(body) == IGN_34


async def test_invalid_ignition_is_a_404_with_the_reason_in_log_and_progress(server):
    mac = "52:54:00:0b:ad:01"
    start = len(server.lines)
    status, _, body = await fetch(server, f"/ignition?uuid=badign&mac={mac}")
    assert (status, body.decode()) == (404, NOT_FOUND)
    line = server.wait_for_log(lambda l: "bad.ign is invalid" in l.get("message", ""), start=start)
    assert "spec 2.2.0 is not served" in line["message"]
    status, _, body = await fetch(server, f"/api/v1/machines/{mac}")
    view = json.loads(body)
    assert view["ok"] is False and "spec 2.2.0" in view["stages"][-1]["detail"]


async def test_row13_metadata(server):
    raw = "mac=52-54-00-a1-9c-ae&foo=bar&count=3&gate=true"
    status, headers, body = await fetch(server, "/metadata?" + raw)
    assert status == 200 and headers["Content-Type"] == "plain/text"
    assert set(body.decode().splitlines()) == {
        "META=data", "ETCD_NAME=node1", "SOME_NESTED_DATA=some-value", "MAC=52:54:00:a1:9c:ae",
        "REQUEST_QUERY_MAC=52:54:00:a1:9c:ae", "REQUEST_QUERY_FOO=bar", "REQUEST_QUERY_COUNT=3",
        "REQUEST_QUERY_GATE=true", f"REQUEST_RAW_QUERY={raw}"}


async def test_row15_label_parsing_through_http(server):
    status, _, body = await fetch(server, "/metadata?UUID=a1b2c3&MAC=52:DA:00:89:d8:10&uuid=a1b2c3d4&mac=x:x:x:x:x:x")
    lines = set(body.decode().splitlines())
    assert status == 200
    assert {"REQUEST_QUERY_UUID=a1b2c3", "REQUEST_QUERY_MAC=52:da:00:89:d8:10"} <= lines  # key case kept, MAC normalised
    assert not any(line.startswith("REQUEST_QUERY_MAC=x") for line in lines)  # the bad mac label was dropped


async def test_configured_machine_is_a_group_with_metadata(server):
    status, _, body = await fetch(server, "/ipxe?mac=52-54-00-99-99-99")
    assert (status, body.decode()) == (200, IPXE_P)
    status, _, body = await fetch(server, "/metadata?mac=52-54-00-99-99-99")
    assert "NAME=node9\n" in body.decode()


async def test_home(server):
    assert (await fetch(server, "/"))[2] == b"matchbox\n"


# --- machines' progress ---------------------------------------------------------------------------------

async def test_machine_view_shows_stages_in_order(server):
    mac = "52:54:00:a1:9c:ae"
    for path in ("/bootd.ipxe?mac=52-54-00-a1-9c-ae", "/ipxe?mac=52-54-00-a1-9c-ae", "/ignition?mac=52:54:00:a1:9c:ae"):
        assert (await fetch(server, path))[0] == 200
    status, _, body = await fetch(server, f"/api/v1/machines/{mac.replace(':', '-')}")
    view = json.loads(body)
    assert status == 200 and view["mac"] == mac
    assert [s["stage"] for s in view["stages"]] == ["boot-script", "boot-config", "ignition"]
    times = [s["time"] for s in view["stages"]]
    assert times == sorted(times)
    status, _, body = await fetch(server, "/api/v1/machines")
    listed = {m["mac"]: m for m in json.loads(body)["machines"]}
    assert listed[mac]["stage"] == "ignition"
    assert listed["52:54:00:99:99:99"]["known"] is True  # configured, whether seen yet or not


async def test_machine_view_errors(server):
    assert (await fetch(server, "/api/v1/machines/not-a-mac"))[0] == 400
    assert (await fetch(server, "/api/v1/machines/52:54:00:ff:ff:fe"))[0] == 404


# --- assets -----------------------------------------------------------------------------------------------

async def test_asset_get_range_head_and_conditional(server):
    content = (server.data / "assets/image/kernel").read_bytes()
    status, headers, body = await fetch(server, "/assets/image/kernel")
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(content).digest()
    status, headers, body = await fetch(server, "/assets/image/kernel", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == content[100:200] and headers["Content-Range"] == f"bytes 100-199/{len(content)}"
    status, headers, body = await fetch(server, "/assets/image/kernel", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(content)
    last_modified, etag = headers["Last-Modified"], headers["ETag"]
    assert (await fetch(server, "/assets/image/kernel", headers={"If-Modified-Since": last_modified}))[0] == 304
    assert (await fetch(server, "/assets/image/kernel", headers={"If-None-Match": etag}))[0] == 304


async def test_asset_directories(server):
    status, headers, _ = await fetch(server, "/assets/sub")
    assert status == 301 and headers["Location"] == "/assets/sub/"
    status, _, body = await fetch(server, "/assets/sub/")
    assert status == 200 and b'<a href="file.with.dots.txt">' in body
    assert (await fetch(server, "/assets/dir/"))[2] == b"<p>index</p>"
    assert (await fetch(server, "/assets"))[0] == 301


@pytest.mark.parametrize("path, code", [
    ("/assets/../secret.txt", "404"), ("/assets/../../etc/passwd", "404"), ("/assets/%2e%2e/secret.txt", "404"),
    ("/assets/sub/%2e%2e/%2e%2e/secret.txt", "404"), ("/assets/link-outside", "404"), ("/assets/..%2fsecret.txt", "404"),
    ("/assets/sub/..%5c..%5csecret.txt", "404"), ("/assets/%00", "400"), ("/assets/sub/file%00.txt", "400"),
    ("/assets//etc/passwd", "404"), ("/assets/missing", "404"),
])
def test_hostile_asset_paths_are_refused(server, path, code):
    assert curl(server.url(path)).stdout == code


@pytest.mark.parametrize("path", ["/assets/sub/file.with.dots.txt", "/assets/link-inside", "/assets/./sub/file.with.dots.txt"])
def test_legitimate_asset_paths_are_served(server, path):
    assert curl(server.url(path)).stdout == "200"


# --- bad input -----------------------------------------------------------------------------------------

async def test_huge_query_and_header_are_refused_and_serving_goes_on(server):
    assert curl(server.url("/ipxe?uuid=" + "a" * 20000)).stdout in ("400", "414")
    assert curl("-H", "X-Big: " + "b" * 20000, server.url("/ipxe?uuid=a1b2c3d4")).stdout in ("400", "431")
    assert (await fetch(server, "/ipxe?uuid=a1b2c3d4"))[0] == 200


async def test_bad_mac_label_is_dropped_and_logged(server):
    start = len(server.lines)
    status, _, body = await fetch(server, "/ipxe?uuid=a1b2c3d4&mac=zz:zz")
    assert (status, body.decode()) == (200, IPXE_P)
    server.wait_for_log(lambda l: "dropping label mac='zz:zz'" in l.get("message", ""), start=start)


# --- live data dir, reload and shutdown (a server of their own) -----------------------------------------

@pytest.fixture
def own_server(tmp_path):
    data = make_data_dir(tmp_path)
    (tmp_path / "bootd.yaml").write_text(CONFIG.format(data=data))
    bootd = BootdProcess(tmp_path / "bootd.yaml").start()
    bootd.root, bootd.data = tmp_path, data
    yield bootd
    bootd.stop()


async def test_group_edits_are_live(own_server):
    assert (await fetch(own_server, "/ipxe?os=installed"))[0] == 404
    write(own_server.data / "groups/installed.json", {"id": "installed", "profile": "g1h2i3j4",
                                                       "selector": {"os": "installed"}})
    assert (await fetch(own_server, "/ipxe?os=installed"))[0] == 200
    write(own_server.data / "groups/installed.json", "{broken")
    assert (await fetch(own_server, "/ipxe?os=installed"))[0] == 404
    assert (await fetch(own_server, "/ipxe?uuid=a1b2c3d4"))[0] == 200


async def test_sighup_with_broken_config_keeps_serving_then_a_good_one_applies(own_server):
    config = own_server.root / "bootd.yaml"
    good = config.read_text()
    config.write_text(good + "  - {name: bad, mac: nope}\n")
    start = len(own_server.lines)
    own_server.send(signal.SIGHUP)
    line = own_server.wait_for_log(lambda l: "reload refused" in l.get("message", ""), start=start)
    assert "bootd.yaml:7: machines[1].mac: 'nope' is not a MAC address" in line["message"]
    assert (await fetch(own_server, "/ipxe?mac=52:54:00:99:99:99"))[0] == 200
    config.write_text(good.replace("node9", "node8").replace("99:99:99", "88:88:88"))
    start = len(own_server.lines)
    own_server.send(signal.SIGHUP)
    own_server.wait_for_log(lambda l: l.get("message", "").startswith("reloaded"), start=start)
    assert (await fetch(own_server, "/ipxe?mac=52:54:00:88:88:88"))[0] == 200
    assert (await fetch(own_server, "/ipxe?mac=52:54:00:99:99:99"))[0] == 404


def test_sigterm_exits_zero(own_server):
    own_server.send(signal.SIGTERM)
    assert own_server.wait(20) == 0
    assert any(l.get("message") == "bootd stopped" for l in own_server.lines)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=30)


def test_run_with_broken_config_exits_2_with_every_error(tmp_path):
    (tmp_path / "bootd.yaml").write_text("htp: 1\nhttp:\n  port: x\n")
    result = run_cli("run", "-c", str(tmp_path / "bootd.yaml"))
    assert result.returncode == 2
    assert "bootd.yaml:1: htp: unknown key" in result.stderr and "bootd.yaml:3: http.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_lists_errors_and_warnings(tmp_path):
    data = make_data_dir(tmp_path)
    write(data / "groups/broken.json", "{")
    (tmp_path / "bootd.yaml").write_text(CONFIG.format(data=data))
    result = run_cli("check", "-c", str(tmp_path / "bootd.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: data dir: groups/broken.json: invalid JSON" in result.stdout
    assert "profile 'does-not-exist' is missing" in result.stdout
    assert "arch  0 BIOS       undionly.kpxe  not servable: no undionly.kpxe in" in result.stdout
    (tmp_path / "bootd.yaml").write_text("machines:\n  - {name: a, mac: '52:54:zz:00:00:01'}\n")
    result = run_cli("check", "-c", str(tmp_path / "bootd.yaml"))
    assert result.returncode == 1
    assert "bootd.yaml:2: machines[0].mac: '52:54:zz:00:00:01' is not a MAC address" in result.stderr


def test_example_config_checks_clean():
    result = run_cli("check", "-c", str(Path(__file__).parents[2] / "configs/bootd.yaml"))
    assert result.returncode == 0 and " 0 errors, 0 warnings" in result.stdout, result.stdout + result.stderr


async def test_report_changes_progress_only(server):
    def snapshot() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in server.data.rglob("*") if p.is_file()}

    before = snapshot()
    mac = "52-54-00-12-34-56"
    status, _, body = await fetch(server, f"/api/v1/machines/{mac}/report", method="POST",
                                  json={"ignition_sha256": "ab" * 32, "cmdline": "console=ttyS0 x=1"})
    assert (status, json.loads(body)) == (200, {"ok": True})
    view = json.loads((await fetch(server, f"/api/v1/machines/{mac}"))[2])
    assert view["stage"] == "report" and view["report"] == {"ignition_sha256": "ab" * 32, "cmdline": "console=ttyS0 x=1"}
    assert (await fetch(server, f"/api/v1/machines/{mac}/report", method="POST", data=b"{nope"))[0] == 400
    assert (await fetch(server, f"/api/v1/machines/{mac}/report", method="POST", data=b"[1]"))[0] == 400
    assert (await fetch(server, f"/api/v1/machines/{mac}/report", method="POST", data=b"x" * 20000))[0] == 413
    assert (await fetch(server, "/api/v1/machines/zz/report", method="POST", json={}))[0] == 400
    assert (await fetch(server, "/ipxe?uuid=a1b2c3d4", method="POST"))[0] == 405  # the only write is the report
    assert snapshot() == before


async def test_reports_and_labels_from_invented_macs_stay_within_the_byte_budget(own_server):
    """4096 invented MACs x 64 reports of 16 KiB grew bootd to 5.8 GiB; what it keeps now has a budget."""
    body = json.dumps({f"field{i}": "x" * 4000 for i in range(4)})  # 16 KiB, the most one report may be
    rss_before = int(next(l for l in Path(f"/proc/{own_server.proc.pid}/status").read_text().splitlines()
                          if l.startswith("VmRSS")).split()[1])
    async with aiohttp.ClientSession() as session:
        for i in range(1000):
            mac = f"02-00-00-00-{i >> 8:02x}-{i & 0xff:02x}"
            for _ in range(4):
                async with session.post(own_server.url(f"/api/v1/machines/{mac}/report"), data=body) as resp:
                    assert resp.status == 200
        labels = "&".join(f"label{i}={'y' * 200}" for i in range(30))  # 6 KiB of labels: the miss reason quotes them
        async with session.get(own_server.url(f"/ipxe?mac=02:00:00:00:ff:ff&{labels}")) as resp:
            assert resp.status == 404
        async with session.get(own_server.url("/api/v1/machines")) as resp:
            listing = await resp.json()
        async with session.get(own_server.url("/api/v1/machines/02:00:00:00:03:e7")) as resp:
            last = await resp.json()
        async with session.get(own_server.url("/api/v1/machines/02:00:00:00:ff:ff")) as resp:
            missed = await resp.json()
    assert listing["bytes_kept"] <= listing["bytes_budget"] == 16 * 1024 * 1024
    assert listing["machines_evicted"] > 0  # 1000 machines x 4 reports do not fit: the longest-unseen went
    assert sum(len(k) + len(v) for k, v in last["report"].items()) <= 4096
    assert all(len(e["detail"]) <= 1024 for e in last["events"] + missed["events"])
    rss_after = int(next(l for l in Path(f"/proc/{own_server.proc.pid}/status").read_text().splitlines()
                         if l.startswith("VmRSS")).split()[1])
    assert rss_after - rss_before < 3 * 16 * 1024, "grew by more than three times the budget"


async def test_a_slow_butane_rendering_does_not_stall_other_requests(own_server):
    """A Butane template with a large inline file takes seconds to render, translate and compress; it runs in a
    worker thread, so requests that come meanwhile (DHCP, TFTP and DNS share the loop) are answered at once:
    20 requests, one after another, all finish before that one Ignition config does."""
    import random

    rng = random.Random(3)
    words = ["alpha", "beta", "gamma", "delta", "node", "cluster", "boot", "kernel", "initrd", "flatcar"]
    inline = "".join("          " + " ".join(rng.choice(words) for _ in range(12)) + "\n" for _ in range(60_000))
    write(own_server.data / "ignition/slow.yaml", "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n"
          "    - path: /etc/big\n      contents:\n        inline: |\n" + inline)
    write(own_server.data / "profiles/slow.json", {"id": "slow", "ignition_id": "slow.yaml"})
    write(own_server.data / "groups/slow.json", {"id": "slow", "profile": "slow", "selector": {"mac": "52:54:00:5e:00:42"}})
    async with aiohttp.ClientSession() as session:
        slow = asyncio.ensure_future(session.get(own_server.url("/ignition?mac=52:54:00:5e:00:42")))
        await asyncio.sleep(0)  # the slow request goes out first
        answered = 0
        for _ in range(20):
            async with session.get(own_server.url("/boot.ipxe")) as resp:
                assert resp.status == 200
            answered += 1 if not slow.done() else 0
        async with await slow as resp:
            assert resp.status == 200 and b"/etc/big" in await resp.read()
    assert answered == 20
