"""bootd as a user installs it: an sdist and a wheel built from this checkout (`python -m build`, which
builds the wheel from the sdist), the wheel installed into a fresh venv (not editable; its dependencies
from the package index), and every command run from a directory outside the checkout.

Then the CLI's promise: no command shows a Python traceback. An error is one line naming what failed, with
an exit code (1 the command did not do it, 2 usage or config, 70 a bug, 130 interrupted); `--debug` or
BOOTD_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bootd_process import BootdProcess

ROOT = Path(__file__).parents[2]
MAC = "52:54:00:a1:9c:ae"  # node1 of configs/bootd.yaml, a controller
PACKAGE_DATA = ("appliance/data/ipxe-SHA256SUMS", "appliance/templates/bootd.ipxe.j2",
                "appliance/api/proto/matchbox/rpc/rpcpb/rpc.proto", "appliance/ui/app.js")


@dataclass(frozen=True)
class Installed:
    sdist: Path
    wheel: Path
    venv: Path
    elsewhere: Path  # the cwd of every command: not the checkout, not the venv
    config: Path  # a copy of configs/bootd.yaml and configs/data

    def bootd(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
              ) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin/bootd"), *args], cwd=self.elsewhere, capture_output=True,
                              text=True, timeout=timeout, env=clean_env(env))


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without anything that could point Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "BOOTD_DEBUG")}
    return {**env, **(extra or {})}


def checkout_files() -> list[Path]:
    """What a clone of this checkout would have (tracked files, and new ones not ignored), as relative paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    paths = [Path(p) for p in sorted(set(listed.split("\0"))) if p and (ROOT / p).is_file()]
    # a build someone ran in the checkout is not source (a stale build/lib would even end up in the wheel)
    return [p for p in paths if p.parts[0] not in ("build", "dist") and not p.parts[0].endswith(".egg-info")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # build from a copy: the build writes bootd.egg-info/ and build/ next to the sources
    for relative in checkout_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, source / relative)
    dist = work / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)], capture_output=True,
                           text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin/pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                             timeout=900, cwd=work)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = work / "elsewhere"
    config = elsewhere / "configs/bootd.yaml"
    for relative in checkout_files():
        if relative.parts[0] == "configs":
            (elsewhere / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, elsewhere / relative)
    return Installed(sdist, wheel, venv, elsewhere, config)


# --- the wheel -------------------------------------------------------------------------------------------

def test_wheel_and_sdist_carry_every_file_of_the_package(installed):
    """Everything git has under appliance/ (code and package data) is in the sdist and the wheel."""
    in_wheel = set(zipfile.ZipFile(installed.wheel).namelist())
    with tarfile.open(installed.sdist) as sdist:
        in_sdist = {name.partition("/")[2] for name in sdist.getnames()}
    package = [str(p) for p in checkout_files() if p.parts[0] == "appliance"]
    assert set(PACKAGE_DATA) <= set(package)
    assert [p for p in package if p not in in_wheel] == []
    assert [p for p in package if p not in in_sdist] == []


