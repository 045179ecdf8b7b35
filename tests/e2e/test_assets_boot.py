"""The assets tracker keeps a channel current and a machine boots what it switched to: a mirror of the test's
own (Flatcar's layout, inside the lab's namespace) publishes 1.0.0 and then 2.0.0 of a "release" whose kernel
is the reporting payload's and whose initrd carries the release's version string; bootd (`check: 1s`)
fetches, verifies (the test's key) and switches to each in turn; then a BIOS QEMU machine boots the
example-style profile `/assets/flatcar/amd64/stable/...` and its report says 2.0.0."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.lab.payload import INIT, build
from tests.assets_mirror import SigningKey, publish_flatcar
from tests.bootd_process import BootdProcess
from tests.e2e.test_boot import BOOT_SECONDS, firmware, serial_tail, start_vm
from tests.integration.test_http import write
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
KERNEL, INITRD = "flatcar_production_pxe.vmlinuz", "flatcar_production_pxe_image.cpio.gz"
MACHINE = ("52:54:00:e4:00:01", "bios", "e1000", "flatcar-live")
MIRROR_PORT = 8099


def release_initrd(base_initrd: bytes, version: str, work: Path) -> bytes:
    """The payload's initrd with a second archive appended whose /init also reports `release=<version>` (the
    kernel unpacks concatenated archives in order; a later file replaces an earlier one)."""
    marker = '\\"cmdline\\": \\"$CMDLINE\\"}'
    assert marker in INIT, "the payload's report line changed: update this test's marker"
    init = INIT.replace(marker, f'\\"cmdline\\": \\"$CMDLINE\\", \\"release\\": \\"{version}\\"}}')
    tree = work / f"overlay-{version}"
    tree.mkdir(parents=True)
    (tree / "init").write_text(init)
    (tree / "init").chmod(0o755)
    archive = subprocess.run("echo init | cpio -o -H newc --quiet", shell=True, cwd=tree, capture_output=True,
                             check=True).stdout
    return base_initrd + gzip.compress(archive)


def assets_switch(version: str, previous: str):
    return lambda line: (line.get("stage") == "assets" and line.get("ok") is True
                         and f"switched to {version} (was {previous})" in line.get("message", ""))


@pytest.fixture
def qemu():
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 is not installed")


def test_the_tracker_switches_stable_and_a_machine_boots_the_new_release(qemu, tmp_path):
    started = time.monotonic()
    kernel, initrd = build()
    key = SigningKey()
    mirror = tmp_path / "mirror"
    releases = {version: {KERNEL: kernel.read_bytes(), INITRD: release_initrd(initrd.read_bytes(), version, tmp_path)}
                for version in ("1.0.0", "2.0.0")}
    publish_flatcar(mirror, key, "1.0.0", releases["1.0.0"])
    data = tmp_path / "data"
    write(data / "profiles/flatcar-live.json", {"id": "flatcar-live", "ignition_id": "live.ign", "boot": {
        "kernel": f"${{bootd}}/assets/flatcar/amd64/stable/{KERNEL}",
        "initrd": [f"${{bootd}}/assets/flatcar/amd64/stable/{INITRD}"],
        "args": [f"initrd={INITRD}", "console=ttyS0", "quiet", "bootd.ignition=${bootd}/ignition?mac=${mac:hexhyp}",
                 "bootd.report=${bootd}/api/v1/machines/${mac:hexhyp}/report"]}})
    write(data / "ignition/live.ign", {"ignition": {"version": "3.4.0"}})
    (data / "assets").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "bootd.yaml").write_text(
        f"state_dir: {tmp_path / 'state'}\nlisten: {{address: 192.0.2.1}}\n"
        f"http: {{address: 192.0.2.1, port: 8080, data_dir: {data}}}\n"
        f"dhcp:\n  firmware_dir: {firmware()}\n  mode: authoritative\n  subnet: 192.0.2.0/24\n"
        f"  range: [192.0.2.100, 192.0.2.150]\n  router: 192.0.2.1\n"
        f"assets:\n  check: 1s\n  track:\n    - {{os: flatcar, channel: stable, arch: amd64, "
        f"mirror: 'http://127.0.0.1:{MIRROR_PORT}', keyring: {key.public}}}\n"
        f"machines:\n  - {{name: node1, mac: '{MACHINE[0]}', profile: flatcar-live}}\n")
    try:
        with NetLab("ae2e", bridge=True) as lab:
            lab.start(lab.server_ns, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(MIRROR_PORT),
                                      "--directory", str(mirror)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.run(lab.server_ns, ["curl", "-sf", "--retry", "20", "--retry-connrefused", "--retry-delay", "0",
                                    "-o", "/dev/null", f"http://127.0.0.1:{MIRROR_PORT}/"])
            bootd = BootdProcess(tmp_path / "bootd.yaml", lab=lab, ns=lab.server_ns).start()
            try:
                bootd.wait_for_log(assets_switch("1.0.0", "nothing"), timeout=60)
                directory = publish_flatcar(mirror, key, "2.0.0", releases["2.0.0"], current=False)
                assert directory.is_dir()
                start = len(bootd.lines)
                link = mirror / "stable/amd64-usr/current"
                (mirror / "stable/amd64-usr/current.new").symlink_to("2.0.0")
                os.replace(mirror / "stable/amd64-usr/current.new", link)
                bootd.wait_for_log(assets_switch("2.0.0", "1.0.0"), timeout=60, start=start)
                switched = time.monotonic()

                start_vm(lab, tmp_path, 0, "node1", MACHINE)
                try:
                    bootd.wait_for_log(lambda l: l.get("stage") == "report" and l.get("mac") == MACHINE[0],
                                       timeout=BOOT_SECONDS)
                except AssertionError as exc:
                    raise AssertionError(f"node1 did not report.\nserial:\n{serial_tail(tmp_path, 'node1')}\n{exc}") \
                        from None
                booted = time.monotonic()
                view = json.loads(lab.run(lab.server_ns, ["curl", "-sf",
                                                          f"http://192.0.2.1:8080/api/v1/machines/{MACHINE[0]}"]).stdout)
                assert view["report"]["release"] == "2.0.0", view["report"]
                stages = {s["stage"]: s for s in view["stages"]}
                assert f"/assets/flatcar/amd64/stable/{KERNEL}" in stages["kernel"]["detail"]
                assert f"/assets/flatcar/amd64/stable/{INITRD} ({len(releases['2.0.0'][INITRD])} bytes" \
                    in stages["initrd"]["detail"]
                print(f"fetched and switched twice in {switched - started:.1f} s, the machine booted and reported in "
                      f"{booted - switched:.1f} s")
            finally:
                assert bootd.stop() == 0
    finally:
        key.close()
