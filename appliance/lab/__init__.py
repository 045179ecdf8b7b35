"""`bootd lab up` / `bootd lab down`: a private boot network on this Linux box, with QEMU machines that
PXE-boot through bootd and report back, shown live in the terminal.

What `up` makes (all inside one network namespace, `bootd-lab`; nothing touches the host's interfaces):
a bridge br0 with 10.77.0.1/24 (and fd77::1/64, so bootd's router advertisement has an address to come
from), one tap per machine, bootd as the only DHCP (authoritative), TFTP and HTTP server, and the machines
(QEMU, TCG; SeaBIOS with its iPXE NIC ROM, or OVMF with EDK2's own PXE). The default profile boots the test
payload (Debian's kernel and a busybox initrd, or the --kernel/--initrd given), which fetches its Ignition
config and reports. `up` returns when every machine has reported (or at --timeout) and leaves bootd
running, with its live progress page forwarded to a port on the host's 127.0.0.1 (lab/forward.py) for the
host's own browser; `down` ends every process it started, by PID, and deletes the namespace, which removes
the bridge and the taps. State: <dir>/lab.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

NAMESPACE = "bootd-lab"
SERVER = "10.77.0.1"
HTTP = f"http://{SERVER}:8080"
DEFAULT_DIR = Path("/var/tmp/bootd-lab")


@dataclass(frozen=True, slots=True)
class LabMachine:
    name: str
    mac: str
    tap: str


class LabError(Exception):
    pass


def own_directory(path: Path, mode: int = 0o700) -> Path:
    """`path` as a directory only this user can write, made if missing.

    The lab writes as root into it and later trusts what it finds there (lab.json's process ids, which
    `down` signals; a cached kernel it serves). A directory another local user made first (the default
    lives in world-writable /var/tmp), or a symlink planted in its place, is refused rather than used.
    """
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise LabError(f"{path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise LabError(f"{path} is not a directory (a symlink?): refusing to use it; remove it or pass --dir")
    if info.st_uid != os.geteuid():
        raise LabError(f"{path} belongs to uid {info.st_uid}, not to this user: refusing to trust what is in it; "
                       "remove it or pass --dir")
    if info.st_mode & 0o022:
        raise LabError(f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):o}): refusing to trust "
                       "what is in it; remove it or pass --dir")
    return path


def up(*, machines: int, firmware: str, kernel: Path | None, initrd: Path | None, directory: Path,
       timeout: float, out=sys.stdout) -> int:
    if os.geteuid() != 0:
        raise LabError("bootd lab needs root (network namespaces, taps)")
    emulator = "qemu-system-aarch64" if firmware == "arm64" else "qemu-system-x86_64"
    for tool in (emulator, "ip"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is missing (apt-get install qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64 "
                           "ipxe-qemu iproute2)")
    code, variables = FIRMWARE_FILES.get(firmware, ("", ""))
    for path in (code, variables):
        if path and not Path(path).is_file():
            raise LabError(f"{path} is missing (apt-get install ovmf qemu-efi-aarch64)")
    own_directory(directory)
    if (directory / "lab.json").exists():
        raise LabError(f"a lab is already up ({directory / 'lab.json'}): bootd lab down first")
    print("bootd lab: preparing the payload and the firmware (cached after the first run)", file=out, flush=True)
    if kernel is None or initrd is None:
        from appliance.lab.payload import build, build_arm64

        kernel, initrd = build_arm64() if firmware == "arm64" else build()
    firmware_dir = directory / "firmware"
    # Secure Boot machines boot Debian's signed shim and GRUB; arm64 ones Debian's arm64 GRUB (no arm64 iPXE)
    wanted = {"secureboot": "grubx64.efi", "arm64": "grubaa64.efi"}.get(firmware, "ipxe.efi")
    if not (firmware_dir / wanted).is_file():
        from appliance.firmware import fetch

        fetch(firmware_dir, signed=firmware == "secureboot", arm64=firmware == "arm64")
    lab = [LabMachine(f"node{i + 1}", f"52:54:00:1a:b0:{i + 1:02x}", f"labtap{i}") for i in range(machines)]
    config = _write_config(directory, lab, kernel, initrd, firmware_dir, firmware)
    state: dict = {"namespace": NAMESPACE, "pids": [], "directory": str(directory)}
    _save(directory, state)
    try:
        _network(lab)
        bootd = _start(["ip", "netns", "exec", NAMESPACE, sys.executable, "-m", "appliance", "run", "-c", str(config),
                        "--log-format", "json"], directory / "bootd.log")
        state["pids"].append(bootd.pid)
        _save(directory, state)
        _wait_http(timeout=30)
        page, forwarder = forward_to_host(NAMESPACE, f"{SERVER}:8080", directory / "forward.log")
        state["pids"].append(forwarder.pid)
        _save(directory, state)
        for machine in lab:
            vm = _start(["ip", "netns", "exec", NAMESPACE, *qemu_argv(machine.name, machine.mac, machine.tap, firmware,
                                                                       directory)], directory / f"{machine.name}.qemu.log")
            state["pids"].append(vm.pid)
        _save(directory, state)
        print(f"bootd lab: {machines} {firmware.upper()} machines powered on; bootd at {HTTP} in netns {NAMESPACE}",
              file=out, flush=True)
        print(f"bootd lab: live progress page at {page} (forwarded from this host into netns {NAMESPACE}); "
              f"in a terminal: bootd status --endpoint {page.removesuffix('/ui/')} --watch", file=out, flush=True)
        return _watch(lab, timeout, out)
    except BaseException:
        down(directory, out=out)
        raise


def down(directory: Path = DEFAULT_DIR, *, out=sys.stdout) -> int:
    state_file = own_directory(directory) / "lab.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"pids": []}
    for pid in state.get("pids", []):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    for pid in state.get("pids", []):
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    kill_namespace_processes(NAMESPACE)
    subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True)
    state_file.unlink(missing_ok=True)
    print(f"bootd lab: down ({len(state.get('pids', []))} processes ended, namespace {NAMESPACE} removed)", file=out)
    return 0


def kill_namespace_processes(namespace: str, wait: float = 5.0) -> None:
    """SIGKILL whatever still runs in `namespace`, and wait (bounded) until the kernel has reaped it, so
    the namespace can be deleted. Shared by `lab down`, the tests' NetLab and the benchmarks."""
    def pids() -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    remaining = pids()
    for pid in remaining:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel reaps SIGKILLed processes asynchronously
        remaining = pids()


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _save(directory: Path, state: dict) -> None:
    (directory / "lab.json").write_text(json.dumps(state))


