"""What the appliance image does at boot with its config: `bootd appliance prepare | report | banner`.

The appliance's disk has a FAT partition labelled BOOTD (mounted read-only at /media/BOOTD) that a person
edits from any OS, and a state partition (/var/lib/bootd) that survives reboots and upgrades. Before the
network and bootd start, `prepare` turns what is on BOOTD into the active config bootd runs:

- BOOTD has bootd.yaml: it is checked as `bootd check` checks it (the file, startup problems, the data
  dir's templates), against a copy of the BOOTD tree staged beside the config dir, so relative paths mean
  what they will mean once installed. Keys the file leaves out that an appliance user should not have to
  know are filled in, in the written config only (never a value the user gave): `state_dir` (the state
  partition), `dhcp.firmware_dir` (the image's verified iPXE binaries), `http.data_dir` (BOOTD's data/,
  or an empty one) and `http.assets_dir` (BOOTD's data/assets, served from BOOTD itself: assets are big
  and the state partition is small). Good: the staged tree replaces the active one by rename. Errors: the
  active config is left as it was (the last good one, or none: then bootd.service's ConditionPathExists
  keeps bootd stopped), and every error is printed and reported with BOOTD's file, line and field.
- BOOTD has no bootd.yaml: the turnkey config, proxy-DHCP on the first ethernet NIC, which takes its own
  address by DHCP from the network's server. A BOOTD that is not mounted at all (an empty mount point:
  the partition did not show up in time) keeps the active config instead, so one slow USB stick does not
  swap a person's config for the turnkey one.

BOOTD is re-applied only when its content (or what `prepare` makes of it: bootd's version, the NIC the
turnkey config pins) differs from what was last applied, recorded in <config dir>/applied.json. So what the
read-write API wrote into the active data dir survives reboots; when BOOTD does change, BOOTD wins, and the
tree it replaces (with those writes) is kept as <config dir>.previous until the next change.

`prepare` also writes the systemd-networkd unit for the appliance's NIC, the report (/run/bootd/report:
what was decided, each error; `report` prints it into bootd's journal as bootd.service's ExecStartPre, and
when nothing is active, so that bootd will not start, prepare sends the errors to `journalctl -u bootd`
itself, through journald's native socket) and the console banner
(/run/bootd/issue, which agetty shows above the login prompt; `banner --pid` adds the running bootd's
user, capabilities and memory).

Decisions are pure functions (first NIC, network plan, overrides, the turnkey text, the report and banner
text, capability names); the rest is thin I/O. Every file is written atomically; trees are swapped by rename.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from appliance import __version__
from appliance.atomic import fsync_directory, write_atomically
from appliance.config import Config, ConfigInvalid, DhcpMode, load_config, parse_config
from appliance.daemon import build_store, describe_serving, firmware_roots, startup_problems
from appliance.dhcp.policy import available_firmware
from appliance.onboot_defaults import (  # also read as onboot.DEFAULT_* (tests, callers)
    DEFAULT_BOOTD_DIR,
    DEFAULT_CONFIG_DIR,
    DEFAULT_FIRMWARE_DIR,
    DEFAULT_JOURNAL_SOCKET,
    DEFAULT_NETWORK_DIR,
    DEFAULT_RUN_DIR,
    DEFAULT_SERVICE_USER,
    DEFAULT_STATE_DIR,
    DEFAULT_SYS_CLASS_NET,
)

BOOTD_UNIT = "bootd.service"

CONFIG_NAME = "bootd.yaml"
NETWORK_FILE_NAME = "10-bootd.network"
APPLIED_RECORD = "applied.json"
TURNKEY_HTTP_PORT = 8080  # matchbox's port, so profiles written for matchbox keep their URLs
ARPHRD_ETHER = 1  # /sys/class/net/<if>/type of an Ethernet NIC (<linux/if_arp.h>)
MAX_BANNER_ERRORS = 10  # a console is 25 lines; the journal has the rest
# What other operating systems leave on a FAT stick: not part of the config, and no reason to re-apply it.
# An empty data dir (no BOOTD data/) still has matchbox's layout: the API writes into it, and a person
# looking at it sees where things go.
DATA_DIR_LAYOUT = ("profiles", "groups", "ignition", "generic", "assets")
FAT_LITTER = frozenset({"System Volume Information", "$RECYCLE.BIN", ".Trashes", ".fseventsd",
                        ".Spotlight-V100", ".DS_Store", "Thumbs.db", "desktop.ini"})

# Linux capability numbers (<linux/capability.h>) -> the names capsh and systemd use.
CAPABILITY_NAMES = (
    "cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner", "cap_fsetid", "cap_kill",
    "cap_setgid", "cap_setuid", "cap_setpcap", "cap_linux_immutable", "cap_net_bind_service",
    "cap_net_broadcast", "cap_net_admin", "cap_net_raw", "cap_ipc_lock", "cap_ipc_owner", "cap_sys_module",
    "cap_sys_rawio", "cap_sys_chroot", "cap_sys_ptrace", "cap_sys_pacct", "cap_sys_admin", "cap_sys_boot",
    "cap_sys_nice", "cap_sys_resource", "cap_sys_time", "cap_sys_tty_config", "cap_mknod", "cap_lease",
    "cap_audit_write", "cap_audit_control", "cap_setfcap", "cap_mac_override", "cap_mac_admin", "cap_syslog",
    "cap_wake_alarm", "cap_block_suspend", "cap_audit_read", "cap_perfmon", "cap_bpf", "cap_checkpoint_restore",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliancePaths:
    """Where `prepare` reads and writes; every one is a flag, so host tests use temporary directories."""

    bootd_dir: Path = DEFAULT_BOOTD_DIR
    config_dir: Path = DEFAULT_CONFIG_DIR
    state_dir: Path = DEFAULT_STATE_DIR
    firmware_dir: Path = DEFAULT_FIRMWARE_DIR
    network_dir: Path = DEFAULT_NETWORK_DIR
    run_dir: Path = DEFAULT_RUN_DIR
    sys_class_net: Path = DEFAULT_SYS_CLASS_NET
    service_user: str = DEFAULT_SERVICE_USER  # owns the active data dir, so the read-write API can write
    journal_socket: Path = DEFAULT_JOURNAL_SOCKET

    @property
    def bootd_config(self) -> Path:
        return self.bootd_dir / CONFIG_NAME

    @property
    def active_config(self) -> Path:
        return self.config_dir / CONFIG_NAME

    @property
    def previous_dir(self) -> Path:
        return self.config_dir.with_name(self.config_dir.name + ".previous")

    @property
    def report_file(self) -> Path:
        return self.run_dir / "report"

    @property
    def issue_file(self) -> Path:
        return self.run_dir / "issue"

    @property
    def network_file(self) -> Path:
        return self.network_dir / NETWORK_FILE_NAME


# --- the first NIC ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class NicFacts:
    """What /sys/class/net/<name> says about one interface."""

    name: str
    arp_type: int | None  # `type`: 1 for Ethernet (and for Wi-Fi, told apart by `wireless`)
    has_device: bool  # a `device` link: backed by hardware (a PCI or USB NIC), not a virtual interface
    is_bridge: bool
    is_wireless: bool


def read_nics(sys_class_net: Path) -> list[NicFacts]:
    nics = []
    try:
        entries = sorted(os.listdir(sys_class_net))
    except OSError:
        return []
    for name in entries:
        entry = sys_class_net / name
        try:
            arp_type: int | None = int((entry / "type").read_text().strip())
        except (OSError, ValueError):
            arp_type = None
        nics.append(NicFacts(name=name, arp_type=arp_type, has_device=(entry / "device").exists(),
                             is_bridge=(entry / "bridge").exists(),
                             is_wireless=(entry / "wireless").exists() or (entry / "phy80211").exists()))
    return nics


def _natural(name: str) -> list[tuple[int, int | str]]:
    """eth2 before eth10, enp0s3 before enp1s0."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part]


