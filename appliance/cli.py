"""bootd's command line: parses arguments and calls one function per subcommand.

Exit codes (the same for every subcommand):
  0   done
  1   the command did not do it, for a reason it printed (`bootd check` found errors, a download failed
      verification, a file could not be written, the API refused)
  2   a usage or config error: bad arguments, a config file that does not load
  3   `bootd status`: a machine's last boot failed (so a script can tell it from an unreachable bootd, 1)
  70  a bug in bootd (EX_SOFTWARE, sysexits.h): one line says what failed; --debug or BOOTD_DEBUG=1 prints
      the traceback to put in a bug report
  130 interrupted (Ctrl-C: 128 + SIGINT, as a shell reports it)
  141 the reader of its output went away (`bootd render ... | head`: 128 + SIGPIPE)
No command prints a Python traceback unless asked to with --debug.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import traceback
from pathlib import Path

from appliance import __version__
from appliance.config import Config, ConfigInvalid, load_config
from appliance.dhcp.policy import available_firmware
from appliance.dhcp.pxe import ARCH_TABLE, Firmware
from appliance.firmware import verify
from appliance.daemon import Daemon, StartupError, build_store, firmware_roots, startup_problems
from appliance.logs import setup_logging

DEFAULT_CONFIG = "/etc/bootd/bootd.yaml"

EXIT_FAILED = 1  # the codes main() itself returns; the module's docstring lists them all
EXIT_BUG = 70
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141
PACKAGE_DIR = Path(__file__).parent  # to name the last step of a bug that was bootd's own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bootd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bootd {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an unexpected error (also BOOTD_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")

    check = commands.add_parser("check", help="check a config and its data dir; exit 1 on errors")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    probe = commands.add_parser("probe", help="send one PXE DHCPDISCOVER on IFACE and list every server that answers")
    probe.add_argument("-i", "--interface", required=True)
    probe.add_argument("--timeout", type=_in_range(float, 0.1, 3600), default=3.0)
    probe.add_argument("--arch", type=_in_range(int, 0, 0xFFFF), default=0,  # option 93 is 16 bits
                       help="option 93 to send (0 BIOS, 7 x64 UEFI, ...)")

    firmware = commands.add_parser("firmware", help="get the iPXE binaries")
    firmware_commands = firmware.add_subparsers(dest="firmware_command", required=True)
    fetch = firmware_commands.add_parser("fetch", help="download Debian's ipxe package, verify it, install it")
    fetch.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="install into this config's firmware dir")
    fetch.add_argument("--dir", type=Path, help="install here instead")
    fetch.add_argument("--deb", type=Path, help="use this downloaded ipxe .deb instead of apt-get download")
    fetch.add_argument("--signed", action="store_true", help="also Debian's signed shim and network GRUB, for "
                       "Secure Boot machines (packages shim-signed, grub-efi-amd64-signed)")
    fetch.add_argument("--arm64", action="store_true", help="also Debian's arm64 network GRUB, for arm64 machines "
                       "(Debian builds no arm64 iPXE; from debian-installer-12-netboot-arm64, 128 MB)")

    store = commands.add_parser("store", help="the etcd store (store.backend etcd): a matchbox data dir in and out")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    store_import = store_commands.add_parser("import", help="replace the store's data with DATADIR's, all or "
                                             "nothing (each bad file is named, and then nothing is written)")
    store_import.add_argument("directory", metavar="DATADIR", type=Path)
    store_export = store_commands.add_parser("export", help="write the store's data into DIR (empty or new) as a "
                                             "matchbox data dir")
    store_export.add_argument("directory", metavar="DIR", type=Path)
    for sub in (store_import, store_export):
        sub.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="the bootd.yaml whose store section to use")

    render = commands.add_parser("render", help="print what a machine would get, and which group chose it")
    render.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    render.add_argument("--mac", help="the machine's MAC (the `mac` label iPXE sends)")
    render.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="another label (uuid, hostname, serial, or any selector key); repeatable")
    render.add_argument("what", choices=("ignition", "generic", "cloud", "ipxe", "grub", "metadata"))

    certs = commands.add_parser("certs", help="certificates for the read-write API (a CA, server, clients)")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    certs_init = certs_commands.add_parser("init", help="make ca, server and client certificates")
    certs_init.add_argument("--san", required=True, help="the server's names: DNS:matchbox.example.com,IP:10.77.0.1")
    certs_init.add_argument("--out", type=Path, default=Path("/etc/bootd/tls"))
    certs_init.add_argument("--force", action="store_true", help="overwrite existing files")
    certs_client = certs_commands.add_parser("client", help="issue another client certificate from the CA")
    certs_client.add_argument("name")
    certs_client.add_argument("--dir", type=Path, default=Path("/etc/bootd/tls"), help="where ca.crt/ca.key are")
    certs_client.add_argument("--days", type=_in_range(int, 1, 36500), default=365)
    certs_client.add_argument("--force", action="store_true")

    api_client = argparse.ArgumentParser(add_help=False)
    api_client.add_argument("--endpoint", default="127.0.0.1:8081", help="host:port of bootd's api")
    api_client.add_argument("--ca-file", default="/etc/matchbox/ca.crt")
    api_client.add_argument("--cert-file", default="/etc/matchbox/client.crt")
    api_client.add_argument("--key-file", default="/etc/matchbox/client.key")
    apply = commands.add_parser("apply", parents=[api_client], help="push profiles, groups, Ignition and generic "
                                                                   "configs (files, or a data dir) to the api")
    apply.add_argument("-f", "--file", action="append", required=True, help="a file or a data dir; repeatable")
    kinds = ("profile", "profiles", "group", "groups", "ignition", "generic")
    get = commands.add_parser("get", parents=[api_client], help="list profiles or groups, or print one object")
    get.add_argument("kind", choices=kinds)
    get.add_argument("name", nargs="?")
    delete = commands.add_parser("delete", parents=[api_client], help="delete one object through the api")
    delete.add_argument("kind", choices=kinds)
    delete.add_argument("name")

    lab = commands.add_parser("lab", help="a private boot network with QEMU machines booting through bootd")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True)
    lab_up = lab_commands.add_parser("up", help="make the lab, boot the machines, show their progress")
    lab_up.add_argument("--machines", type=_in_range(int, 1, 79), default=2,  # reservations .21-.99, below the range
                        help="how many machines (1-79)")
    lab_up.add_argument("--firmware", choices=("bios", "uefi", "uefi-http", "secureboot", "arm64"), default="bios",
                        help="bios: SeaBIOS + iPXE ROM; uefi: OVMF's PXE; uefi-http: OVMF's UEFI HTTP boot; "
                        "secureboot: OVMF enforcing Secure Boot (Debian's signed shim, GRUB, kernel); "
                        "arm64: AAVMF under qemu-system-aarch64 (Debian's arm64 GRUB and kernel)")
    lab_up.add_argument("--kernel", type=Path, help="boot this kernel (default: Debian's, fetched with apt)")
    lab_up.add_argument("--initrd", type=Path, help="and this initrd (default: bootd's reporting payload)")
    lab_up.add_argument("--dir", type=Path, default=Path("/var/tmp/bootd-lab"))
    lab_up.add_argument("--timeout", type=float, default=600.0)
    lab_down = lab_commands.add_parser("down", help="remove every namespace, tap and process `lab up` made")
    lab_down.add_argument("--dir", type=Path, default=Path("/var/tmp/bootd-lab"))

    service = commands.add_parser("install-service", help="install bootd.service (hardened, its own user) and "
                                                          "create that user; --root for an image being built")
    service.add_argument("-c", "--config", type=Path, default=Path(DEFAULT_CONFIG), help="the config the unit runs")
    service.add_argument("--bin", type=Path, help="the bootd command (default: this environment's)")
    service.add_argument("--root", type=Path, default=Path("/"), help="install under this root directory")
    service.add_argument("--user", default="bootd", help="the system user bootd runs as (created if missing)")

    _add_appliance_commands(commands)  # ONBOOT's block, below cmd_probe
    _add_power_commands(commands, api_client)  # POWER's block, at the end
    _add_assets_commands(commands)  # ASSETS's block, at the end
    _add_status_command(commands)  # PROGRESS's block, at the end
    _accept_debug_after_subcommands(parser)
    args = parser.parse_args(argv)
    command = _command_name(parser, args)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`bootd render ... | head`): say nothing more, and keep Python's exit-time
        # flush from printing its own complaint about the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except Exception as exc:  # the CLI's one broad guard: whatever no command expected
        debug = args.debug or os.environ.get("BOOTD_DEBUG", "") not in ("", "0")
        if debug:
            traceback.print_exc()
        print(unexpected_error_line(command, exc, debug=debug), file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, OSError) else EXIT_BUG


def _in_range(convert, low: float, high: float):
    """An argparse type: a number from `low` to `high`, else a usage error naming the bounds."""
    def number(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not between {low:g} and {high:g}")
        return value
    return number


def unexpected_error_line(command: str, exc: BaseException, *, debug: bool) -> str:
    """One line for an exception no command handled: what failed and where, and how to see more.

    An OSError is the environment's answer (a file, a directory, a socket), said as the file and the
    reason; anything else is bootd's bug, named by the place it was raised."""
    hint = "" if debug else " (rerun with --debug or BOOTD_DEBUG=1 for the traceback)"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{command}: {where}{exc.strerror}{hint}"
    ours = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).is_relative_to(PACKAGE_DIR)]
    at = ""
    if ours:  # the last step in bootd's own code: a library's frames say less about what bootd was doing
        last = ours[-1]
        at = f" at {Path(last.filename).relative_to(PACKAGE_DIR.parent)}:{last.lineno} in {last.name}()"
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{command}: internal error{at}: {type(exc).__name__}{': ' if message else ''}{message}{hint}"