def _write_config(directory: Path, lab: list[LabMachine], kernel: Path, initrd: Path, firmware_dir: Path,
                  firmware: str = "bios") -> Path:
    from appliance.lab.payload import write_data_dir, write_grub_profile

    data = write_data_dir(directory / "data", kernel, initrd, "lab")
    if firmware in ("secureboot", "arm64"):  # GRUB boots these: a profile written for GRUB (lab/payload.py)
        write_grub_profile(data, "lab", console="ttyAMA0" if firmware == "arm64" else "ttyS0")
    secure = ", secure_boot: true" if firmware == "secureboot" else ""
    listed = "".join(f'  - {{name: {m.name}, mac: "{m.mac}", ip: 10.77.0.{21 + i}, profile: lab{secure}}}\n'
                     for i, m in enumerate(lab))
    path = directory / "bootd.yaml"
    path.write_text(
        f"# written by bootd lab up\nstate_dir: {directory / 'state'}\ndomain: lab.test\n"
        f"listen: {{address: {SERVER}}}\nnames: {{provisioner: bootd}}\n"
        f"http: {{address: {SERVER}, port: 8080, data_dir: {data}}}\n"
        f"dhcp:\n  mode: authoritative\n  firmware_dir: {firmware_dir}\n  subnet: 10.77.0.0/24\n"
        f"  range: [10.77.0.100, 10.77.0.199]\n  router: {SERVER}\n  dns_servers: [{SERVER}]\n"
        f"tftp: {{address: {SERVER}}}\ndns: {{address: {SERVER}}}\nmachines:\n{listed}")
    return path


