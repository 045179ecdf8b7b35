"""bootd's command line: parses arguments and calls one function per subcommand."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from appliance import __version__
from appliance.config import Config, ConfigInvalid, load_config
from appliance.dhcp.policy import available_firmware
from appliance.dhcp.pxe import ARCH_TABLE
from appliance.firmware import verify
from appliance.daemon import Daemon, StartupError, build_store, firmware_roots, startup_problems
from appliance.logs import setup_logging

DEFAULT_CONFIG = "/etc/bootd/bootd.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bootd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bootd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")

    check = commands.add_parser("check", help="check a config and its data dir; exit 1 on errors")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    probe = commands.add_parser("probe", help="send one PXE DHCPDISCOVER on IFACE and list every server that answers")
    probe.add_argument("-i", "--interface", required=True)
    probe.add_argument("--timeout", type=float, default=3.0)
    probe.add_argument("--arch", type=int, default=0, help="option 93 to send (0 BIOS, 7 x64 UEFI, ...)")

    firmware = commands.add_parser("firmware", help="get the iPXE binaries")
    firmware_commands = firmware.add_subparsers(dest="firmware_command", required=True)
    fetch = firmware_commands.add_parser("fetch", help="download Debian's ipxe package, verify it, install it")
    fetch.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="install into this config's firmware dir")
    fetch.add_argument("--dir", type=Path, help="install here instead")
    fetch.add_argument("--deb", type=Path, help="use this downloaded ipxe .deb instead of apt-get download")

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
    certs_client.add_argument("--days", type=int, default=365)
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
    lab_up.add_argument("--machines", type=int, default=2)
    lab_up.add_argument("--firmware", choices=("bios", "uefi"), default="bios")
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

    args = parser.parse_args(argv)
    if args.command == "lab":
        return cmd_lab(args)
    if args.command == "install-service":
        return cmd_install_service(args.root, args.config, args.bin, args.user)
    if args.command == "firmware":
        return cmd_firmware_fetch(Path(args.config), args.dir, args.deb)
    if args.command == "run":
        return cmd_run(Path(args.config), args.log_format, args.log_level)
    if args.command == "probe":
        return cmd_probe(args.interface, args.timeout, args.arch)
    if args.command == "certs":
        return cmd_certs(args)
    if args.command in ("apply", "get", "delete"):
        from appliance.api.client import run as run_client

        return run_client(args.command, args)
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
    if config.http.enabled and config.http.data_dir.is_dir():
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
        if entry.firmware in available:
            state = f"servable ({checked.get(entry.firmware.value, 'user-supplied')})"
        else:
            state = f"not servable: no {entry.firmware} in {config.firmware_dir} (bootd firmware fetch)"
        print(f"arch {entry.arch.value:2d} {entry.arch.name:10s} {entry.firmware.value:14s} {state}")
    print("iPXE clients of every arch are served bootd's HTTP script; they need no firmware file")
    print(f"{path.name}: {len(errors)} errors, {len(warnings)} warnings, {len(config.machines)} machines")
    return 1 if errors else 0


def cmd_certs(args: argparse.Namespace) -> int:
    from appliance.api.certs import CertError, client, init

    try:
        lines = init(args.out, args.san, force=args.force) if args.certs_command == "init" \
            else client(args.dir, args.name, days=args.days, force=args.force)
    except CertError as exc:
        print(f"bootd certs: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def cmd_render(path: Path, mac: str | None, labels: list[str], what: str) -> int:
    """What `GET /<what>?mac=...&labels` serves, printed; the choice of group explained on stderr."""
    from urllib.parse import urlencode

    from appliance.http.boot import render_grub, render_ipxe
    from appliance.http.common import choose
    from appliance.http.configs import render_env_file
    from appliance.render import Refusal, generic_for, ignition_for
    from appliance.store import labels_from_query
    from appliance.templates.data import template_data

    config = _load(path)
    if config is None:
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


def cmd_firmware_fetch(config_path: Path, directory: Path | None, deb: Path | None) -> int:
    from appliance.firmware import FirmwareError, fetch

    if directory is None:
        config = _load(config_path)
        if config is None:
            return 2
        directory = config.firmware_dir
    try:
        for line in fetch(directory, deb=deb):
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
    for line in lines:
        print(line)
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from appliance import lab
    from appliance.firmware import FirmwareError

    try:
        if args.lab_command == "down":
            return lab.down(args.dir)
        if (args.kernel is None) != (args.initrd is None):
            print("bootd lab up: give both --kernel and --initrd, or neither", file=sys.stderr)
            return 2
        return lab.up(machines=args.machines, firmware=args.firmware, kernel=args.kernel, initrd=args.initrd,
                      directory=args.dir, timeout=args.timeout)
    except (lab.LabError, FirmwareError, OSError) as exc:
        print(f"bootd lab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_probe(interface: str, timeout: float, arch: int) -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