def ethernet_nics(nics: Iterable[NicFacts]) -> list[str]:
    """The physical, wired Ethernet NICs, in name order: no loopback, bridge, veth, tap, bond or Wi-Fi."""
    wired = [n.name for n in nics if n.arp_type == ARPHRD_ETHER and n.has_device and not n.is_bridge
             and not n.is_wireless and n.name != "lo"]
    return sorted(wired, key=_natural)


# --- the network unit ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkPlan:
    interface: str
    address: ipaddress.IPv4Interface | None = None  # None: DHCP
    gateway: ipaddress.IPv4Address | None = None
    why: str = ""

    def line(self) -> str:
        if self.address is None:
            return f"{self.interface} dhcp"
        return f"{self.interface} static {self.address}" + (f" gateway {self.gateway}" if self.gateway else "")


def plan_network(config: Config | None, nics: Sequence[str]) -> tuple[NetworkPlan | None, list[str]]:
    """How the appliance gets its own address, and warnings about what the config asked for.

    The rule: a static address when the config pins an IPv4 `listen.address` inside `dhcp.subnet` (the
    subnet gives the prefix; typically authoritative mode, where bootd is the network's DHCP server and
    nobody else would give the appliance an address); `dhcp.router` is the gateway unless it is bootd
    itself. Otherwise DHCP from the network's own server (proxy mode needs one anyway). The interface is
    `listen.interfaces[0]`, else the first Ethernet NIC."""
    warnings: list[str] = []
    pinned = config.listen.interfaces if config is not None else ()
    interface = pinned[0] if pinned else (nics[0] if nics else None)
    if interface is None:
        return None, ["no Ethernet NIC found: no network configured (NICs seen: none)"]
    if pinned and interface not in nics:
        warnings.append(f"listen.interfaces[0] {interface} is not an Ethernet NIC of this appliance "
                        f"(its NICs: {', '.join(nics) or 'none'})")
    if config is None:
        return NetworkPlan(interface=interface, why="no active config: DHCP, so the console shows an address"), \
            warnings
    address, dhcp = config.listen.address, config.dhcp
    if isinstance(address, ipaddress.IPv4Address) and dhcp.subnet is not None and address in dhcp.subnet:
        gateway = dhcp.router if dhcp.router is not None and dhcp.router != address else None
        return NetworkPlan(interface=interface, address=ipaddress.IPv4Interface(f"{address}/{dhcp.subnet.prefixlen}"),
                           gateway=gateway, why=f"listen.address {address} is inside dhcp.subnet {dhcp.subnet}"), \
            warnings
    if address is not None:
        why = f"is not inside dhcp.subnet {dhcp.subnet}" if dhcp.subnet is not None \
            else "is pinned without dhcp.subnet (which would give its prefix)"
        warnings.append(f"listen.address {address} {why}, so the appliance takes its address by DHCP on "
                        f"{interface}: reserve {address} for it on the network's DHCP server")
    elif dhcp.mode is DhcpMode.AUTHORITATIVE:
        warnings.append(f"authoritative DHCP without listen.address: the appliance asks for its own address by DHCP "
                        f"on {interface}, where bootd is meant to be the DHCP server; set listen.address inside "
                        "dhcp.subnet for a static one")
    return NetworkPlan(interface=interface, why="an address by DHCP from the network's own DHCP server"), warnings