def _network(lab: list[LabMachine]) -> None:
    commands = [["ip", "netns", "add", NAMESPACE]]
    inside = [["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "br0", "type", "bridge"],
              ["ip", "addr", "add", f"{SERVER}/24", "dev", "br0"],
              ["ip", "addr", "add", "fd77::1/64", "dev", "br0", "nodad"], ["ip", "link", "set", "br0", "up"]]
    for machine in lab:
        inside += [["ip", "tuntap", "add", "dev", machine.tap, "mode", "tap"],
                   ["ip", "link", "set", machine.tap, "master", "br0", "up"]]
    commands += [["ip", "netns", "exec", NAMESPACE, *c] for c in inside]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise LabError(f"{' '.join(command)}: {result.stderr.strip()}")


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as output:
        return subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


PAGE_PORT = 8080  # on the host's loopback, when free


def forward_to_host(namespace: str, to: str, log: Path, port: int = PAGE_PORT) -> tuple[str, subprocess.Popen]:
    """A port on the host's 127.0.0.1 forwarded to `to` (HOST:PORT) inside `namespace`, so the host's browser
    reaches the lab's bootd; the page's URL and the forwarder's process. Another port when `port` is taken."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError:
        listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        with open(log, "wb") as output:
            proc = subprocess.Popen([sys.executable, "-m", "appliance.lab.forward", "--fd", str(listener.fileno()),
                                     "--netns", namespace, "--to", to], pass_fds=(listener.fileno(),),
                                    stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        return f"http://127.0.0.1:{listener.getsockname()[1]}/ui/", proc
    finally:
        listener.close()  # the forwarder holds its own copy


def qemu_argv(name: str, mac: str, tap: str, firmware: str, directory: Path, nic: str | None = None,
              serial_socket: Path | None = None) -> list[str]:
    """A QEMU machine (TCG: this box's KVM cannot run unmodified guests) on `tap`, serial log in `directory`.

    BIOS: SeaBIOS with the e1000's iPXE ROM, its console on the serial line (`graphics=off`: SeaBIOS's sercon).
    UEFI: OVMF with virtio-net and no ROM (`romfile=`), so EDK2's own PXE client boots. `nic` overrides the
    device ("e1000" under OVMF runs the ROM's iPXE EFI driver). `serial_socket`: the serial line is also a
    unix socket there, so a test can type into the firmware (the log is still written).
    """
    nic = nic or ("e1000" if firmware == "bios" else "virtio-net-pci,romfile=")
    model, _, options = nic.partition(",")
    log = directory / f"{name}.serial.log"
    serial = ["-serial", f"file:{log}"] if serial_socket is None else [
        "-chardev", f"socket,id=serial0,path={serial_socket},server=on,wait=off,logfile={log}",
        "-serial", "chardev:serial0"]
    code, template = FIRMWARE_FILES.get(firmware, (None, None))
    argv = ["qemu-system-aarch64" if firmware == "arm64" else "qemu-system-x86_64", "-accel", "tcg",
            "-m", "256", "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot", *serial,
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"{model},netdev=n0,mac={mac},bootindex=1" + (f",{options}" if options else "")]
    if code is not None and template is not None:
        variables = directory / f"{name}.vars.fd"
        shutil.copy(template, variables)
        machine = {"arm64": "virt", "secureboot": "q35,smm=on"}.get(firmware, "q35")
        argv += ["-M", machine, "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]
        if firmware == "arm64":
            argv += ["-cpu", "cortex-a57", "-m", "512"]  # the later -m wins: an arm64 kernel wants more room
        if firmware == "secureboot":  # the Secure Boot build keeps its variables in SMM-only flash
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on", "-m", "512",
                     # no IPv6 PXE (nothing answers it here): a refused binary goes on to HTTP boot at once
                     "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]
        if firmware == "uefi-http":  # no PXE boot options: the firmware goes straight to UEFI HTTP boot
            argv += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
                     "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]
    else:
        argv += ["-M", "pc,graphics=off"]
    return argv


# The UEFI firmware of each `--firmware` (Debian's ovmf and qemu-efi-aarch64): code, and the variable store
# each machine gets a copy of. secureboot: Secure Boot enabled, Microsoft's keys enrolled (README.Debian).
FIRMWARE_FILES = {
    "uefi": ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    "uefi-http": ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    "secureboot": ("/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
    "arm64": ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
}


def _get(path: str) -> dict:
    command = ["ip", "netns", "exec", NAMESPACE, "curl", "-sf", "--max-time", "5", HTTP + path]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise urllib.error.URLError(f"curl exit {result.returncode}")
    return json.loads(result.stdout)


def _wait_http(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get("/api/v1/stats")
            return
        except (urllib.error.URLError, json.JSONDecodeError):
            if time.monotonic() > deadline:
                raise LabError("bootd did not come up; see its log") from None
            time.sleep(0.2)


def _watch(lab: list[LabMachine], timeout: float, out) -> int:
    """Show each machine's stage until all reported; 0 when they did, 1 at the timeout."""
    started = time.monotonic()
    last = ""
    while True:
        views = {m.mac: _get(f"/api/v1/machines/{m.mac}") for m in lab}
        lines = []
        for machine in lab:
            view = views[machine.mac]
            stages = view.get("stages") or []
            first = stages[0]["time"] if stages else None
            trail = " > ".join(f"{s['stage']}{'' if s['ok'] else '!'} {s['time'] - first:.1f}s" for s in stages)
            lines.append(f"  {machine.name} {machine.mac}: {trail or 'powered on, waiting for DHCP'}")
        text = "\n".join(lines)
        if text != last:
            print(f"[{time.monotonic() - started:5.1f}s]\n{text}", file=out, flush=True)
            last = text
        if all(views[m.mac].get("stage") == "report" for m in lab):
            print(f"bootd lab: every machine reported in {time.monotonic() - started:.1f} s. bootd keeps running; "
                  f"`bootd lab down` removes the lab.", file=out, flush=True)
            return 0
        if time.monotonic() - started > timeout:
            print(f"bootd lab: not every machine reported within {timeout:.0f} s; see the serial logs in the lab dir",
                  file=out, flush=True)
            return 1
        time.sleep(1.0)  # a display refresh, not a wait for an outcome
