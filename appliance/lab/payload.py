"""A test payload for `bootd lab` and the end-to-end tests, made when needed and cached (never committed):
Debian's kernel and a busybox initrd.

The initrd's /init loads the NIC driver, gets an address with udhcpc, fetches its Ignition config from the
URL in `bootd.ignition=` on its kernel command line, and POSTs to `bootd.report=` the sha256 of that config
and its /proc/cmdline; then it powers off. Both URLs come from the profile and are expanded by iPXE
(`${bootd}`, `${mac:hexhyp}`), so the report proves the whole chain: DHCP, iPXE, the script, the profile's
kernel arguments, Ignition and the way back.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from appliance.atomic import write_atomically
from appliance.lab import own_directory

CACHE = Path(os.environ.get("BOOTD_PAYLOAD_CACHE", "/var/tmp/bootd-payload"))
MODULES = ["virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "failover",
           "net_failover", "virtio_net", "e1000"]

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin 2>/dev/null
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
command -v timeout >/dev/null || timeout() { shift; "$@"; }  # Debian's installer initrd (arm64) has none
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
echo "PAYLOAD: start"
for m in $(cat /lib/modules/order); do
  [ -f /lib/modules/$m.ko ] && { insmod /lib/modules/$m.ko || echo "PAYLOAD: insmod $m failed"; }
done
for a in $(cat /proc/cmdline); do
  case "$a" in bootd.ignition=*) IGN="${a#bootd.ignition=}";; bootd.report=*) REPORT="${a#bootd.report=}";; esac
done
IF=""
for i in $(seq 1 200); do
  for n in /sys/class/net/*; do n=${n##*/}; [ "$n" = lo ] || { IF=$n; break; }; done
  [ -n "$IF" ] && break; sleep 0.1
done
[ -z "$IF" ] && { echo "PAYLOAD: no NIC: $(ls /sys/class/net) $(lsmod | tr '\n' ' ')"; dmesg | tail -20; poweroff -f; }
ip link set lo up; ip link set "$IF" up
for i in $(seq 1 50); do [ "$(cat /sys/class/net/$IF/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
udhcpc -i "$IF" -f -q -n -t 10 -T 1 -V bootd-payload -s /usr/share/udhcpc/default.script
echo "PAYLOAD: address $(ip -4 addr show $IF | awk '/inet /{print $2}')"
for t in 1 2 3 4 5; do timeout 20 wget -q -O /tmp/ignition "$IGN" && break; sleep 1; done
SHA=$(sha256sum /tmp/ignition | cut -d' ' -f1)
CMDLINE=$(cat /proc/cmdline | tr -d '"\\')
echo "PAYLOAD: ignition sha256 $SHA"
for t in 1 2 3 4 5; do
  timeout 20 wget -q -O /tmp/response --header "Content-Type: application/json" \
    --post-data "{\"ignition_sha256\": \"$SHA\", \"cmdline\": \"$CMDLINE\"}" "$REPORT" && break
  sleep 1
done
echo "PAYLOAD: reported $(cat /tmp/response 2>/dev/null)"
sync
poweroff -f
"""

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface"
    # a machine behind a DHCP relay reaches bootd through its segment's router
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface" ;;
esac
exit 0
"""


def build(cache: Path = CACHE) -> tuple[Path, Path]:
    """(vmlinuz, initrd.gz), built once per cache directory."""
    kernel, initrd = cache / "vmlinuz", cache / "initrd.gz"
    own_directory(cache, 0o755)  # root serves what it finds here: nobody else may have made or filled it
    # the initrd is made again when what goes into it changed (a cache from an older bootd)
    recipe = hashlib.sha256("\0".join([INIT, UDHCPC_SCRIPT, *MODULES]).encode()).hexdigest()
    stamp = cache / "initrd.recipe"
    if kernel.is_file() and initrd.is_file() and stamp.is_file() and stamp.read_text() == recipe:
        return kernel, initrd
    work = own_directory(cache / "work", 0o755)  # 0755: apt's download user reads here
    debs = sorted(work.glob("linux-image-*.deb"))
    if not debs:
        depends = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True,
                                 check=True).stdout
        package = next(line.split()[1] for line in depends.splitlines() if "Depends: linux-image-" in line)
        subprocess.run(["apt-get", "download", package], cwd=work, check=True, capture_output=True)
        debs = sorted(work.glob("linux-image-*.deb"))
    root = work / "root"
    if not (root / "boot").is_dir():
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
    version = sorted(os.listdir(root / "lib/modules"))[0]
    tree = work / "initrd"
    shutil.rmtree(tree, ignore_errors=True)
    for sub in ("bin", "dev", "proc", "sys", "tmp", "lib/modules", "usr/share/udhcpc"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", tree / "bin/busybox")
    found: dict[str, bytes] = {}
    for module in MODULES:
        matches = list((root / "lib/modules" / version).rglob(f"{module}.ko"))
        if matches:
            found[module] = matches[0].read_bytes()
    _write_modules(tree, found)
    for path, text in ((tree / "init", INIT), (tree / "usr/share/udhcpc/default.script", UDHCPC_SCRIPT)):
        path.write_text(text)
        path.chmod(0o755)
    archive = subprocess.run("find . | cpio -o -H newc --quiet", shell=True, cwd=tree, capture_output=True,
                             check=True).stdout
    write_atomically(initrd, gzip.compress(archive, 6), mode=0o644)  # another test may be reading the old one
    write_atomically(kernel, (root / "boot" / f"vmlinuz-{version}").read_bytes(), mode=0o644)
    write_atomically(stamp, recipe.encode(), mode=0o644)
    return kernel, initrd


def write_data_dir(data: Path, kernel: Path, initrd: Path, profile: str) -> Path:
    """A matchbox data dir that boots the payload on every machine: the kernel and initrd as assets, one
    profile named `profile` (reporting to bootd, its Ignition fetched), a default group, an empty Ignition."""
    for sub in ("profiles", "groups", "ignition", "assets"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(kernel, data / "assets/vmlinuz")
    shutil.copy(initrd, data / "assets/initrd.img")
    (data / f"profiles/{profile}.json").write_text(json.dumps({"id": profile, "ignition_id": f"{profile}.ign", "boot": {
        "kernel": "${bootd}/assets/vmlinuz", "initrd": ["${bootd}/assets/initrd.img"],
        # initrd= names the image for the kernel's EFI stub (ipxe.efi hands initrds over that way)
        "args": ["initrd=initrd.img", "console=ttyS0", "quiet", f"bootd.profile={profile}",
                 "bootd.ignition=${bootd}/ignition?mac=${mac:hexhyp}",
                 "bootd.report=${bootd}/api/v1/machines/${mac:hexhyp}/report"]}}, indent=2))
    (data / "groups/default.json").write_text(json.dumps({"id": "default", "profile": profile}))
    (data / f"ignition/{profile}.ign").write_text(json.dumps({"ignition": {"version": "3.4.0"}}))
    return data


# --- arm64: Debian has no arm64 kernel package an amd64 apt can fetch, but its installer's netboot images
# (debian-installer-12-netboot-arm64, architecture all) hold Debian's arm64 kernel and an initrd with an arm64
# userland and the kernel's modules. The payload's initrd is that initrd with its modules cut down to the
# NIC's and /init replaced by the payload's.
ARM64_PACKAGE = "debian-installer-12-netboot-arm64"
ARM64_IMAGES = "usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64"


def build_arm64(cache: Path = CACHE / "arm64") -> tuple[Path, Path]:
    """(vmlinuz.gz, initrd.gz) for an arm64 machine, built once per cache directory. GRUB ungzips the kernel
    as it loads it (the image is 33 MB, 11 MB compressed: a third of the TFTP transfer)."""
    kernel, initrd = cache / "vmlinuz.gz", cache / "initrd.gz"
    own_directory(cache, 0o755)
    recipe = hashlib.sha256("\0".join([INIT, UDHCPC_SCRIPT, *MODULES, "arm64"]).encode()).hexdigest()
    stamp = cache / "initrd.recipe"
    if kernel.is_file() and initrd.is_file() and stamp.is_file() and stamp.read_text() == recipe:
        return kernel, initrd
    work = own_directory(cache / "work", 0o755)
    root = installer_tree(work)
    images = root / ARM64_IMAGES
    tree = work / "initrd"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], cwd=tree, input=gzip.decompress((images / "initrd.gz").read_bytes()),
                   capture_output=True, check=True)
    version = sorted(os.listdir(tree / "lib/modules"))[0]
    modules_tree = tree / "lib/modules" / version
    found = {}
    for module in MODULES:
        matches = list(modules_tree.rglob(f"{module}.ko"))
        if matches:
            found[module] = matches[0].read_bytes()
    shutil.rmtree(tree / "lib/modules")
    (tree / "lib/modules").mkdir()
    _write_modules(tree, found)
    for path, text in ((tree / "init", INIT), (tree / "usr/share/udhcpc/default.script", UDHCPC_SCRIPT)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    packed = subprocess.run("find . | cpio -o -H newc --quiet", shell=True, cwd=tree, capture_output=True,
                            check=True).stdout
    write_atomically(initrd, gzip.compress(packed, 6), mode=0o644)
    write_atomically(kernel, gzip.compress((images / "linux").read_bytes(), 6), mode=0o644)
    write_atomically(stamp, recipe.encode(), mode=0o644)
    shutil.rmtree(tree, ignore_errors=True)
    return kernel, initrd


def installer_tree(work: Path) -> Path:
    """Debian's arm64 installer netboot package, downloaded and unpacked under `work` (once)."""
    root = work / "root"
    if not (root / ARM64_IMAGES / "linux").is_file():
        debs = sorted(work.glob(f"{ARM64_PACKAGE}_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", ARM64_PACKAGE], cwd=work, check=True, capture_output=True)
            debs = sorted(work.glob(f"{ARM64_PACKAGE}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
        for deb in debs:  # 128 MB, and everything needed is unpacked now
            deb.unlink()
    return root


def _write_modules(tree: Path, found: dict[str, bytes]) -> None:
    """The modules flat in /lib/modules, and the order /init loads them in (dependencies first)."""
    depends = {}
    for module, data in found.items():
        (tree / "lib/modules" / f"{module}.ko").write_bytes(data)
        match = re.search(rb"depends=([\w,-]*)", data)
        depends[module] = [d for d in (match.group(1).decode().split(",") if match else []) if d]
    order: list[str] = []

    def visit(module: str) -> None:  # insmod has no dependency resolution: load what a module needs first
        if module not in order and module in depends:
            for dependency in depends[module]:
                visit(dependency)
            order.append(module)

    for module in depends:
        visit(module)
    (tree / "lib/modules/order").write_text(" ".join(order) + "\n")


def write_grub_profile(data: Path, profile: str, *, console: str = "ttyS0") -> None:
    """`profile` as GRUB boots it (Secure Boot's signed GRUB, arm64's GRUB; see appliance/grubnet.py): kernel
    and initrd as paths on the boot server, bootd as GRUB's ${bootd} and the machine as ${net_default_mac}."""
    (data / f"profiles/{profile}.json").write_text(json.dumps({"id": profile, "ignition_id": f"{profile}.ign", "boot": {
        "kernel": "/assets/vmlinuz", "initrd": ["/assets/initrd.img"],
        "args": [f"console={console}", "quiet", f"bootd.profile={profile}",
                 "bootd.ignition=${bootd}/ignition?mac=${net_default_mac}",
                 "bootd.report=${bootd}/api/v1/machines/${net_default_mac}/report"]}}, indent=2))