def _accept_debug_after_subcommands(parser: argparse.ArgumentParser) -> None:
    """`bootd check -c x --debug` works as `bootd --debug check -c x` does, for every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "--debug" not in sub._option_string_actions:
                    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help="print the traceback of an unexpected error (also BOOTD_DEBUG=1)")
                _accept_debug_after_subcommands(sub)


def _command_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """"bootd firmware fetch": the program and the subcommands chosen, for error lines."""
    words = [parser.prog]
    while True:
        chosen = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                       and getattr(args, a.dest, None) in a.choices), None)
        if chosen is None:
            return " ".join(words)
        name = getattr(args, chosen.dest)
        words.append(name)
        parser = chosen.choices[name]


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("power", "reprovision"):
        return cmd_power(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "appliance":
        return cmd_appliance(args)
    if args.command == "assets":
        return cmd_assets(args)
    if args.command == "lab":
        return cmd_lab(args)
    if args.command == "install-service":
        return cmd_install_service(args.root, args.config, args.bin, args.user)
    if args.command == "firmware":
        return cmd_firmware_fetch(Path(args.config), args.dir, args.deb, args.signed, args.arm64)
    if args.command == "run":
        return cmd_run(Path(args.config), args.log_format, args.log_level)
    if args.command == "probe":
        return cmd_probe(args.interface, args.timeout, args.arch)
    if args.command == "certs":
        return cmd_certs(args)
    if args.command in ("apply", "get", "delete"):
        from appliance.api.client import run as run_client

        return run_client(args.command, args)
    if args.command == "store":
        from appliance.store.etcd_cli import cmd_store

        config = _load(Path(args.config))
        return 2 if config is None else cmd_store(config, args.store_command, args.directory)
    if args.command == "render":
        return cmd_render(Path(args.config), args.mac, args.label, args.what)
    return cmd_check(Path(args.config))


def _load(path: Path) -> Config | None:
    """The config, or None after printing every error."""
    try:
        return load_config(path)
    except ConfigInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
    return None


def cmd_run(path: Path, log_format: str, log_level: str) -> int:
    setup_logging(log_format, log_level)
    config = _load(path)
    if config is None:
        return 2
    if problems := startup_problems(config):
        for problem in problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        return asyncio.run(Daemon(path, config).run())
    except StartupError as exc:
        print(f"bootd: {exc}", file=sys.stderr)
        return 2


def cmd_check(path: Path) -> int:
    config = _load(path)
    if config is None:
        return 1
    errors = startup_problems(config)
    warnings: list[str] = []
    if config.store.backend.value == "etcd":  # profiles, groups and templates are in etcd, not the data dir
        from appliance.store.etcd_cli import etcd_data_problems

        etcd_errors, etcd_warnings = etcd_data_problems(config)
        errors += etcd_errors
        warnings += etcd_warnings
    if config.http.enabled and config.http.data_dir.is_dir():
        if config.store.backend.value == "dir":
            store = build_store(config)
            errors += [f"data dir: {p}" for p in store.template_errors()]
            warnings += [f"data dir: {p}" for p in store.check()]
        if not config.http.assets_root.is_dir():
            warnings.append(f"data dir: assets root {config.http.assets_root} does not exist (/assets/ answers 404)")
    for error in errors:
        print(error)
    for warning in warnings:
        print(f"warning: {warning}")
    available = available_firmware(*firmware_roots(config))
    checked = verify(config.firmware_dir)
    for entry in ARCH_TABLE.values():
        served = entry.firmware if entry.firmware in available or entry.fallback not in available else entry.fallback
        if served in available:
            state = f"servable ({checked.get(served.value, 'user-supplied')})"
        else:
            state = f"not servable: no {entry.firmware} in {config.firmware_dir} (bootd firmware fetch)"
        print(f"arch {entry.arch.value:2d} {entry.arch.name:10s} {served.value:14s} {state}")
    if Firmware.SHIM_X64 in available and Firmware.GRUB_X64 in available:
        print(f"Secure Boot (x86-64 UEFI): servable ({checked.get(Firmware.SHIM_X64.value, 'user-supplied')} shim, "
              f"{checked.get(Firmware.GRUB_X64.value, 'user-supplied')} GRUB)")
    print("iPXE clients of every arch are served bootd's HTTP script; they need no firmware file")
    print(f"{path.name}: {len(errors)} errors, {len(warnings)} warnings, {len(config.machines)} machines")
    return 1 if errors else 0


def _said(lines: list[str]) -> int:
    """A command's report of what it did, a line each; success."""
    for line in lines:
        print(line)
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from appliance.api.certs import CertError, client, init

    try:
        lines = init(args.out, args.san, force=args.force) if args.certs_command == "init" \
            else client(args.dir, args.name, days=args.days, force=args.force)
    except CertError as exc:
        print(f"bootd certs: {exc}", file=sys.stderr)
        return 1
    return _said(lines)