def render_network_file(plan: NetworkPlan, source: str) -> str:
    lines = [f"# Written at boot by `bootd appliance prepare` from {source}: {plan.why}.",
             "[Match]", f"Name={plan.interface}", "", "[Network]"]
    if plan.address is None:
        lines += ["DHCP=ipv4", "", "[DHCPv4]",
                  "# the network's DHCP server sees the NIC's MAC (what reservations are keyed by), not a DUID",
                  "ClientIdentifier=mac"]
    else:
        lines.append(f"Address={plan.address}")
        if plan.gateway is not None:
            lines.append(f"Gateway={plan.gateway}")
        lines += ["# bootd binds to this address when it starts: have it before the link has a carrier",
                  "ConfigureWithoutCarrier=yes"]
    return "\n".join(lines) + "\n"


# --- the turnkey config ------------------------------------------------------------------------------------

def _yaml_string(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is YAML's)."""
    return json.dumps(text)


def turnkey_config_text(*, nic: str | None, state_dir: Path, firmware_dir: Path, assets_dir: Path | None) -> str:
    """bootd.yaml for an appliance whose BOOTD has none: proxy-DHCP beside the network's DHCP server on the
    first NIC, TFTP for the iPXE binaries, HTTP on 8080; no DNS (proxy mode has no zone of its own to serve).
    The data dir is `data` beside the file: BOOTD's data/ copied, or an empty one."""
    lines = ["# bootd's turnkey config, written by `bootd appliance prepare` because BOOTD has no bootd.yaml:",
             "# proxy-DHCP beside the network's own DHCP server. Put a bootd.yaml on BOOTD to change it.",
             f"state_dir: {_yaml_string(str(state_dir))}"]
    if nic is not None:
        lines += ["listen:", f"  interfaces: [{_yaml_string(nic)}]"]
    lines += ["dhcp:", "  mode: proxy", f"  firmware_dir: {_yaml_string(str(firmware_dir))}",
              "tftp:", "  port: 69",
              "http:", f"  port: {TURNKEY_HTTP_PORT}", "  data_dir: data"]
    if assets_dir is not None:
        lines.append(f"  assets_dir: {_yaml_string(str(assets_dir))}")
    return "\n".join(lines) + "\n"


# --- filling in what a BOOTD config leaves out -------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    """A key bootd.yaml does not give, written into the active config with the value the appliance needs."""

    field: str  # dotted: "dhcp.firmware_dir"
    value: str
    why: str

    def line(self) -> str:
        return f"{self.field}: {self.value} (not in bootd.yaml: {self.why})"


def _mapping_value(node: Node | None, key: str) -> Node | None:
    if not isinstance(node, MappingNode):
        return None
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            return value_node
    return None


def _key_line(root: Node | None, dotted: str) -> int | None:
    """The line (1-based) of the deepest key of `dotted` the file gives: `http.data_dir` -> the data_dir key's
    line, or the http key's when data_dir is not written."""
    line, node = None, root
    for part in re.split(r"[.\[]", dotted):
        if not isinstance(node, MappingNode):
            break
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def gives(root: Node | None, dotted: str) -> bool:
    node = root
    for part in dotted.split("."):
        node = _mapping_value(node, part)
        if node is None:
            return False
    return True


def decide_overrides(config: Config, root: Node | None, *, paths: AppliancePaths, staging: Path,
                     bootd_assets: Path | None) -> tuple[list[Override], list[str]]:
    """What the active config fills in, and warnings about values the user gave that the appliance cannot
    honour as they probably expect. `config` was read from `staging`/bootd.yaml; `bootd_assets` is
    BOOTD's <data dir>/assets when that exists."""
    overrides, warnings = [], []
    state_dir = paths.state_dir / "state"
    if not gives(root, "state_dir"):
        overrides.append(Override(field="state_dir", value=str(state_dir),
                                  why="the state partition, kept across reboots and upgrades"))
    elif not config.state_dir.is_relative_to(paths.state_dir):
        warnings.append(f"state_dir {config.state_dir} is outside the state partition {paths.state_dir}: bootd's "
                        "service may not write there, and it is lost at an upgrade")
    if not gives(root, "dhcp.firmware_dir"):
        overrides.append(Override(field="dhcp.firmware_dir", value=str(paths.firmware_dir),
                                  why="the appliance's verified iPXE binaries"))
    elif not config.firmware_dir.is_dir():
        warnings.append(f"dhcp.firmware_dir {_shown(config.firmware_dir, staging, paths.bootd_dir)} does not exist: "
                        f"PXE clients get no iPXE binary (leave the key out for the appliance's {paths.firmware_dir})")
    if config.http.enabled and not gives(root, "http.data_dir"):
        overrides.append(Override(field="http.data_dir", value="data",
                                  why="BOOTD's data/ when it has one, else an empty data dir"))
    if config.http.enabled and not gives(root, "http.assets_dir") and bootd_assets is not None:
        overrides.append(Override(field="http.assets_dir", value=str(bootd_assets),
                                  why="served from BOOTD itself: assets are big, the state partition small"))
    return overrides, warnings


def apply_overrides(text: str, overrides: Sequence[Override], source: Path) -> str:
    """`text` with each override's key added (sections created as needed). Values the file gives are never
    touched: an override is only made for a key the file leaves out. The file's own scalars keep their
    source text and quoting, so the result reads as the original does; comments are not kept."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, MappingNode):
        root = MappingNode("tag:yaml.org,2002:map", [])
    for override in overrides:
        node = root
        *sections, key = override.field.split(".")
        for section in sections:
            child = _mapping_value(node, section)
            if not isinstance(child, MappingNode):
                new = MappingNode("tag:yaml.org,2002:map", [], flow_style=False)
                node.value = [(k, v) for k, v in node.value if not (isinstance(k, ScalarNode) and k.value == section)]
                node.value.append((ScalarNode("tag:yaml.org,2002:str", section), new))
                child = new
            node = child
        node.value.append((ScalarNode("tag:yaml.org,2002:str", key),
                           ScalarNode("tag:yaml.org,2002:str", override.value, style='"')))
    header = [f"# The active config, written by `bootd appliance prepare` from {source} (edit that file, not",
              "# this one). Keys it leaves out that the appliance fills in:"]
    header += [f"#   {o.line()}" for o in overrides]
    return "\n".join(header) + "\n" + yaml.serialize(root, Dumper=yaml.SafeDumper, width=120, allow_unicode=True)


# --- the checks `bootd check` makes, said in BOOTD's terms -----------------------------------------------

def _shown(path: Path | str, staging: Path, bootd_dir: Path) -> str:
    """A path in the staged tree as the user knows it: on BOOTD."""
    return str(path).replace(str(staging), str(bootd_dir))


_PROBLEM = re.compile(r"^(?P<file>[^:\s]+): (?P<field>[A-Za-z_][\w.\[\]]*): (?P<message>.*)$", re.S)


def locate_problem(problem: str, root: Node | None, source: str) -> str:
    """A startup problem (`bootd.yaml: http.data_dir: ... is not a directory`) as `file:line: field: message`,
    the line found in the file's node tree (the key's own line, else its section's)."""
    match = _PROBLEM.match(problem)
    if match is None:
        return f"{source}: {problem}"
    line = _key_line(root, match["field"]) or 1
    return f"{source}:{line}: {match['field']}: {match['message']}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def check_config(path: Path, *, root: Node | None, source: str, staging: Path, bootd_dir: Path) -> CheckResult:
    """What `bootd check` reports for the config at `path` (cli.cmd_check: the file, startup_problems, the
    data dir's templates as errors, its other problems as warnings), each said in BOOTD's terms: errors of
    the file name `source` and BOOTD's lines, paths in the staged tree are shown as on BOOTD."""
    try:
        config = load_config(path)
    except ConfigInvalid as exc:
        return CheckResult(errors=tuple(str(replace(e, file=f"{source} (as written by prepare)")) for e in exc.errors))
    errors = [locate_problem(_shown(p, staging, bootd_dir), root, source) for p in startup_problems(config)]
    warnings = []
    if config.http.enabled and config.http.data_dir.is_dir():
        store = build_store(config)
        data_dir = _shown(config.http.data_dir, staging, bootd_dir)
        errors += [f"{data_dir}/{p}" for p in store.template_errors()]
        warnings += [f"data dir {data_dir}: {_shown(p, staging, bootd_dir)}" for p in store.check()]
        if not config.http.assets_root.is_dir():
            warnings.append(f"assets dir {_shown(config.http.assets_root, staging, bootd_dir)} does not exist "
                            "(/assets/ answers 404)")
    if config.dhcp.mode is not DhcpMode.OFF and not available_firmware(*firmware_roots(config)):
        warnings.append(f"no iPXE binary in {_shown(config.firmware_dir, staging, bootd_dir)}: PXE clients that are "
                        "not iPXE yet get no answer")
    return CheckResult(errors=tuple(errors), warnings=tuple(warnings))


# --- BOOTD's tree: what is copied, and its fingerprint -------------------------------------------------------

def _skipped(relative: Path, excluded: frozenset[Path]) -> bool:
    return relative in excluded or relative.name in FAT_LITTER or relative.name.startswith("._")


def tree_files(top: Path, excluded: frozenset[Path]) -> list[Path]:
    """Every file under `top` (relative paths, sorted) that is copied: not `excluded`, not FAT litter."""
    files = []
    for directory, dirs, names in os.walk(top):
        base = Path(directory).relative_to(top)
        dirs[:] = sorted(d for d in dirs if not _skipped(base / d, excluded))
        files += [base / n for n in names if not _skipped(base / n, excluded) and (Path(directory) / n).is_file()]
    return sorted(files)


def fingerprint(top: Path, files: Iterable[Path], recipe: Sequence[str]) -> str:
    """sha256 of the copied files (names and contents) and of what prepare makes of them (`recipe`)."""
    digest = hashlib.sha256("\0".join(recipe).encode() + b"\1")
    for relative in files:
        digest.update(str(relative).encode() + b"\0")
        with open(top / relative, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def copy_tree(top: Path, files: Iterable[Path], destination: Path) -> None:
    for relative in files:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(top / relative, target)  # not the FAT's modes: the active tree gets the umask's


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedRecord:
    fingerprint: str
    applied_at: str  # "2026-12-02 12:57 UTC"
    source: str  # "BOOTD" or "turnkey"


def read_applied(paths: AppliancePaths) -> AppliedRecord | None:
    """What the active config was made from; None when there is no active config (or no readable record)."""
    if not paths.active_config.is_file():
        return None
    try:
        data = json.loads((paths.config_dir / APPLIED_RECORD).read_text())
        return AppliedRecord(fingerprint=str(data["fingerprint"]), applied_at=str(data["applied_at"]),
                             source=str(data["source"]))
    except (OSError, ValueError, KeyError, TypeError):
        return AppliedRecord(fingerprint="", applied_at="an unknown time", source="unknown")


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, text.encode(), mode=0o644)  # bootd (its own user), networkd and agetty read these


def recover_interrupted_swap(paths: AppliancePaths) -> None:
    """A crash between the two renames of `swap_in` leaves only the previous tree: it is the active one."""
    if not paths.config_dir.exists() and paths.previous_dir.is_dir():
        os.rename(paths.previous_dir, paths.config_dir)
    for stale in paths.config_dir.parent.glob(f".{paths.config_dir.name}.new-*"):
        shutil.rmtree(stale, ignore_errors=True)  # a crash's half-staged tree


def staging_dir(paths: AppliancePaths) -> Path:
    paths.config_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{paths.config_dir.name}.new-", dir=paths.config_dir.parent))
    staging.chmod(0o755)
    return staging


def swap_in(staging: Path, paths: AppliancePaths) -> None:
    """The staged tree becomes the active one: the active one moves to .previous (an older .previous goes),
    then the staged one takes its name. Each step is a rename; recover_interrupted_swap finishes a crash."""
    for directory, _, names in os.walk(staging):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                os.fsync(f.fileno())
    if paths.config_dir.exists():
        if paths.previous_dir.exists():
            shutil.rmtree(paths.previous_dir)
        os.rename(paths.config_dir, paths.previous_dir)
    os.rename(staging, paths.config_dir)
    fsync_directory(paths.config_dir.parent)


def _own_data_dir(data_dir: Path, user: str) -> str | None:
    """The service user owns the active data dir (the read-write API writes there); a note if it cannot."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return f"no user {user!r}: the data dir stays root's (the read-write API cannot write to it)"
    for directory, dirs, names in os.walk(data_dir):
        for name in [directory] + [os.path.join(directory, n) for n in dirs + names]:
            os.chown(name, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    return None


# --- the report ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """What prepare decided: /run/bootd/report, one `kind: text` line each after the summary."""

    summary: str
    active: str = "none"  # the active config and when it was applied, or "none"
    network: str = "none"  # NetworkPlan.line()
    choices: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.summary, f"active: {self.active}", f"network: {self.network}"]
        lines += [f"chose: {c}" for c in self.choices]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(line.replace("\n", " ") for line in lines) + "\n"


def parse_report(text: str) -> Report:
    lines = text.splitlines()
    fields: dict[str, list[str]] = {"active": [], "network": [], "chose": [], "warning": [], "error": []}
    for line in lines[1:]:
        kind, _, value = line.partition(": ")
        if kind in fields:
            fields[kind].append(value)
    return Report(summary=lines[0] if lines else "no report", active=(fields["active"] or ["none"])[0],
                  network=(fields["network"] or ["none"])[0], choices=tuple(fields["chose"]),
                  warnings=tuple(fields["warning"]), errors=tuple(fields["error"]))


def parse_network_line(line: str) -> NetworkPlan | None:
    words = line.split()
    if len(words) >= 2 and words[1] == "dhcp":
        return NetworkPlan(interface=words[0])
    if len(words) >= 3 and words[1] == "static":
        try:
            gateway = ipaddress.IPv4Address(words[4]) if len(words) >= 5 and words[3] == "gateway" else None
            return NetworkPlan(interface=words[0], address=ipaddress.IPv4Interface(words[2]), gateway=gateway)
        except ValueError:
            return None
    return None


def journal_entry(fields: Sequence[tuple[str, str]]) -> bytes:
    """One entry in journald's native protocol (systemd.journal-fields(7), "Native Journal Protocol"):
    KEY=value lines; a value with a newline as KEY, newline, its length (64-bit little endian), the bytes."""
    out = bytearray()
    for key, value in fields:
        data = value.encode()
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def journal_for_bootd(report: Report) -> list[bytes]:
    """The entries that put the report's errors into `journalctl -u bootd` when bootd will not start (nothing
    active: ExecStartPre's `report` never runs). journalctl -u matches OBJECT_SYSTEMD_UNIT= from root's
    processes, which is what prepare is."""
    def entry(priority: int, message: str) -> bytes:
        return journal_entry([("MESSAGE", message), ("PRIORITY", str(priority)),
                              ("SYSLOG_IDENTIFIER", "bootd-config"), ("OBJECT_SYSTEMD_UNIT", BOOTD_UNIT)])
    return [entry(3 if report.errors else 4, report.summary)] + [entry(3, f"error: {e}") for e in report.errors]


def send_to_journal(socket_path: Path, entries: Iterable[bytes]) -> None:
    """Best effort: no journal (a host, a container) is no error, the report and banner have it all."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            for entry in entries:
                sock.sendto(entry, str(socket_path))
    except OSError:
        pass


# --- the banner ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessFacts:
    pid: int
    uid: int
    user: str
    capabilities: tuple[str, ...]
    rss_mib: int

    def line(self) -> str:
        caps = ",".join(self.capabilities) or "none"
        return (f"bootd: running as user {self.user} (uid {self.uid}), pid {self.pid}, capabilities {caps}, "
                f"rss {self.rss_mib} MiB")


def capability_names(mask: int) -> tuple[str, ...]:
    """A CapEff/CapPrm mask as names, lowest bit first; a bit newer than the table is `cap_<n>`."""
    return tuple(CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"cap_{bit}"
                 for bit in range(mask.bit_length()) if mask >> bit & 1)


def parse_proc_status(pid: int, text: str, user_name=lambda uid: pwd.getpwuid(uid).pw_name) -> ProcessFacts:
    """/proc/PID/status -> who the process runs as (effective uid), its effective capabilities, its RSS.
    Raises ValueError when a field is missing."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        uid = int(fields["Uid"].split()[1])
        mask = int(fields["CapEff"].strip(), 16)
        rss_kib = int(fields.get("VmRSS", "0 kB").split()[0])  # a zombie has no VmRSS
    except (KeyError, IndexError) as exc:
        raise ValueError(f"no {exc} in /proc/{pid}/status") from None
    try:
        user = user_name(uid)
    except KeyError:
        user = str(uid)
    return ProcessFacts(pid=pid, uid=uid, user=user, capabilities=capability_names(mask),
                        rss_mib=round(rss_kib / 1024))


def _literal(text: str) -> str:
    """Text agetty shows as written: its escapes start with a backslash."""
    return text.replace("\\", "\\\\")


def progress_host(config: Config, plan: NetworkPlan | None) -> str:
    """Where a browser reaches bootd's HTTP: a pinned address, else agetty's live \\4{iface} escape."""
    address = config.http.address if config.http.address is not None and not config.http.address.is_unspecified \
        else config.listen.address
    if address is not None:
        return f"[{address}]" if address.version == 6 else str(address)
    if plan is not None and plan.address is not None:
        return str(plan.address.ip)
    return f"\\4{{{plan.interface}}}" if plan is not None else "\\4"


def render_banner(report: Report, config: Config | None, *, running: str | None = None) -> str:
    """/run/bootd/issue: the appliance's address, what bootd serves, where the progress is, the config's
    errors; `running` is the `bootd: running as ...` line (or why it is missing) when bootd was started."""
    plan = parse_network_line(report.network)
    lines = ["", "bootd appliance \\n (\\l)"]
    if plan is None:
        lines.append("  address:  none: no Ethernet NIC configured")
    elif plan.address is None:
        lines.append(f"  address:  \\4{{{plan.interface}}} on {_literal(plan.interface)} "
                     "(DHCP from the network's server)")
    else:
        lines.append(f"  address:  {plan.address} on {_literal(plan.interface)} (static, from bootd.yaml)")
    if config is None:
        lines.append("  serving:  nothing: no usable config (fix bootd.yaml on BOOTD and reboot)")
    else:
        dhcp = config.dhcp.mode if config.dhcp.mode is not DhcpMode.OFF else None
        lines.append("  serving:  " + _literal(describe_serving(
            dhcp_mode=dhcp, interfaces=config.listen.interfaces,
            tftp_port=config.tftp.port if config.tftp.enabled else None,
            dns_port=config.dns.port if config.dns.enabled else None, domain=config.domain,
            http_port=config.http.port if config.http.enabled else None,
            api_port=config.api.port if config.api.enabled else None, machines=len(config.machines))
            + ("" if config.dns.enabled else ", no DNS")))
        if config.http.enabled:
            lines.append(f"  progress: http://{progress_host(config, plan)}:{config.http.port}/api/v1/machines")
    lines.append(f"  config:   {_literal(report.summary)}")
    for error in report.errors[:MAX_BANNER_ERRORS]:
        lines.append(f"    {_literal(error)}")
    if len(report.errors) > MAX_BANNER_ERRORS:
        lines.append(f"    ... and {len(report.errors) - MAX_BANNER_ERRORS} more: journalctl -u bootd-config")
    if report.warnings:
        lines.append(f"  {len(report.warnings)} warnings: journalctl -u bootd-config")
    if running is not None:
        lines.append(_literal(running))
    return "\n".join(lines) + "\n\n"


# --- the commands ---------------------------------------------------------------------------------------

def _now_text(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """The outcome of putting BOOTD's config (or the turnkey one) in place."""

    summary: str
    choices: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def _os_error(exc: OSError, doing: str) -> str:
    return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc} ({doing})"


