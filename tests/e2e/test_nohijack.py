"""Real firmware proves the never-hijack rule: a QEMU BIOS machine (SeaBIOS, the e1000's iPXE ROM) with the
network first and a disk second in its boot order, on a bridge where bootd is the only DHCP server.

1. A group could select any machine (it selects by uuid), but selects not this one: bootd's DHCP answers,
   its script chains to /bootd/ipxe, which says there is nothing for this machine, and iPXE exits. The
   firmware then boots the disk: a 512-byte boot sector made here, which prints BOOTED-FROM-DISK on COM1.
2. No group could select its MAC (the group is removed; SIGHUP): bootd's authoritative DHCP gives it an
   address but no boot file, iPXE has nothing to boot and exits, and the disk boots again.
Either way the serial line shows the firmware moving on, once, instead of a script retrying forever.

UEFI (OVMF with the e1000's iPXE ROM, which runs as a UEFI driver there): after the same message iPXE
returns to OVMF's boot manager, which goes on to its next boot option. (Debian 12's ipxe.efi, chainloaded
by OVMF's own PXE, prints the message and then never returns to the boot manager, with `exit 1` and with
`exit 0` alike: not tested here; see the report.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from appliance.lab import qemu_argv
from tests.bootd_process import BootdProcess
from tests.integration.test_http import write
from tests.netns import NetLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
MAC = "52:54:00:e4:00:01"
MARKER = b"BOOTED-FROM-DISK"
BOOT_SECONDS = 240  # TCG: SeaBIOS + iPXE DHCP + the 5 s message ~30 s on an idle 2-core box


def boot_sector(message: bytes) -> bytes:
    """A BIOS boot sector (real mode, loaded at 0x7c00) that writes `message` to COM1 and halts."""
    code = bytearray()
    code += b"\xfa\xfc"  # cli; cld
    code += b"\x31\xc0\x8e\xd8"  # xor ax, ax; mov ds, ax
    mov_si = len(code)
    code += b"\xbe\x00\x00"  # mov si, <message> (patched below)
    next_char = len(code)
    code += b"\xac\x84\xc0"  # lodsb; test al, al
    jz_done = len(code)
    code += b"\x74\x00"  # jz done (patched below)
    code += b"\x88\xc4\xba\xfd\x03"  # mov ah, al; mov dx, 0x3fd (line status)
    wait = len(code)
    code += b"\xec\xa8\x20"  # in al, dx; test al, 0x20 (transmitter empty)
    code += bytes((0x74, (wait - (len(code) + 2)) & 0xFF))  # jz wait
    code += b"\xba\xf8\x03\x88\xe0\xee"  # mov dx, 0x3f8; mov al, ah; out dx, al
    code += bytes((0xEB, (next_char - (len(code) + 2)) & 0xFF))  # jmp next_char
    done = len(code)
    code += b"\xf4\xeb\xfd"  # done: hlt; jmp done
    code[jz_done + 1] = done - (jz_done + 2)
    code[mov_si + 1 : mov_si + 3] = (0x7C00 + len(code)).to_bytes(2, "little")
    code += message + b"\r\n\0"
    assert len(code) <= 510
    return bytes(code).ljust(510, b"\0") + b"\x55\xaa"


def make_config(tmp: Path, groups: bool, firmware_dir: Path | None = None) -> Path:
    data = tmp / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "${bootd}/assets/vmlinuz", "args": []}})
    group = data / "groups/other.json"
    if groups:  # selects by uuid: could be any machine, is not this one
        write(group, {"id": "other", "profile": "p", "selector": {"uuid": "not-this-machine"}})
    else:
        group.unlink(missing_ok=True)
    (tmp / "state").mkdir(exist_ok=True)
    (tmp / "bootd.yaml").write_text(
        f"state_dir: {tmp / 'state'}\nlisten: {{address: 192.0.2.1}}\n"
        f"http: {{address: 192.0.2.1, port: 8080, data_dir: {data}}}\n"
        "dhcp:\n  mode: authoritative\n  subnet: 192.0.2.0/24\n  range: [192.0.2.100, 192.0.2.150]\n"
        "  router: 192.0.2.1\n"
        + (f"  firmware_dir: {firmware_dir}\ntftp: {{address: 192.0.2.1}}\n" if firmware_dir else ""))
    return tmp / "bootd.yaml"


def run_vm(lab: NetLab, tmp: Path, name: str, tap: str, disk: Path) -> tuple[subprocess.Popen, Path]:
    argv = qemu_argv(name, MAC, tap, "bios", tmp)
    argv += ["-drive", f"file={disk},format=raw,if=none,id=disk0", "-device", "ide-hd,drive=disk0,bootindex=2"]
    proc = lab.start(lab.server_ns, argv, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.qemu.log", "wb"))
    return proc, tmp / f"{name}.serial.log"


def wait_for_serial(path: Path, text: bytes, timeout: float) -> bytes:
    """The serial log once it holds `text` (QEMU writes it as the guest prints)."""
    deadline = time.monotonic() + timeout
    while True:
        log = path.read_bytes() if path.exists() else b""
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} on the serial line within {timeout:.0f} s:\n"
                                 f"{log[-2000:].decode(errors='replace')}")
        time.sleep(0.5)


def end(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


@pytest.fixture
def qemu():
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 is not installed")


def test_a_machine_bootd_has_nothing_for_boots_its_own_disk(qemu, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(boot_sector(MARKER).ljust(1 << 20, b"\0"))
    with NetLab(f"nh{os.getpid() % 100000}", bridge=True) as lab:
        tap = lab.add_tap("nhtap0")
        bootd = BootdProcess(make_config(tmp_path, groups=True), lab=lab, ns=lab.server_ns).start()
        try:
            # 1. DHCP answers (a group could select it); /bootd/ipxe says nothing is here; iPXE exits
            started = time.monotonic()
            vm, serial = run_vm(lab, tmp_path, "script", tap, disk)
            log = wait_for_serial(serial, MARKER, BOOT_SECONDS)
            end(vm)
            print(f"exit script -> disk: {time.monotonic() - started:.1f} s")
            text = log.decode(errors="replace")
            assert f"bootd: nothing to boot for {MAC}: no group selects it" in text, text[-3000:]
            assert "retrying" not in text and text.index("nothing to boot") < text.index(MARKER.decode())
            view = json.loads(lab.run(lab.server_ns, ["curl", "-sf",
                                                      f"http://192.0.2.1:8080/api/v1/machines/{MAC}"]).stdout)
            config_steps = [s for s in view["stages"] if s["stage"] == "boot-config"]
            assert len(config_steps) == 1 and config_steps[0]["count"] == 1, view["stages"]  # asked once
            assert config_steps[0]["ok"] is False and f'mac: "{MAC}"' in config_steps[0]["detail"]
            # 2. no group could select it: an address, no boot file; iPXE has nothing to boot and exits
            make_config(tmp_path, groups=False)
            mark = len(bootd.lines)
            bootd.send(signal.SIGHUP)
            bootd.wait_for_log(lambda l: "PXE answered for 0 MACs" in l.get("message", ""), start=mark)
            started = time.monotonic()
            vm, serial = run_vm(lab, tmp_path, "dhcp", tap, disk)
            log = wait_for_serial(serial, MARKER, BOOT_SECONDS)
            end(vm)
            print(f"no boot file -> disk: {time.monotonic() - started:.1f} s")
            assert b"bootd:" not in log  # bootd's script was never fetched
            line = bootd.wait_for_log(lambda l: l.get("mac") == MAC and "no group can select this MAC"
                                      in l.get("message", ""), start=mark)
            assert line["stage"] == "dhcp" and line["ok"] is False
        finally:
            assert bootd.stop() == 0


def test_uefi_ipxe_returns_to_the_boot_manager_which_tries_the_next_option(qemu, tmp_path):
    with NetLab(f"nu{os.getpid() % 100000}", bridge=True) as lab:
        tap = lab.add_tap("nutap0")
        bootd = BootdProcess(make_config(tmp_path, groups=True), lab=lab, ns=lab.server_ns).start()
        try:
            started = time.monotonic()
            vm = lab.start(lab.server_ns, qemu_argv("uefi", MAC, tap, "uefi", tmp_path, "e1000"),
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "uefi.qemu.log", "wb"))
            serial = tmp_path / "uefi.serial.log"
            wait_for_serial(serial, b"bootd: nothing to boot for", BOOT_SECONDS)
            # OVMF's boot manager reports the iPXE option failed and starts its next one (its own PXE)
            log = wait_for_serial(serial, b">>Start PXE over IPv4", BOOT_SECONDS)
            end(vm)
            print(f"exit script -> next UEFI boot option: {time.monotonic() - started:.1f} s")
            text = log.decode(errors="replace")
            after = text[text.index("bootd: nothing to boot for"):]
            assert re.search(r'BdsDxe: failed to load Boot[0-9A-F]{4} "UEFI PXEv4 \(MAC:525400E40001\)"', after), after
            assert "retrying" not in text
        finally:
            assert bootd.stop() == 0