def test_the_installed_package_is_not_the_checkout(installed):
    probe = ("import appliance, appliance.data, importlib.resources as r, sys; print(appliance.__file__); "
             "print(r.files('appliance.data').joinpath('ipxe-SHA256SUMS')); print(sys.path)")
    result = subprocess.run([str(installed.venv / "bin/python"), "-c", probe], cwd=installed.elsewhere,
                            capture_output=True, text=True, env=clean_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    module, sums, path = result.stdout.splitlines()
    site = installed.venv / "lib"
    assert Path(module).is_relative_to(site) and Path(sums).is_relative_to(site), result.stdout
    assert str(ROOT) not in path
    # `bootd lab up` starts the daemon as `python -m appliance run`: that works from the venv too
    version = subprocess.run([str(installed.venv / "bin/python"), "-m", "appliance", "--version"],
                             cwd=installed.elsewhere, capture_output=True, text=True, env=clean_env(), timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("bootd "), version.stderr


def test_check_firmware_fetch_and_check_again(installed):
    """A fresh install: check says nothing is servable; firmware fetch installs Debian's binaries, verified
    against the sums inside the package; check then says they are servable and verified."""
    before = installed.bootd("check", "-c", str(installed.config))
    assert before.returncode == 0, before.stdout + before.stderr
    assert "bootd.yaml: 0 errors" in before.stdout and "3 machines" in before.stdout
    assert "arch  0 BIOS       undionly.kpxe  not servable" in before.stdout

    firmware = installed.config.parent / "state/firmware"  # state_dir: state
    fetched = installed.bootd("firmware", "fetch", "--dir", str(firmware), timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    sums = zipfile.ZipFile(installed.wheel).read("appliance/data/ipxe-SHA256SUMS").decode()
    known = [line.split() for line in sums.splitlines() if line.strip() and not line.startswith("#")]
    assert {name for name, _, _ in known} == {"undionly.kpxe", "ipxe.efi", "snponly.efi"}
    for name, digest, _ in known:
        assert hashlib.sha256((firmware / name).read_bytes()).hexdigest() == digest
        assert f"installed {firmware / name} (sha256 {digest[:16]}..., verified)" in fetched.stdout

    after = installed.bootd("check", "-c", str(installed.config))
    assert after.returncode == 0, after.stdout + after.stderr
    assert "arch  0 BIOS       undionly.kpxe  servable (verified)" in after.stdout
    assert "arch  7 EFI_X64    ipxe.efi       servable (verified)" in after.stdout


def test_render_prints_what_the_machine_gets(installed):
    ipxe = installed.bootd("render", "-c", str(installed.config), "--mac", MAC, "ipxe")
    assert ipxe.returncode == 0, ipxe.stderr
    assert ipxe.stdout.startswith("#!ipxe\n") and ipxe.stdout.rstrip().endswith("boot")
    assert "kernel ${bootd}/assets/flatcar/amd64/stable/flatcar_production_pxe.vmlinuz" in ipxe.stdout
    assert f"group 'node1' (bootd.yaml:" in ipxe.stderr and "profile 'install-controller'" in ipxe.stderr

    ignition = installed.bootd("render", "-c", str(installed.config), "--mac", MAC, "ignition")
    assert ignition.returncode == 0, ignition.stderr
    config = json.loads(ignition.stdout)
    assert config["ignition"]["version"] == "3.4.0"
    assert [user["name"] for user in config["passwd"]["users"]] == ["core"]
    assert "ignition/install-controller.ign" in ignition.stderr


def test_run_from_the_wheel_serves_the_script_and_what_render_printed(installed, tmp_path):
    """The daemon from the wheel: /bootd.ipxe comes from the packaged template, /ipxe is what render said."""
    data = installed.config.parent / "data"
    config = tmp_path / "bootd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nhttp:\n  address: 127.0.0.1\n  port: 0\n"
                      f"  data_dir: {data}\nmachines:\n"
                      f'  - {{name: node1, mac: "{MAC}", role: controller, profile: install-controller}}\n')
    daemon = BootdProcess(config)
    daemon.argv = [str(installed.venv / "bin/bootd"), *daemon.argv[3:]]  # not `sys.executable -m appliance`
    daemon.start()
    try:
        with urllib.request.urlopen(daemon.url("/bootd.ipxe"), timeout=10) as response:
            script = response.read().decode()
        with urllib.request.urlopen(daemon.url(f"/ipxe?mac={MAC}"), timeout=10) as response:
            served = response.read().decode()
    finally:
        assert daemon.stop() == 0
    assert script.startswith("#!ipxe")
    rendered = installed.bootd("render", "-c", str(config), "--mac", MAC, "ipxe")
    assert rendered.returncode == 0 and served == rendered.stdout


def test_lab_payload_builds_from_the_wheel(installed, tmp_path):
    """What `bootd lab up` prepares first: the payload (Debian's kernel, a busybox initrd whose /init reports
    back). The kernel package is the one the e2e tests cache (fetched once, by this same code, if missing);
    the initrd is built again here, by the installed package, into a cache of the test's own."""
    def build(cache: Path | None) -> subprocess.CompletedProcess:
        env = clean_env({"BOOTD_PAYLOAD_CACHE": str(cache)} if cache else None)
        return subprocess.run([str(installed.venv / "bin/python"), "-c", "from appliance.lab.payload import build; "
                               "print(*build())"], cwd=installed.elsewhere, capture_output=True, text=True, env=env,
                              timeout=900)

    shared = build(None)  # /var/tmp/bootd-payload, as the lab and the e2e tests use it
    assert shared.returncode == 0, shared.stderr
    shared_work = Path(shared.stdout.split()[0]).parent / "work"
    cache = tmp_path / "payload"
    (cache / "work").mkdir(parents=True, mode=0o755)
    cache.chmod(0o755)
    for kept in [*shared_work.glob("linux-image-*.deb"), shared_work / "root"]:  # the download and its unpacking
        (cache / "work" / kept.name).symlink_to(kept)
    ours = build(cache)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.split() == [str(cache / "vmlinuz"), str(cache / "initrd.gz")]
    listing = subprocess.run(f"gunzip -c {cache / 'initrd.gz'} | cpio -t --quiet", shell=True, capture_output=True,
                             text=True, check=True).stdout.split()
    assert {"init", "bin/busybox", "lib/modules/order", "lib/modules/virtio_net.ko"} <= set(listing)


# --- no tracebacks ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def broken(installed) -> Path:
    """Files and directories that are not what a command expects."""
    root = installed.elsewhere / "broken"
    root.mkdir()
    (root / "a-file").write_text("not a directory\n")
    (root / "a-directory").mkdir()
    (root / "latin1.yaml").write_bytes("domain: example.com\n# caf\xe9\n".encode("latin-1"))
    (root / "not-a.deb").write_text("not a Debian package\n")
    return root


FAILURES = [  # (id, argv with {broken} and {config}, exit code, what stderr's single line says)
    ("config-is-a-directory", "check -c {broken}/a-directory", 1, "a-directory: cannot read: Is a directory"),
    ("config-not-utf8", "check -c {broken}/latin1.yaml", 1, "latin1.yaml:2: (file): not UTF-8 text"),
    ("run-config-not-utf8", "run -c {broken}/latin1.yaml", 2, "latin1.yaml:2: (file): not UTF-8 text"),
    ("config-missing", "render -c {broken}/nothing.yaml --mac 52:54:00:a1:9c:ae ipxe", 2,
     "nothing.yaml: cannot read: No such file or directory"),
    ("render-bad-mac", "render -c {config} --mac 52:54:00:zz ipxe", 2, "--mac '52:54:00:zz': not a MAC address"),
    ("firmware-dir-is-a-file", "firmware fetch --dir {broken}/a-file", 1, "a-file is not a directory"),
    ("firmware-dir-cannot-be-made", "firmware fetch --dir /proc/bootd-firmware", 1,
     "/proc/bootd-firmware: cannot make the firmware directory"),
    ("firmware-bad-deb", "firmware fetch --dir {broken}/fw --deb {broken}/not-a.deb", 1,
     "dpkg-deb -x not-a.deb failed"),
    ("certs-out-is-a-file", "certs init --san DNS:matchbox.example.com --out {broken}/a-file", 1,
     "a-file is not a directory"),
    ("certs-out-cannot-be-made", "certs init --san DNS:matchbox.example.com --out /proc/bootd-tls", 1,
     "/proc/bootd-tls: cannot make the directory"),
    ("certs-negative-days", "certs client laptop --dir {broken} --days -5", 2, "-5 is not between 1 and 36500"),
    ("api-no-client-cert", "get profiles --endpoint 127.0.0.1:9 --ca-file {broken}/none.crt", 2,
     "cannot read {broken}/none.crt: No such file or directory"),
    ("apply-missing-file", "apply -f {broken}/none.json --ca-file {broken}/a-file --cert-file {broken}/a-file "
     "--key-file {broken}/a-file", 1, "none.json: cannot read: No such file or directory"),
    ("probe-arch-out-of-range", "probe -i lo --arch 70000", 2, "70000 is not between 0 and 65535"),
    ("probe-missing-interface", "probe -i bootd-nosuch0 --timeout 0.5", 2, "bootd-nosuch0: no such interface"),
    ("lab-no-machines", "lab up --machines 0", 2, "0 is not between 1 and 79"),
    ("lab-missing-kernel", "lab up --kernel {broken}/vmlinuz --initrd {broken}/initrd", 2, "vmlinuz: no such file"),
    ("lab-dir-is-a-file", "lab down --dir {broken}/a-file", 2, "a-file"),
]


@pytest.mark.parametrize("argv, code, says", [pytest.param(a, c, s, id=i) for i, a, c, s in FAILURES])
def test_a_failing_command_says_one_line_and_no_traceback(installed, broken, argv, code, says):
    fill = {"broken": broken, "config": installed.config}
    result = installed.bootd(*argv.format(**fill).split())
    lines = [line for line in result.stderr.splitlines() if not line.startswith("usage:") and
             not line.startswith(" ")]  # argparse's usage lines come before its one error line
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and says.format(**fill) in lines[0], result.stderr


@pytest.fixture
def corrupt_install(installed):
    """An installed package whose sums file was edited badly (a line lost a field): reading it fails in a
    way no command expects, which is what a bug looks like. Restored afterwards."""
    sums = next((installed.venv / "lib").glob("python3*/site-packages/appliance/data/ipxe-SHA256SUMS"))
    good = sums.read_bytes()
    sums.write_bytes(good + b"ipxe-extra.efi  0123456789abcdef\n")
    yield
    sums.write_bytes(good)


def test_a_bug_is_one_line_with_exit_70_and_the_traceback_only_on_request(installed, corrupt_install):
    config = str(installed.config)
    quiet = installed.bootd("check", "-c", config)
    assert quiet.returncode == 70 and "Traceback" not in quiet.stderr
    (line,) = quiet.stderr.splitlines()
    assert line.startswith("bootd check: internal error at appliance/firmware.py:") and "ValueError" in line
    assert line.endswith("(rerun with --debug or BOOTD_DEBUG=1 for the traceback)")

    for loud in (installed.bootd("--debug", "check", "-c", config), installed.bootd("check", "-c", config, "--debug"),
                 installed.bootd("check", "-c", config, env={"BOOTD_DEBUG": "1"})):
        assert loud.returncode == 70
        assert loud.stderr.startswith("Traceback (most recent call last):") and "in known_files" in loud.stderr
        assert loud.stderr.splitlines()[-1].startswith("bootd check: internal error at appliance/firmware.py:")


def test_ctrl_c_exits_130_without_a_traceback(installed, broken):
    """SIGINT while the command waits on a file (a FIFO with no writer yet: the CA file it reads first)."""
    fifo = broken / "ca.fifo"
    os.mkfifo(fifo)
    command = subprocess.Popen([str(installed.venv / "bin/bootd"), "get", "profiles", "--ca-file", str(fifo)],
                               cwd=installed.elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=clean_env(), start_new_session=True)
    try:
        writer = os.open(fifo, os.O_WRONLY)  # returns once bootd has opened it: it now waits in read()
        command.send_signal(signal.SIGINT)
        _, stderr = command.communicate(timeout=30)
        os.close(writer)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
            command.wait()
    assert command.returncode == 130 and "Traceback" not in stderr
    assert stderr.splitlines() == ["bootd get: interrupted"]


def test_a_reader_that_went_away_is_exit_141_and_no_complaint(installed):
    """`bootd check | head -1`: the pipe is closed before bootd writes (here: before it even starts)."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([str(installed.venv / "bin/bootd"), "check", "-c", str(installed.config)],
                                cwd=installed.elsewhere, stdout=write, stderr=subprocess.PIPE, text=True,
                                env=clean_env(), timeout=60)
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stderr == ""