def cmd_render(path: Path, mac: str | None, labels: list[str], what: str) -> int:
    """What `GET /<what>?mac=...&labels` serves, printed; the choice of group explained on stderr."""
    from urllib.parse import urlencode

    from appliance.http.boot import render_grub, render_ipxe
    from appliance.http.common import choose
    from appliance.http.configs import render_env_file
    from appliance.mac import try_parse_mac
    from appliance.render import Refusal, generic_for, ignition_for
    from appliance.store import labels_from_query
    from appliance.templates.data import template_data

    config = _load(path)
    if config is None:
        return 2
    if mac is not None and try_parse_mac(mac) is None:
        print(f"bootd render: --mac {mac!r}: not a MAC address (aa:bb:cc:dd:ee:ff)", file=sys.stderr)
        return 2
    pairs = [("mac", mac)] if mac else []
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            print(f"bootd render: --label {label!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        pairs.append((key, value))
    raw_query = urlencode(pairs)
    store = build_store(config)
    if config.store.backend.value == "etcd":  # what the replicas serve: the data in etcd
        from appliance.etcd import EtcdError
        from appliance.store.etcd_cli import etcd_store_of

        try:
            store = etcd_store_of(config)
        except (EtcdError, OSError) as exc:
            print(f"bootd render: store: {exc}", file=sys.stderr)
            return 2
    request_labels = labels_from_query(raw_query)
    for key, value in request_labels.rejected:
        print(f"bootd render: label {key}={value!r} dropped: not a MAC address", file=sys.stderr)
    chosen = choose(store, request_labels)
    matching = [g for g in store.groups() if g.matches(request_labels.labels)]
    print(f"labels: {dict(request_labels.labels)}", file=sys.stderr)
    for rank, group in enumerate(matching):
        selectors = group.selector_string or "(no selectors: a default group)"
        verdict = "chosen" if rank == 0 else "loses to the first (fewer selectors, or a smaller selector string)"
        print(f"  group {group.id!r} ({group.source or 'config'}): selectors {selectors}: {verdict}", file=sys.stderr)
    if chosen.group is None or chosen.profile is None:
        print(f"bootd render: 404: {chosen.reason}", file=sys.stderr)
        return 1
    print(f"profile {chosen.profile.id!r}", file=sys.stderr)
    profile = chosen.profile
    data = template_data(chosen.group, request_labels.labels, raw_query)
    if what in ("ipxe", "grub"):
        if profile.boot is None:
            print(f"bootd render: 404: profile {profile.id!r} has no boot section", file=sys.stderr)
            return 1
        sys.stdout.write(render_ipxe(profile.boot) if what == "ipxe" else render_grub(profile.boot))
        return 0
    if what == "metadata":
        sys.stdout.write(render_env_file(data))
        return 0
    result = ignition_for(profile, store, data) if what == "ignition" \
        else generic_for(profile, store, data, cloud=what == "cloud")
    if isinstance(result, Refusal):
        print(f"bootd render: 404: {result.reason}", file=sys.stderr)
        return 1
    print(result.detail, file=sys.stderr)
    sys.stdout.buffer.write(result.body)
    sys.stdout.flush()
    return 0


def cmd_firmware_fetch(config_path: Path, directory: Path | None, deb: Path | None, signed: bool = False,
                       arm64: bool = False) -> int:
    from appliance.firmware import FirmwareError, fetch

    if directory is None:
        config = _load(config_path)
        if config is None:
            return 2
        directory = config.firmware_dir
    try:
        for line in fetch(directory, deb=deb, signed=signed, arm64=arm64):
            print(line)
    except FirmwareError as exc:
        print(f"bootd firmware fetch: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_install_service(root: Path, config: Path, binary: Path | None, user: str) -> int:
    from appliance.service_install import InstallError, ServiceSettings, default_binary, install, writable_paths

    try:
        settings = ServiceSettings(binary=binary or default_binary(), config=config, user=user,
                                   writable=writable_paths(config) if root == Path("/") else ())
        lines = install(root, settings)
    except (ValueError, InstallError) as exc:
        print(f"bootd install-service: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bootd install-service: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return _said(lines)


def cmd_lab(args: argparse.Namespace) -> int:
    from appliance import lab
    from appliance.firmware import FirmwareError

    try:
        if args.lab_command == "down":
            return lab.down(args.dir)
        if (args.kernel is None) != (args.initrd is None):
            print("bootd lab up: give both --kernel and --initrd, or neither", file=sys.stderr)
            return 2
        for flag, path in (("--kernel", args.kernel), ("--initrd", args.initrd)):
            if path is not None and not path.is_file():
                print(f"bootd lab up: {flag} {path}: no such file", file=sys.stderr)
                return 2
        return lab.up(machines=args.machines, firmware=args.firmware, kernel=args.kernel, initrd=args.initrd,
                      directory=args.dir, timeout=args.timeout)
    except (lab.LabError, FirmwareError) as exc:
        print(f"bootd lab: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bootd lab: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:  # preparing the payload: apt-get, dpkg-deb, cpio
        output = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        last_line = "".join(f": {line}" for line in output.strip().splitlines()[-1:])
        command = " ".join(exc.cmd) if isinstance(exc.cmd, list) else str(exc.cmd)
        print(f"bootd lab: {command} failed (exit {exc.returncode}){last_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_probe(interface: str, timeout: float, arch: int) -> int:
    import socket

    try:  # said at once, before scapy's import and its capture's start-up wait
        socket.if_nametoindex(interface)
    except OSError:
        print(f"bootd probe: {interface}: no such interface", file=sys.stderr)
        return 2
    from appliance.probe import probe  # scapy is slow to import; only this command needs it

    try:
        answers = probe(interface, timeout, arch)
    except OSError as exc:
        print(f"bootd probe: {interface}: {exc.strerror or exc} (it needs root and an existing interface)",
              file=sys.stderr)
        return 2
    for answer in answers:
        print(answer.line())
    print(f"{len(answers)} answers on {interface} within {timeout:g} s")
    return 0


# --- bootd appliance prepare | report | banner (what the appliance image runs at boot; appliance/onboot.py) ---

def _add_appliance_commands(commands) -> None:
    # the defaults only: onboot itself is imported to run a command (appliance/onboot_defaults.py says why)
    from appliance import onboot_defaults as onboot

    appliance = commands.add_parser("appliance", help="what the appliance image runs at boot: its config from "
                                                      "the BOOTD partition, the network unit, the console banner")
    appliance_commands = appliance.add_subparsers(dest="appliance_command", required=True)
    prepare = appliance_commands.add_parser(
        "prepare", help="check BOOTD's bootd.yaml and make it the active config (the last good one is kept when it "
                        "has errors; the turnkey proxy-DHCP config when there is none); write the network unit, "
                        "the report and the banner")
    for flag, default, what in (
            ("--bootd-dir", onboot.DEFAULT_BOOTD_DIR, "the BOOTD partition"),
            ("--config-dir", onboot.DEFAULT_CONFIG_DIR, "the active config bootd runs"),
            ("--state-dir", onboot.DEFAULT_STATE_DIR, "the state partition (bootd's state_dir is its state/)"),
            ("--firmware-dir", onboot.DEFAULT_FIRMWARE_DIR, "the image's verified iPXE binaries"),
            ("--network-dir", onboot.DEFAULT_NETWORK_DIR, "where the systemd-networkd unit goes"),
            ("--sys-class-net", onboot.DEFAULT_SYS_CLASS_NET, "the NICs, to find the first Ethernet one"),
            ("--journal-socket", onboot.DEFAULT_JOURNAL_SOCKET, "journald's, for bootd's errors when it cannot start")):
        prepare.add_argument(flag, type=Path, default=default, help=f"{what} (default {default})")
    prepare.add_argument("--user", default=onboot.DEFAULT_SERVICE_USER,
                         help="bootd's service user, who gets the active data dir (default %(default)s)")
    report = appliance_commands.add_parser("report", help="print the config's errors from the last prepare (for "
                                                          "bootd's journal); exits 0 whatever they are")
    banner = appliance_commands.add_parser("banner", help="rewrite the console banner (/run/bootd/issue)")
    banner.add_argument("--pid", type=_pid, help="the running bootd: add its user, capabilities and memory")
    for sub in (prepare, report, banner):
        sub.add_argument("--run-dir", type=Path, default=onboot.DEFAULT_RUN_DIR,
                         help=f"the report and the banner (default {onboot.DEFAULT_RUN_DIR})")
    for sub in (report, banner):
        sub.add_argument("--config-dir", type=Path, default=onboot.DEFAULT_CONFIG_DIR,
                         help=f"the active config, for what is served (default {onboot.DEFAULT_CONFIG_DIR})")


def _pid(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 2**22:  # Linux's largest pid_max
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id")
    return int(text)


def cmd_appliance(args: argparse.Namespace) -> int:
    try:
        return _appliance(args)
    except OSError as exc:  # the state partition or /run: the disk's answer, one line (a config error is no OSError)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"bootd appliance {args.appliance_command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED


def _appliance(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from appliance import onboot

    if args.appliance_command == "prepare":
        # absolute: the active config names them, and its relative paths are relative to itself
        paths = onboot.AppliancePaths(bootd_dir=args.bootd_dir.absolute(), config_dir=args.config_dir.absolute(),
                                      state_dir=args.state_dir.absolute(), firmware_dir=args.firmware_dir.absolute(),
                                      network_dir=args.network_dir, run_dir=args.run_dir,
                                      sys_class_net=args.sys_class_net, service_user=args.user,
                                      journal_socket=args.journal_socket)
        report = onboot.prepare(paths, datetime.now(timezone.utc))
        for line in report.text().splitlines():
            print(line)
        return 0  # config errors are handled (the last good config is kept): bootd-config.service succeeds
    paths = onboot.AppliancePaths(config_dir=args.config_dir, run_dir=args.run_dir)
    if args.appliance_command == "report":
        report = onboot.read_report(paths)
        print(report.summary)
        for error in report.errors:
            print(f"error: {error}")
        return 0  # never stops bootd from starting with the last good config
    onboot.banner(paths, args.pid)
    return 0


# --- bootd assets fetch | list | prune (the OS images profiles boot; appliance/assets/) ---

def _add_assets_commands(commands) -> None:
    from appliance.assets.sources import ARCHES, CHANNELS, OsName

    assets = commands.add_parser("assets", help="the OS images profiles boot: fetch and verify them, list, prune")
    assets_commands = assets.add_subparsers(dest="assets_command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="its http.assets_dir and data dir's profiles")
    where.add_argument("--data-dir", type=Path, help="a matchbox data dir instead of a config: DIR/assets, "
                                                     "DIR/profiles")
    fetch = assets_commands.add_parser(
        "fetch", parents=[where], help="download a release's PXE kernel and initrd, verify their signatures with "
                                       "the distribution's key, then point <os>/<arch>/<channel> at it")
    fetch.add_argument("os", choices=[o.value for o in OsName])
    channels = sorted({c for names in CHANNELS.values() for c in names})
    fetch.add_argument("--channel", default="stable", choices=channels,
                       help="flatcar: stable, beta, alpha, lts; fcos: stable, testing, next (default stable)")
    fetch.add_argument("--version", default="latest", help="a version, or latest (the channel's current)")
    fetch.add_argument("--arch", default="amd64", choices=ARCHES)
    fetch.add_argument("--mirror", help="fetch from this mirror (flatcar: URL/<channel>/<arch>-usr/<version>/, "
                                        "or put {channel} in URL; fcos: URL/streams/<stream>.json)")
    fetch.add_argument("--install", action="store_true", help="also the disk image the installer writes")
    fetch.add_argument("--keyring", type=Path, help="verify with the keys in this file instead of the shipped ones")
    assets_commands.add_parser("list", parents=[where], help="versions present, channel pointers, what profiles use")
    prune = assets_commands.add_parser("prune", parents=[where], help="remove old versions; never one a channel "
                                                                      "pointer or a profile names")
    prune.add_argument("--keep", type=_in_range(int, 0, 1000), required=True, help="newest versions kept per os/arch")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")


def cmd_assets(args: argparse.Namespace) -> int:
    from appliance.assets.store import AssetStore

    if args.data_dir is not None:
        assets_root, profiles_dir = args.data_dir / "assets", args.data_dir / "profiles"
    else:
        config = _load(Path(args.config))
        if config is None:
            return 2
        assets_root, profiles_dir = config.http.assets_root, config.http.data_dir / "profiles"
    store = AssetStore(assets_root)
    if args.assets_command == "fetch":
        return _assets_fetch(args, store)
    if args.assets_command == "list":
        return _assets_list(store, profiles_dir)
    return _assets_prune(store, profiles_dir, args.keep, args.dry_run)


def _assets_fetch(args: argparse.Namespace, store) -> int:
    from appliance.assets.fetch import FetchFailed, FetchRequest, fetch_release
    from appliance.assets.progress import ProgressReporter
    from appliance.assets.sources import CHANNELS, OsName

    os_name = OsName(args.os)
    if args.channel not in CHANNELS[os_name]:
        print(f"bootd assets fetch: {os_name} has no channel {args.channel!r} (its channels: "
              f"{', '.join(CHANNELS[os_name])})", file=sys.stderr)
        return 2
    request = FetchRequest(os=os_name, channel=args.channel, arch=args.arch, mirror=args.mirror,
                           version=None if args.version == "latest" else args.version, install=args.install,
                           keyring=args.keyring)
    progress = ProgressReporter(sys.stdout, tty=sys.stdout.isatty())
    try:
        outcome = asyncio.run(fetch_release(store, request, say=lambda line: print(line, flush=True),
                                            progress=progress))
    except FetchFailed as exc:
        print(f"bootd assets fetch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    paths = ", ".join(f"/assets/{request.os}/{request.arch}/{request.channel}/{f.name}" for f in outcome.release.files)
    print(f"{request.label} is {outcome.release.version}: {paths}")
    return 0


def _profile_uses(profiles_dir: Path) -> tuple[list, list[str]]:
    """The asset paths the data dir's profiles boot, and the profile files that could not be read."""
    from appliance.assets.store import profile_uses
    from appliance.store.model import InvalidDocument, parse_profile

    named, unreadable = [], []
    for path in sorted(profiles_dir.glob("*.json")) if profiles_dir.is_dir() else []:
        try:
            profile = parse_profile(path.read_bytes())
        except (OSError, InvalidDocument, ValueError) as exc:
            unreadable.append(f"{path.name}: {exc}")
            continue
        if profile.boot is not None:
            named.append((profile.id, [profile.boot.kernel, *profile.boot.initrd]))
    return profile_uses(named), unreadable


def _assets_list(store, profiles_dir: Path) -> int:
    from datetime import datetime, timezone

    from appliance.assets.progress import human

    uses, unreadable = _profile_uses(profiles_dir)
    inventory = store.inventory()
    for arch in inventory:
        print(f"{arch.os}/{arch.arch}:")
        pointed = {}
        for channel, version in arch.pointers:
            pointed.setdefault(version, []).append(channel)
        for stored in reversed(arch.versions):
            manifest = stored.manifest
            if manifest is not None:
                when = datetime.fromtimestamp(manifest.verified_at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                state = f"verified {when} by key {manifest.signer}"
            else:
                state = "not verified by bootd (no manifest)"
            names = {stored.version, *pointed.get(stored.version, [])}
            users = sorted({u.profile for u in uses if u.os == arch.os and u.arch == arch.arch
                            and u.version_or_channel in names})
            current = f", current for {', '.join(pointed[stored.version])}" if stored.version in pointed else ""
            used = f", used by {', '.join(users)}" if users else ""
            print(f"  {stored.version:20s} {human(stored.size):>10s}  {state}{current}{used}")
        for channel, version in arch.pointers:
            print(f"  {channel} -> {version}")
        for version in arch.partials:
            print(f"  {version}: a partial download (bootd assets fetch resumes it)")
    for use in uses:
        if not (store.root / use.path).exists():
            hint = f" (bootd assets fetch {use.os} --channel {use.version_or_channel} --arch {use.arch})" \
                if use.os and not use.version_or_channel[:1].isdigit() else ""
            print(f"warning: profile {use.profile!r} boots /assets/{use.path}, which is missing{hint}")
    for problem in unreadable:
        print(f"warning: profiles/{problem}")
    if not inventory:
        print(f"no OS images under {store.root} (bootd assets fetch flatcar)")
    return 0


def _assets_prune(store, profiles_dir: Path, keep: int, dry_run: bool) -> int:
    from appliance.assets.store import StoreError, prunable

    uses, unreadable = _profile_uses(profiles_dir)
    if unreadable:  # a profile that cannot be read might name a version: remove nothing rather than guess
        for problem in unreadable:
            print(f"bootd assets prune: profiles/{problem}: cannot tell what it uses; nothing removed",
                  file=sys.stderr)
        return EXIT_FAILED
    lines = []
    try:
        for arch in store.inventory():
            with store.locked(arch.os, arch.arch):
                names = {u.version_or_channel for u in uses if u.os == arch.os and u.arch == arch.arch}
                pointers = dict(arch.pointers)
                referenced = {pointers.get(name, name) for name in names}
                for decision in prunable([v.version for v in arch.versions], set(pointers.values()), referenced, keep):
                    where = f"{arch.os}/{arch.arch}/{decision.version}"
                    if decision.remove and not dry_run:
                        store.remove_version(arch.os, arch.arch, decision.version)
                    verb = ("would remove" if dry_run else "removed") if decision.remove else "kept"
                    lines.append(f"{verb} {where} ({decision.why})")
    except StoreError as exc:
        print(f"bootd assets prune: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _said(lines)


if __name__ == "__main__":
    raise SystemExit(main())


# --- bootd status (the machines' progress in a terminal; appliance/status.py) ---

def _add_status_command(commands) -> None:
    status = commands.add_parser(
        "status", help="the machines' progress as a table (exit 3 when a machine's last boot failed)",
        description="The machines' progress as /ui/ shows it. Piped: plain text, once. Exit codes: 0 every machine "
                    "is fine so far, 1 bootd could not be reached, 2 usage or config, 3 a machine's last boot failed.")
    status.add_argument("--endpoint", metavar="URL", help="bootd's HTTP address (default: the config's http address)")
    status.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="the config whose HTTP address is the default")
    status.add_argument("--watch", action="store_true", help="on a terminal, a live view until Ctrl-C")


def cmd_status(args: argparse.Namespace) -> int:
    from appliance import status

    endpoint = args.endpoint
    if endpoint is None:
        config = _load(Path(args.config))
        if config is None:
            print("bootd status: give --endpoint URL, or a config (-c) with the http address", file=sys.stderr)
            return 2
        endpoint = status.default_endpoint(config)
    try:
        return status.run(endpoint, watch=args.watch)
    except status.StatusError as exc:
        print(f"bootd status: {exc}", file=sys.stderr)
        return 1


# --- bootd power | reprovision (a machine's BMC over IPMI or Redfish, through the daemon; appliance/power/) ---

def _add_power_commands(commands, api_client: argparse.ArgumentParser) -> None:
    power = commands.add_parser(
        "power", parents=[api_client], help="ask machines' BMCs (bmc: in bootd.yaml) through the running bootd",
        description="The daemon asks each machine's BMC (IPMI or Redfish), all at once, and answers a line per "
                    "machine; a failure is one line on stderr and exit 1. Needs the read-write API (api:) and a "
                    "client certificate, as bootd apply does.")
    power.add_argument("action", choices=("status", "on", "off", "cycle"), help="cycle: off, then on")
    reprovision = commands.add_parser(
        "reprovision", parents=[api_client], help="PXE-boot machines once through their BMC (then they boot from "
                                                  "disk again): a one-time boot override, then a power cycle",
        description="Sets each machine's one-time boot override to PXE (IPMI boot device pxe; Redfish "
                    "BootSourceOverrideTarget Pxe, Once) and power-cycles it (powers it on when off), through the "
                    "running bootd; its progress shows 'power: PXE boot requested by <you>' and the boot that "
                    "follows.")
    for sub in (power, reprovision):
        sub.add_argument("names", nargs="*", metavar="NAME", help="machines as named in bootd.yaml")
        sub.add_argument("--all", action="store_true", help="every machine with a bmc:")


def requester() -> str:
    """Who asks, for the machine's progress: the user behind sudo, else the user running bootd."""
    import pwd

    if name := os.environ.get("SUDO_USER"):
        return name
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def cmd_power(args: argparse.Namespace) -> int:
    import grpc

    from appliance.api.client import ApiClient, ClientError
    from appliance.power.model import PowerAction, PowerRequest
    from appliance.power.service import call

    command = "bootd reprovision" if args.command == "reprovision" else f"bootd power {args.action}"
    if bool(args.names) == args.all:
        print(f"{command}: name the machines, or give --all", file=sys.stderr)
        return 2
    action = PowerAction.REPROVISION if args.command == "reprovision" else PowerAction(args.action)
    request = PowerRequest(action=action, machines=tuple(args.names), all=args.all, requested_by=requester())
    try:
        client = ApiClient(args.endpoint, Path(args.ca_file), Path(args.cert_file), Path(args.key_file))
    except ClientError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    try:
        outcomes = call(client.channel, request)
    except grpc.RpcError as exc:
        print(f"{command}: {args.endpoint}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()
    for outcome in outcomes:
        print(outcome.line(), file=sys.stdout if outcome.ok else sys.stderr)
    return 0 if all(o.ok for o in outcomes) else EXIT_FAILED