def _kept(errors: Sequence[str], record: AppliedRecord | None) -> Applied:
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    if record is None:
        return Applied(summary=f"BOOTD config has {count}, and there is no last good one: bootd serves nothing",
                       errors=tuple(errors))
    return Applied(summary=f"BOOTD config has {count}, kept the last good one from {record.applied_at}",
                   errors=tuple(errors))


def _bootd_assets(paths: AppliancePaths, data_dir: Path, staging: Path) -> tuple[Path | None, frozenset[Path]]:
    """BOOTD's assets dir for a data dir inside the staged tree (served from BOOTD, not copied), and what
    the copy leaves out because of it."""
    if not data_dir.is_relative_to(staging):
        return None, frozenset()
    relative = data_dir.relative_to(staging) / "assets"
    if (paths.bootd_dir / relative).is_dir():
        return paths.bootd_dir / relative, frozenset({relative})
    return None, frozenset()


def apply_bootd_config(paths: AppliancePaths, record: AppliedRecord | None, now: datetime) -> Applied:
    source = str(paths.bootd_config)
    try:
        text = paths.bootd_config.read_bytes().decode("utf-8")
    except OSError as exc:
        return _kept([f"{source}: cannot read: {exc.strerror}"], record)
    except UnicodeDecodeError as exc:
        return _kept([f"{source}:1: (file): not UTF-8 text (byte {exc.start})"], record)
    staging = staging_dir(paths)
    try:
        try:
            config = parse_config(text, staging / CONFIG_NAME)
        except ConfigInvalid as exc:
            return _kept([str(replace(e, file=source)) for e in exc.errors], record)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data_dir = config.http.data_dir if _mapping_value(_mapping_value(root, "http"), "data_dir") is not None \
            else staging / "data"
        assets, excluded = _bootd_assets(paths, data_dir, staging) if config.http.assets_dir is None \
            else (None, frozenset())
        files = tree_files(paths.bootd_dir, excluded)
        source_hash = fingerprint(paths.bootd_dir, files, ["BOOTD", __version__, str(paths.bootd_dir),
                                                     str(paths.state_dir), str(paths.firmware_dir)])
        if record is not None and record.fingerprint == source_hash:
            return Applied(summary=f"BOOTD config applied (unchanged since {record.applied_at}; what the read-write "
                                   "API wrote since is kept)")
        copy_tree(paths.bootd_dir, files, staging)
        overrides, warnings = decide_overrides(config, root, paths=paths, staging=staging, bootd_assets=assets)
        effective = apply_overrides(text, overrides, paths.bootd_config) if overrides else text
        _write_text(staging / CONFIG_NAME, effective)
        if any(o.field == "http.data_dir" for o in overrides):
            _data_dir_layout(staging / "data", with_assets=assets is None)
        result = check_config(staging / CONFIG_NAME, root=root, source=source, staging=staging,
                              bootd_dir=paths.bootd_dir)
        if result.errors:
            return _kept(result.errors, record)
        return _install(paths, staging, source_hash, "BOOTD", now, Applied(
            summary="BOOTD config applied", choices=tuple(o.line() for o in overrides),
            warnings=tuple(warnings) + result.warnings))
    except OSError as exc:  # BOOTD unreadable half-way, the state partition full: nothing was swapped in
        return _kept([_os_error(exc, "putting BOOTD's files in place")], record)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def apply_turnkey(paths: AppliancePaths, nic: str | None, record: AppliedRecord | None, now: datetime) -> Applied:
    where = nic or "every interface (no Ethernet NIC found)"
    summary = f"no bootd.yaml on BOOTD: turnkey proxy-DHCP on {where}"
    staging = staging_dir(paths)
    try:
        assets, excluded = _bootd_assets(paths, staging / "data", staging)
        files = [f for f in tree_files(paths.bootd_dir, excluded) if f.parts[0] == "data"] \
            if (paths.bootd_dir / "data").is_dir() else []
        source_hash = fingerprint(paths.bootd_dir, files, ["turnkey", __version__, str(nic), str(paths.bootd_dir),
                                                     str(paths.state_dir), str(paths.firmware_dir)])
        if record is not None and record.fingerprint == source_hash:
            return Applied(summary=f"{summary} (unchanged since {record.applied_at})")
        copy_tree(paths.bootd_dir, files, staging)
        _data_dir_layout(staging / "data", with_assets=assets is None)
        _write_text(staging / CONFIG_NAME, turnkey_config_text(
            nic=nic, state_dir=paths.state_dir / "state", firmware_dir=paths.firmware_dir, assets_dir=assets))
        result = check_config(staging / CONFIG_NAME, root=None, source="the turnkey config", staging=staging,
                              bootd_dir=paths.bootd_dir)
        if result.errors:  # BOOTD's data/ has templates that do not parse
            return _kept(result.errors, record)
        choices = [f"data dir: {'a copy of BOOTD data/' if files else 'empty (BOOTD has no data/)'}"]
        if assets is not None:
            choices.append(f"assets: served from {assets}")
        return _install(paths, staging, source_hash, "turnkey", now, Applied(
            summary=summary, choices=tuple(choices), warnings=result.warnings))
    except OSError as exc:
        return _kept([_os_error(exc, "putting the turnkey config in place")], record)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _data_dir_layout(data_dir: Path, *, with_assets: bool) -> None:
    """matchbox's subdirectories in a data dir made here (BOOTD's data/ keeps whatever it has)."""
    if data_dir.exists():
        return
    for name in DATA_DIR_LAYOUT:
        if name != "assets" or with_assets:
            (data_dir / name).mkdir(parents=True)


def _install(paths: AppliancePaths, staging: Path, source_hash: str, source: str, now: datetime,
             applied: Applied) -> Applied:
    notes = list(applied.warnings)
    if (staging / "data").is_dir() and (note := _own_data_dir(staging / "data", paths.service_user)):
        notes.append(note)
    record = {"fingerprint": source_hash, "applied_at": _now_text(now), "source": source}
    _write_text(staging / APPLIED_RECORD, json.dumps(record, indent=2) + "\n")
    swap_in(staging, paths)
    return replace(applied, warnings=tuple(notes))


def _active_config(paths: AppliancePaths) -> tuple[Config | None, str | None]:
    """The active config, or None and why (none at all is no error: nothing was ever good)."""
    if not paths.active_config.is_file():
        return None, None
    try:
        return load_config(paths.active_config), None
    except ConfigInvalid as exc:
        return None, f"the active config {paths.active_config} does not load: {exc.errors[0]}"
    except OSError as exc:
        return None, f"{paths.active_config}: cannot read: {exc.strerror}"


def bootd_mounted(bootd_dir: Path) -> bool:
    """False when BOOTD's mount point is an empty directory, not a mount: the partition was not found in
    time (fstab's nofail), which is not the same as a BOOTD a person emptied to get the turnkey config back.
    A directory with files in it (a host test's BOOTD) counts as mounted."""
    try:
        return os.path.ismount(bootd_dir) or any(os.scandir(bootd_dir))
    except OSError:
        return False


def prepare(paths: AppliancePaths, now: datetime) -> Report:
    """Put BOOTD's config (or the turnkey one) in place, then write the network unit, report and banner."""
    recover_interrupted_swap(paths)
    nics = ethernet_nics(read_nics(paths.sys_class_net))
    record = read_applied(paths)
    if paths.bootd_config.exists():
        applied = apply_bootd_config(paths, record, now)
    elif record is not None and not bootd_mounted(paths.bootd_dir):
        applied = Applied(summary=f"BOOTD is not mounted at {paths.bootd_dir}: kept the config applied "
                                  f"{record.applied_at}")
    else:
        applied = apply_turnkey(paths, nics[0] if nics else None, record, now)
    recover_interrupted_swap(paths)  # a swap that failed between its renames (the disk's error, said above)
    config, unreadable = _active_config(paths)
    plan, network_warnings = plan_network(config, nics)
    if plan is None:
        paths.network_file.unlink(missing_ok=True)
    else:
        _write_text(paths.network_file, render_network_file(plan, str(paths.active_config) if config else
                                                            "no active config"))
    current = read_applied(paths)
    report = Report(summary=applied.summary,
                    active=f"{paths.active_config} (applied {current.applied_at})" if current else "none",
                    network=plan.line() if plan else "none", choices=applied.choices,
                    warnings=applied.warnings + tuple(network_warnings) + ((unreadable,) if unreadable else ()),
                    errors=applied.errors)
    _write_text(paths.report_file, report.text())
    _write_text(paths.issue_file, render_banner(report, config))
    if not paths.active_config.is_file():
        send_to_journal(paths.journal_socket, journal_for_bootd(report))
    return report


def read_report(paths: AppliancePaths) -> Report:
    try:
        return parse_report(paths.report_file.read_text())
    except FileNotFoundError:
        return Report(summary=f"no report at {paths.report_file} (bootd appliance prepare did not run this boot)")


def running_line(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return parse_proc_status(pid, (proc / str(pid) / "status").read_text()).line()
    except FileNotFoundError:
        return f"bootd: pid {pid} is not running (journalctl -u bootd)"
    except (OSError, ValueError) as exc:
        return f"bootd: pid {pid}: cannot read its status: {getattr(exc, 'strerror', None) or exc}"


def banner(paths: AppliancePaths, pid: int | None) -> str:
    """Rewrite the banner from the report and the active config (plus the running bootd's line)."""
    config, _ = _active_config(paths)
    text = render_banner(read_report(paths), config, running=running_line(pid) if pid is not None else None)
    _write_text(paths.issue_file, text)
    return text
