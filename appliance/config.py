"""bootd.yaml -> frozen dataclasses.

Invariants:
- The file is read strictly: an unknown key, a duplicate key, a value of the wrong type, a duplicate machine
  name, MAC or IP is an error. Every error names the file, the line and the field, and all of them are
  reported at once (`load_config` raises `ConfigInvalid` with the full list).
- Scalars are read from their source text, not through YAML 1.1's implicit types, so `mac: 52:54:00:12:34:56`
  (a base-60 integer to YAML 1.1) and `name: no` (a boolean) mean what they look like.
- Relative paths are relative to the directory holding the config file.
- A `Config` is never changed; a reload builds a new one.
"""

from __future__ import annotations

import ipaddress
import json
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from appliance.assets.sources import ARCHES, CHANNELS, OsName, ReleaseError, check_mirror
from appliance.dhcp.modes import DhcpMode, IpxeDetection, UefiStrategy
from appliance.dns.records import check_extra_record
from appliance.mac import MacAddress, parse_mac

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

DEFAULT_STATE_DIR = Path("/var/lib/bootd/state")
DEFAULT_DATA_DIR = Path("/var/lib/bootd")
DEFAULT_HTTP_PORT = 8080

# RFC 1123 host name label; names are compared lower-case.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class Role(StrEnum):
    CONTROLLER = "controller"
    WORKER = "worker"


# DHCP options whose integer values have a fixed width (RFC 2132); others take IPs, text or hex.
_INT_OPTIONS = {2: (4, True), 13: (2, False), 22: (2, False), 23: (1, False), 24: (4, False), 26: (2, False),
                35: (4, False), 37: (1, False), 38: (4, False), 51: (4, False), 57: (2, False), 58: (4, False),
                59: (4, False)}
# Options bootd writes itself from the config's own keys; giving them under `options` would fight those.
_RESERVED_OPTIONS = {1, 3, 6, 12, 15, 43, 50, 51, 53, 54, 55, 60, 61, 66, 67, 82, 93, 94, 97, 175}


@dataclass(frozen=True, slots=True)
class ConfigError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ConfigInvalid(Exception):
    """The config file has errors; `errors` lists every one of them."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    interfaces: tuple[str, ...] = ()
    address: IPAddress | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NamesConfig:
    provisioner: str | None = None
    controllers: str | None = None
    workers: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    enabled: bool = True
    address: IPAddress | None = None  # None: every address of the host
    port: int = DEFAULT_HTTP_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    assets_dir: Path | None = None  # None: <data_dir>/assets, as matchbox's default

    @property
    def assets_root(self) -> Path:
        return self.assets_dir if self.assets_dir is not None else self.data_dir / "assets"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    """The read-write API: matchbox's gRPC protocol over TLS with required client certificates."""

    enabled: bool = False  # on when the section is given (and not `enabled: false`), as matchbox's -rpc-address
    address: IPAddress | None = None
    port: int = 8081
    cert_file: Path = Path("/etc/bootd/tls/server.crt")
    key_file: Path = Path("/etc/bootd/tls/server.key")
    ca_file: Path = Path("/etc/bootd/tls/ca.crt")  # client certificates must chain to it
    max_message_bytes: int = 4 * 1024 * 1024  # grpc-go's default, matchbox's limit


class StoreBackend(StrEnum):
    DIR = "dir"  # the matchbox data dir, http.data_dir (the default)
    ETCD = "etcd"  # profiles, groups and templates in etcd, shared by every replica


class OnUnreachable(StrEnum):
    WAIT = "wait"  # at start, wait for etcd (logging each attempt) before serving
    REFUSE = "refuse"  # at start, exit with the endpoints and the reasons


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreTls:
    """TLS to etcd: the CA of the members' certificates; a client certificate and key if etcd asks for one."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Where profiles, groups and templates live (`store:`); without the section, http.data_dir as before."""

    backend: StoreBackend = StoreBackend.DIR
    endpoints: tuple[str, ...] = ()  # http://host:port, https://host:port or host:port (TLS when tls is set)
    prefix: str = "/bootd"  # every key bootd writes starts with it (no trailing slash)
    tls: StoreTls | None = None
    on_unreachable: OnUnreachable = OnUnreachable.WAIT
    timeout: int = 5  # seconds for one etcd call
    replica: str | None = None  # this replica's name in the fleet view and its keys (None: the host's name)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """Where /metrics is served: on the HTTP port (no `metrics` section), or with `port` only on a listener of
    its own, apart from the boot network's port (address None: every address of the host)."""

    address: IPAddress | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayPool:
    """Authoritative mode: the addresses of a segment behind a DHCP relay, chosen by the relay's giaddr."""

    subnet: ipaddress.IPv4Network
    range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]
    router: ipaddress.IPv4Address | None = None  # the relay's segment needs its own (bootd is not on it)
    dns_servers: tuple[ipaddress.IPv4Address, ...] | None = None  # None: dhcp.dns_servers


@dataclass(frozen=True, slots=True, kw_only=True)
class DhcpConfig:
    mode: DhcpMode = DhcpMode.OFF
    only_known: bool = False  # True: machines not listed under `machines` get no boot offer
    port: int = 67
    pxe_port: int = 4011
    uefi: UefiStrategy = UefiStrategy.BINL
    ipxe_detection: IpxeDetection = IpxeDetection.ANY
    uefi_arch: Mapping[int, UefiStrategy] = field(default_factory=lambda: MappingProxyType({}))
    firmware_dir: Path | None = None  # None: <state_dir>/firmware
    # authoritative mode
    subnet: ipaddress.IPv4Network | None = None
    range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None
    router: ipaddress.IPv4Address | None = None
    dns_servers: tuple[ipaddress.IPv4Address, ...] = ()
    lease_seconds: int = 3600
    options: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))
    router_advertisement: bool = True
    relay_pools: tuple[RelayPool, ...] = ()  # segments behind DHCP relays (authoritative mode)
    secure_boot: bool = False  # UEFI x64 PXE clients get the signed shim -> GRUB chain (machines may override)


@dataclass(frozen=True, slots=True, kw_only=True)
class TftpConfig:
    enabled: bool = False  # on when the section is given (and not `enabled: false`)
    address: IPAddress | None = None
    port: int = 69
    root: Path | None = None  # served after the firmware directory
    max_transfers: int = 100
    max_per_client: int = 8
    timeout: int = 1  # seconds before the first retransmission (doubling, up to 8 s)
    retries: int = 5
    max_blksize: int = 65464  # further clamped to the ingress interface's MTU - 32
    max_windowsize: int = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsRecordConfig:
    name: str
    rtype: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsConfig:
    enabled: bool = False  # on when the section is given (and not `enabled: false`)
    address: IPAddress | None = None
    port: int = 53
    ttl: int = 60
    reverse: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # default: /24 and /64 of each address
    records: tuple[DnsRecordConfig, ...] = ()
    forward: tuple[tuple[str, int], ...] = ()  # upstream servers for names outside the zones (then RA is set)
    max_tcp_connections: int = 256  # beyond, each new connection closes the least recently active one
    tcp_idle_timeout: int = 10  # seconds without a complete query before a TCP connection is closed


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackedChannel:
    """A channel the daemon keeps current in the assets directory (`assets.track`)."""

    os: str  # appliance.assets.sources.OsName's values
    channel: str
    arch: str = "amd64"
    mirror: str | None = None  # None: the distribution's own servers
    keyring: Path | None = None  # None: the public keys shipped with bootd
    install: bool = False  # also the install image


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetsConfig:
    track: tuple[TrackedChannel, ...] = ()
    check_seconds: int = 86400  # `check: daily`


class BmcProtocol(StrEnum):
    IPMI = "ipmi"
    REDFISH = "redfish"


@dataclass(frozen=True, slots=True, kw_only=True)
class BmcConfig:
    """A machine's BMC (`bootd power`, `bootd reprovision`). The password is never in the config: it is read
    from `password_file` (not readable by every user) or the environment variable `password_env` at each
    request, so no Config, log line or error ever holds it."""

    protocol: BmcProtocol
    address: str  # an IP address or a host name
    port: int  # default 623 (IPMI) or 443 (Redfish)
    username: str
    password_file: Path | None = None
    password_env: str | None = None
    system: str | None = None  # Redfish: the system's id under /redfish/v1/Systems (default: the only one)
    scheme: str = "https"  # Redfish: http only for emulators and labs
    ca_file: Path | None = None  # Redfish over https: verify the BMC against this (default: the system's CAs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    name: str
    mac: MacAddress
    ip: IPAddress | None = None
    role: Role | None = None
    profile: str | None = None
    ignore: bool = False  # DHCP: never answer this machine
    boot_file: str | None = None  # DHCP: boot this (a TFTP file name or a URL) instead of the iPXE binary
    secure_boot: bool | None = None  # DHCP: the signed shim -> GRUB chain (None: dhcp.secure_boot)
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    bmc: BmcConfig | None = None  # `bootd power` and `bootd reprovision` reach the machine through it
    line: int = 0  # where the machine is written, for messages that point back at it


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: Path
    state_dir: Path = DEFAULT_STATE_DIR
    user: str | None = None  # started as root: the user bootd becomes once every socket is bound
    listen: ListenConfig = ListenConfig()
    domain: str | None = None
    names: NamesConfig = NamesConfig()
    http: HttpConfig = HttpConfig()
    metrics: MetricsConfig = MetricsConfig()
    dhcp: DhcpConfig = DhcpConfig()
    tftp: TftpConfig = TftpConfig()
    dns: DnsConfig = DnsConfig()
    api: ApiConfig = ApiConfig()
    store: StoreConfig = StoreConfig()
    assets: AssetsConfig = AssetsConfig()
    machines: tuple[Machine, ...] = ()

    @property
    def firmware_dir(self) -> Path:
        return self.dhcp.firmware_dir or self.state_dir / "firmware"

    def fqdn(self, name: str) -> str:
        return f"{name}.{self.domain}" if self.domain else name

    def machine_by_mac(self, mac: MacAddress) -> Machine | None:
        for machine in self.machines:
            if machine.mac == mac:
                return machine
        return None


def load_config(path: str | Path) -> Config:
    """Read and check `path`; raise ConfigInvalid (every error) or OSError (unreadable)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigInvalid([ConfigError(path.name, line, "(file)", f"not UTF-8 text (byte {exc.start})")]) from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    reader = _Reader(path)
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigInvalid([ConfigError(path.name, line, "(yaml)", problem)]) from None
    except yaml.YAMLError as exc:
        raise ConfigInvalid([ConfigError(path.name, 1, "(yaml)", str(exc))]) from None
    if root is None:
        raise ConfigInvalid([ConfigError(path.name, 1, "(file)", "the config file is empty")])
    config = reader.config(root)
    if reader.errors or config is None:
        raise ConfigInvalid(sorted(reader.errors, key=lambda e: e.line))
    return config


class _Reader:
    """Walks the YAML node tree; each method returns a value, or None after recording an error."""

    def __init__(self, path: Path) -> None:
        self.file = path
        self.base = path.parent
        self.errors: list[ConfigError] = []

    def error(self, node: Node, field_name: str, message: str) -> None:
        self.errors.append(ConfigError(self.file.name, node.start_mark.line + 1, field_name, message))

    # --- shapes -----------------------------------------------------------------------------------

    def fields(self, node: Node, where: str, allowed: set[str]) -> dict[str, Node] | None:
        if _is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.error(node, where or "(top level)", "expected a mapping of keys to values")
            return None
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            name = f"{where}.{key}" if where else str(key)
            if key is None:
                self.error(key_node, where or "(top level)", "keys must be plain names")
            elif key in out:
                first = out[key].start_mark.line + 1
                self.error(key_node, name, f"duplicate key (first given on line {first})")
            elif key not in allowed:
                known = ", ".join(sorted(allowed))
                self.error(key_node, name, f"unknown key (known keys here: {known})")
            else:
                out[key] = value_node
        return out

    def sequence(self, node: Node, where: str) -> list[Node] | None:
        if _is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.error(node, where, "expected a list")
            return None
        return list(node.value)

    def string(self, node: Node, where: str) -> str | None:
        if not isinstance(node, ScalarNode) or _is_null(node):
            self.error(node, where, "expected a string")
            return None
        return node.value

    def boolean(self, node: Node, where: str) -> bool | None:
        text = node.value.lower() if isinstance(node, ScalarNode) else None
        if text in ("true", "yes", "on"):
            return True
        if text in ("false", "no", "off"):
            return False
        self.error(node, where, f"expected true or false, got {_show(node)}")
        return None

    def integer(self, node: Node, where: str, low: int, high: int) -> int | None:
        text = node.value if isinstance(node, ScalarNode) and node.style is None else ""
        if not re.fullmatch(r"[0-9]+", text):
            self.error(node, where, f"expected a whole number from {low} to {high}, got {_show(node)}")
            return None
        value = int(text)
        if not low <= value <= high:
            self.error(node, where, f"{value} is out of range ({low} to {high})")
            return None
        return value

    def ip(self, node: Node, where: str) -> IPAddress | None:
        text = self.string(node, where)
        if text is None:
            return None
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            self.error(node, where, f"{text!r} is not an IP address")
            return None

    def mac(self, node: Node, where: str) -> MacAddress | None:
        text = self.string(node, where)
        if text is None:
            return None
        try:
            return parse_mac(text)
        except ValueError:
            self.error(node, where, f"{text!r} is not a MAC address")
            return None

    def path(self, node: Node, where: str) -> Path | None:
        text = self.string(node, where)
        if text is None:
            return None
        if not text or "\0" in text:
            self.error(node, where, "expected a file system path")
            return None
        return (self.base / text) if not Path(text).is_absolute() else Path(text)

    def label(self, node: Node, where: str) -> str | None:
        text = self.string(node, where)
        if text is None:
            return None
        if not _LABEL.match(text.lower()):
            self.error(node, where, f"{text!r} is not a valid host name (letters, digits and '-', 1-63 long)")
            return None
        return text.lower()

    def user(self, node: Node, where: str) -> str | None:
        text = self.string(node, where)
        if text is None:
            return None
        try:
            pwd.getpwnam(text)
        except KeyError:
            self.error(node, where, f"no user {text!r} on this host (bootd install-service creates one; or "
                                    "useradd --system)")
            return None
        return text

    def domain(self, node: Node, where: str) -> str | None:
        text = self.string(node, where)
        if text is None:
            return None
        name = text.lower().rstrip(".")
        if len(name) > 253 or not all(_LABEL.match(part) for part in name.split(".")):
            self.error(node, where, f"{text!r} is not a valid domain name")
            return None
        return name

    def choice(self, node: Node, where: str, enum: type[StrEnum]) -> Any:
        text = self.string(node, where)
        if text is None:
            return None
        try:
            return enum(text)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            self.error(node, where, f"{text!r} is not one of: {allowed}")
            return None

    def json_mapping(self, node: Node, where: str) -> Mapping[str, Any] | None:
        """Free-form metadata: any YAML mapping that JSON can carry (it becomes group metadata)."""
        if not isinstance(node, MappingNode):
            self.error(node, where, "expected a mapping")
            return None
        keys = self.fields(node, where, {k.value for k, _ in node.value if isinstance(k, ScalarNode)})
        if keys is None:
            return None
        loader = yaml.SafeLoader("")
        try:
            value = loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.error(node, where, f"cannot read: {exc}")
            return None
        finally:
            loader.dispose()
        try:
            value = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            self.error(node, where, "metadata must hold only strings, numbers, booleans, lists and mappings")
            return None
        return MappingProxyType(value)

    def optional(self, nodes: dict[str, Node], key: str, where: str, read: Callable[[Node, str], T | None]) -> T | None:
        node = nodes.get(key)
        return None if node is None else read(node, f"{where}.{key}" if where else key)

    # --- sections ---------------------------------------------------------------------------------

    def config(self, root: Node) -> Config | None:
        top = self.fields(root, "", {"state_dir", "user", "listen", "domain", "names", "http", "metrics", "dhcp", "tftp",
                                     "dns", "api", "store", "assets", "machines"})
        if top is None:
            return None
        kw: dict[str, Any] = {"source": self.file}
        if (state_dir := self.optional(top, "state_dir", "", self.path)) is not None:
            kw["state_dir"] = state_dir
        if (user := self.optional(top, "user", "", self.user)) is not None:
            kw["user"] = user
        if "listen" in top and (listen := self.listen(top["listen"])) is not None:
            kw["listen"] = listen
        if (domain := self.optional(top, "domain", "", self.domain)) is not None:
            kw["domain"] = domain
        if "names" in top and (names := self.names(top["names"])) is not None:
            kw["names"] = names
        if "http" in top and (http := self.http(top["http"])) is not None:
            kw["http"] = http
        if "metrics" in top and (metrics := self.metrics(top["metrics"], kw.get("http", HttpConfig()))) is not None:
            kw["metrics"] = metrics
        if "dhcp" in top and (dhcp := self.dhcp(top["dhcp"])) is not None:
            kw["dhcp"] = dhcp
        if "tftp" in top and (tftp := self.tftp(top["tftp"])) is not None:
            kw["tftp"] = tftp
        if "dns" in top and (dns := self.dns(top["dns"])) is not None:
            kw["dns"] = dns
            if dns.enabled and "domain" not in top:
                self.error(top["dns"], "domain", "required when dns is on: the zone bootd answers for")
        if "api" in top and (api := self.api(top["api"])) is not None:
            kw["api"] = api
        if "store" in top and (store := self.store(top["store"])) is not None:
            kw["store"] = store
        if "assets" in top and (assets := self.assets(top["assets"])) is not None:
            kw["assets"] = assets
        if "machines" in top:
            kw["machines"] = self.machines(top["machines"], kw.get("names", NamesConfig()))
        dhcp = kw.get("dhcp", DhcpConfig())
        if dhcp.mode is DhcpMode.AUTHORITATIVE and dhcp.subnet is not None:
            for i, machine in enumerate(kw.get("machines", ())):
                if isinstance(machine.ip, ipaddress.IPv4Address) and machine.ip not in dhcp.subnet \
                        and not machine.ignore:
                    self.errors.append(ConfigError(self.file.name, machine.line, f"machines[{i}].ip",
                                                   f"{machine.name}'s {machine.ip} is outside dhcp.subnet {dhcp.subnet}"))
        return Config(**kw)

    def dns(self, node: Node) -> DnsConfig | None:
        nodes = self.fields(node, "dns", {"enabled", "address", "port", "ttl", "reverse", "records", "forward",
                                          "max_tcp_connections", "tcp_idle_timeout"})
        if nodes is None:
            return None
        kw: dict[str, Any] = {"enabled": True}
        for key, read in (("enabled", self.boolean), ("address", self.ip),
                          ("port", lambda n, w: self.integer(n, w, 0, 65535)),
                          ("ttl", lambda n, w: self.integer(n, w, 0, 2**31 - 1)),
                          ("max_tcp_connections", lambda n, w: self.integer(n, w, 1, 65535)),
                          ("tcp_idle_timeout", lambda n, w: self.integer(n, w, 1, 3600))):
            if (value := self.optional(nodes, key, "dns", read)) is not None:
                kw[key] = value
        if "reverse" in nodes:
            networks = []
            for i, item in enumerate(self.sequence(nodes["reverse"], "dns.reverse") or []):
                text = self.string(item, f"dns.reverse[{i}]")
                try:
                    network = ipaddress.ip_network(text or "", strict=True)
                except ValueError as exc:
                    self.error(item, f"dns.reverse[{i}]", f"{text!r} is not a network ({exc})")
                    continue
                if network.prefixlen % (8 if network.version == 4 else 4):
                    self.error(item, f"dns.reverse[{i}]", "must end on an octet (IPv4) or nibble (IPv6) boundary")
                    continue
                networks.append(network)
            kw["reverse"] = tuple(networks)
        if "records" in nodes:
            records = []
            for i, item in enumerate(self.sequence(nodes["records"], "dns.records") or []):
                where = f"dns.records[{i}]"
                fields = self.fields(item, where, {"name", "type", "value"})
                if fields is None:
                    continue
                values = {k: self.optional(fields, k, where, self.string) for k in ("name", "type", "value")}
                missing = [k for k, v in values.items() if v is None and k not in fields]
                for key in missing:
                    self.error(item, f"{where}.{key}", "required")
                if None in values.values():
                    continue
                kind = values["type"].upper()
                if kind not in ("A", "AAAA", "CNAME", "TXT", "SRV", "MX", "PTR"):
                    self.error(fields["type"], f"{where}.type", f"{kind!r} is not one of A, AAAA, CNAME, TXT, SRV, MX, PTR")
                    continue
                if (problem := check_extra_record(kind, values["value"])) is not None:
                    self.error(fields["value"], f"{where}.value", f"not a valid {kind} value: {problem}")
                    continue
                records.append(DnsRecordConfig(name=values["name"], rtype=kind, value=values["value"]))
            kw["records"] = tuple(records)
        if "forward" in nodes:
            upstreams = []
            for i, item in enumerate(self.sequence(nodes["forward"], "dns.forward") or []):
                text = self.string(item, f"dns.forward[{i}]") or ""
                if text.startswith("["):  # [IPv6]:port, as in a URL
                    host, bracket, rest = text[1:].partition("]")
                    port = rest[1:] if rest.startswith(":") else ("53" if bracket and not rest else "")
                else:
                    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "53")
                try:
                    number = int(port)
                    if not 1 <= number <= 65535:
                        raise ValueError(port)
                    upstreams.append((str(ipaddress.ip_address(host)), number))
                except ValueError:
                    self.error(item, f"dns.forward[{i}]",
                               f"{text!r} is not an IP address with an optional port (1.2.3.4:53, [fd00::1]:53)")
            kw["forward"] = tuple(upstreams)
        return DnsConfig(**kw)

    def api(self, node: Node) -> ApiConfig | None:
        nodes = self.fields(node, "api", {"enabled", "address", "port", "cert_file", "key_file", "ca_file",
                                          "max_message_bytes"})
        if nodes is None:
            return None
        kw: dict[str, Any] = {"enabled": True}
        for key, read in (("enabled", self.boolean), ("address", self.ip),
                          ("port", lambda n, w: self.integer(n, w, 0, 65535)),
                          ("max_message_bytes", lambda n, w: self.integer(n, w, 1024, 1 << 30)),
                          ("cert_file", self.path), ("key_file", self.path), ("ca_file", self.path)):
            if (value := self.optional(nodes, key, "api", read)) is not None:
                kw[key] = value
        return ApiConfig(**kw)

    def store(self, node: Node) -> StoreConfig | None:
        """`store: {backend: dir | etcd, endpoints: [...], prefix: /bootd, tls: {ca, cert, key},
        on_unreachable: wait | refuse, timeout: 5, replica: NAME}`."""
        nodes = self.fields(node, "store", {"backend", "endpoints", "prefix", "tls", "on_unreachable", "timeout",
                                            "replica"})
        if nodes is None:
            return None
        kw: dict[str, Any] = {}
        for key, read in (("backend", lambda n, w: self.choice(n, w, StoreBackend)),
                          ("on_unreachable", lambda n, w: self.choice(n, w, OnUnreachable)),
                          ("timeout", lambda n, w: self.integer(n, w, 1, 300))):
            if (value := self.optional(nodes, key, "store", read)) is not None:
                kw[key] = value
        if "prefix" in nodes and (prefix := self.string(nodes["prefix"], "store.prefix")) is not None:
            if not re.fullmatch(r"(/[A-Za-z0-9._-]+)+/?", prefix):
                self.error(nodes["prefix"], "store.prefix", f"{prefix!r}: expected a key path such as /bootd "
                                                            "(slash-separated names of letters, digits, '.', '_', '-')")
            else:
                kw["prefix"] = prefix.rstrip("/")
        if "tls" in nodes and (tls := self.fields(nodes["tls"], "store.tls", {"ca", "cert", "key"})) is not None:
            paths = {k: self.optional(tls, k, "store.tls", self.path) for k in ("ca", "cert", "key")}
            if "ca" not in tls:
                self.error(nodes["tls"], "store.tls.ca", "required: the CA that signed etcd's certificates")
            elif ("cert" in tls) != ("key" in tls):
                self.error(nodes["tls"], "store.tls", "cert and key go together (a client certificate and its key)")
            elif paths["ca"] is not None:
                kw["tls"] = StoreTls(ca=paths["ca"], cert=paths["cert"], key=paths["key"])
        endpoints = []
        for i, item in enumerate(self.sequence(nodes["endpoints"], "store.endpoints") or []
                                 if "endpoints" in nodes else []):
            text = self.string(item, f"store.endpoints[{i}]")
            match = re.fullmatch(r"(?:(https?)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})/?", text or "")
            if text is None:
                continue
            if match is None or not 0 < int(match[3]) < 65536:
                self.error(item, f"store.endpoints[{i}]", f"{text!r}: expected host:port, http://host:port or "
                                                          "https://host:port")
            elif match[1] == "https" and "tls" not in nodes:
                self.error(item, f"store.endpoints[{i}]", f"{text!r}: https needs store.tls (at least its ca)")
            else:
                endpoints.append(text)
        kw["endpoints"] = tuple(endpoints)
        if "replica" in nodes and (replica := self.string(nodes["replica"], "store.replica")) is not None:
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,63}", replica):  # a key's last part: no '/' (appliance/fleet)
                self.error(nodes["replica"], "store.replica", f"{replica!r}: expected a name of 1-63 letters, digits, "
                                                              "'.', '_', '-' (each replica its own)")
            else:
                kw["replica"] = replica
        backend = kw.get("backend", StoreBackend.DIR)
        if backend is StoreBackend.ETCD and "endpoints" not in nodes:
            self.error(node, "store.endpoints", "required with backend etcd: the etcd members' client URLs")
        if backend is StoreBackend.DIR:
            for key in ("endpoints", "tls", "prefix", "on_unreachable", "replica"):
                if key in nodes:
                    self.error(nodes[key], f"store.{key}", "only with backend: etcd (the data dir is http.data_dir)")
        return StoreConfig(**kw)

    def assets(self, node: Node) -> AssetsConfig | None:
        """`assets: {track: [{os, channel, arch, mirror, keyring, install}], check: daily}`."""
        nodes = self.fields(node, "assets", {"track", "check"})
        if nodes is None:
            return None
        kw: dict[str, Any] = {}
        if "check" in nodes:
            text = self.string(nodes["check"], "assets.check")
            named = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
            match = re.fullmatch(r"(\d+)([smhd]?)", text or "")
            if text in named:
                kw["check_seconds"] = named[text]
            elif match and 1 <= int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]] <= 2**31:
                kw["check_seconds"] = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
            elif text is not None:
                self.error(nodes["check"], "assets.check", f"{text!r} is not hourly, daily, weekly or a duration "
                                                           "(e.g. 6h, 1d)")
        tracked: list[TrackedChannel] = []
        seen: dict[tuple[str, str, str], int] = {}
        for i, item in enumerate(self.sequence(nodes["track"], "assets.track") or [] if "track" in nodes else []):
            where = f"assets.track[{i}]"
            fields = self.fields(item, where, {"os", "channel", "arch", "mirror", "keyring", "install"})
            if fields is None:
                continue
            os_name = self.optional(fields, "os", where, self.string)
            if os_name is None:
                if "os" not in fields:
                    self.error(item, f"{where}.os", f"required: one of {', '.join(OsName)}")
                continue
            if os_name not in set(OsName):
                self.error(fields["os"], f"{where}.os", f"{os_name!r} is not one of: {', '.join(OsName)}")
                continue
            channel = self.optional(fields, "channel", where, self.string) or "stable"
            if channel not in CHANNELS[OsName(os_name)]:
                self.error(fields.get("channel", item), f"{where}.channel",
                           f"{channel!r} is not a {os_name} channel ({', '.join(CHANNELS[OsName(os_name)])})")
                continue
            arch = self.optional(fields, "arch", where, self.string) or "amd64"
            if arch not in ARCHES:
                self.error(fields.get("arch", item), f"{where}.arch", f"{arch!r} is not one of: {', '.join(ARCHES)}")
                continue
            mirror = self.optional(fields, "mirror", where, self.string)
            if mirror is not None:
                try:
                    check_mirror(mirror)
                except ReleaseError as exc:
                    self.error(fields["mirror"], f"{where}.mirror", str(exc))
                    continue
            key = (os_name, arch, channel)
            line = item.start_mark.line + 1
            if key in seen:
                self.error(item, where, f"{os_name} {arch} {channel} is already tracked on line {seen[key]}")
                continue
            seen[key] = line
            tracked.append(TrackedChannel(os=os_name, channel=channel, arch=arch, mirror=mirror,
                                          keyring=self.optional(fields, "keyring", where, self.path),
                                          install=bool(self.optional(fields, "install", where, self.boolean))))
        kw["track"] = tuple(tracked)
        return AssetsConfig(**kw)

    def tftp(self, node: Node) -> TftpConfig | None:
        nodes = self.fields(node, "tftp", {"enabled", "address", "port", "root", "max_transfers", "max_per_client",
                                           "timeout", "retries", "max_blksize", "max_windowsize"})
        if nodes is None:
            return None
        kw: dict[str, Any] = {"enabled": True}
        ranges = {"port": (0, 65535), "max_transfers": (1, 10000), "max_per_client": (1, 1000), "timeout": (1, 255),
                  "retries": (1, 50), "max_blksize": (512, 65464), "max_windowsize": (1, 65535)}
        for key, (low, high) in ranges.items():
            read = lambda n, w, low=low, high=high: self.integer(n, w, low, high)  # noqa: E731
            if (value := self.optional(nodes, key, "tftp", read)) is not None:
                kw[key] = value
        for key, read in (("enabled", self.boolean), ("address", self.ip), ("root", self.path)):
            if (value := self.optional(nodes, key, "tftp", read)) is not None:
                kw[key] = value
        return TftpConfig(**kw)

    def dhcp(self, node: Node) -> DhcpConfig | None:
        nodes = self.fields(node, "dhcp", {
            "mode", "only_known", "port", "pxe_port", "uefi", "uefi_arch", "ipxe_detection", "firmware_dir", "subnet", "range",
            "router", "dns_servers", "lease", "options", "router_advertisement", "relay_pools", "secure_boot"})
        if nodes is None:
            return None
        kw: dict[str, Any] = {}
        port = lambda n, w: self.integer(n, w, 1, 65535)  # noqa: E731
        for key, read in (("mode", lambda n, w: self.choice(n, w, DhcpMode)), ("only_known", self.boolean),
                          ("port", port), ("pxe_port", port), ("uefi", lambda n, w: self.choice(n, w, UefiStrategy)),
                          ("ipxe_detection", lambda n, w: self.choice(n, w, IpxeDetection)),
                          ("firmware_dir", self.path), ("router", self.ipv4),
                          ("router_advertisement", self.boolean), ("lease", self.duration),
                          ("secure_boot", self.boolean)):
            if (value := self.optional(nodes, key, "dhcp", read)) is not None:
                kw["lease_seconds" if key == "lease" else key] = value
        if "uefi_arch" in nodes:
            arches = {}
            for key_node, value_node in self._pairs(nodes["uefi_arch"], "dhcp.uefi_arch"):
                arch = self.integer(key_node, "dhcp.uefi_arch", 0, 65535)
                strategy = self.choice(value_node, f"dhcp.uefi_arch.{key_node.value}", UefiStrategy)
                if arch is not None and strategy is not None:
                    arches[arch] = strategy
            kw["uefi_arch"] = MappingProxyType(arches)
        if "subnet" in nodes and (text := self.string(nodes["subnet"], "dhcp.subnet")) is not None:
            try:
                kw["subnet"] = ipaddress.IPv4Network(text, strict=True)
            except ValueError as exc:
                self.error(nodes["subnet"], "dhcp.subnet", f"{text!r} is not an IPv4 network ({exc})")
        if "range" in nodes:
            items = self.sequence(nodes["range"], "dhcp.range") or []
            ends = [self.ipv4(n, f"dhcp.range[{i}]") for i, n in enumerate(items)]
            if len(items) != 2:
                self.error(nodes["range"], "dhcp.range", "expected [first address, last address]")
            elif None not in ends:
                if ends[0] > ends[1]:
                    self.error(nodes["range"], "dhcp.range", f"{ends[0]} comes after {ends[1]}")
                else:
                    kw["range"] = (ends[0], ends[1])
        if "dns_servers" in nodes:
            items = self.sequence(nodes["dns_servers"], "dhcp.dns_servers") or []
            servers = [self.ipv4(n, f"dhcp.dns_servers[{i}]") for i, n in enumerate(items)]
            kw["dns_servers"] = tuple(s for s in servers if s is not None)
        if "options" in nodes:
            options = {}
            for key_node, value_node in self._pairs(nodes["options"], "dhcp.options"):
                code = self.integer(key_node, "dhcp.options", 1, 254)
                if code is None:
                    continue
                where = f"dhcp.options.{code}"
                if code in _RESERVED_OPTIONS:
                    self.error(key_node, where, "bootd sets this option itself; use the config key for it")
                elif (value := self.option_value(value_node, where, code)) is not None:
                    options[code] = value
            kw["options"] = MappingProxyType(options)
        if "relay_pools" in nodes:
            kw["relay_pools"] = self.relay_pools(nodes["relay_pools"], kw.get("subnet"))
        config = DhcpConfig(**kw)
        if config.mode is DhcpMode.AUTHORITATIVE:
            for key, value in (("subnet", config.subnet), ("range", config.range)):
                if value is None:
                    self.error(node, f"dhcp.{key}", "required in authoritative mode")
            if config.subnet and config.range and not all(end in config.subnet for end in config.range):
                self.error(nodes["range"], "dhcp.range", f"not inside dhcp.subnet {config.subnet}")
            if config.subnet and config.router and config.router not in config.subnet:
                self.error(nodes["router"], "dhcp.router", f"not inside dhcp.subnet {config.subnet}")
        return config

    def relay_pools(self, node: Node, local: ipaddress.IPv4Network | None) -> tuple[RelayPool, ...]:
        pools: list[RelayPool] = []
        for i, item in enumerate(self.sequence(node, "dhcp.relay_pools") or []):
            where = f"dhcp.relay_pools[{i}]"
            nodes = self.fields(item, where, {"subnet", "range", "router", "dns_servers"})
            if nodes is None:
                continue
            subnet = ends = None
            if "subnet" not in nodes or "range" not in nodes:
                self.error(item, f"{where}.{'subnet' if 'subnet' not in nodes else 'range'}", "required")
                continue
            if (text := self.string(nodes["subnet"], f"{where}.subnet")) is not None:
                try:
                    subnet = ipaddress.IPv4Network(text, strict=True)
                except ValueError as exc:
                    self.error(nodes["subnet"], f"{where}.subnet", f"{text!r} is not an IPv4 network ({exc})")
            items = self.sequence(nodes["range"], f"{where}.range") or []
            ends = [self.ipv4(n, f"{where}.range[{j}]") for j, n in enumerate(items)]
            router = self.optional(nodes, "router", where, self.ipv4)
            servers = None
            if "dns_servers" in nodes:
                listed = self.sequence(nodes["dns_servers"], f"{where}.dns_servers") or []
                servers = tuple(a for j, n in enumerate(listed) if (a := self.ipv4(n, f"{where}.dns_servers[{j}]")))
            if subnet is None or len(ends) != 2 or None in ends:
                if len(items) != 2:
                    self.error(nodes["range"], f"{where}.range", "expected [first address, last address]")
                continue
            if not all(end in subnet for end in ends) or ends[0] > ends[1]:
                self.error(nodes["range"], f"{where}.range", f"not a range inside {subnet}")
            elif router is not None and router not in subnet:
                self.error(nodes["router"], f"{where}.router", f"not inside {subnet}")
            elif (overlap := next((p.subnet for p in pools if p.subnet.overlaps(subnet)), None)
                  or (local if local is not None and local.overlaps(subnet) else None)) is not None:
                self.error(nodes["subnet"], f"{where}.subnet", f"overlaps {overlap}: a relay's address must "
                                                               "name one pool")
            else:
                pools.append(RelayPool(subnet=subnet, range=(ends[0], ends[1]), router=router, dns_servers=servers))
        return tuple(pools)

    def _pairs(self, node: Node, where: str) -> list[tuple[Node, Node]]:
        if not isinstance(node, MappingNode):
            self.error(node, where, "expected a mapping")
            return []
        seen: dict[str, int] = {}
        pairs = []
        for key_node, value_node in node.value:
            if key_node.value in seen:
                self.error(key_node, f"{where}.{key_node.value}", f"duplicate key (first given on line {seen[key_node.value]})")
                continue
            seen[key_node.value] = key_node.start_mark.line + 1
            pairs.append((key_node, value_node))
        return pairs

    def ipv4(self, node: Node, where: str) -> ipaddress.IPv4Address | None:
        address = self.ip(node, where)
        if address is not None and address.version != 4:
            self.error(node, where, f"{address} is not an IPv4 address")
            return None
        return address  # type: ignore[return-value]

    def duration(self, node: Node, where: str) -> int | None:
        text = self.string(node, where)
        match = re.fullmatch(r"(\d+)([smhd]?)", text or "")
        if match is None:
            self.error(node, where, f"{text!r} is not a duration (e.g. 3600, 30m, 12h, 1d)")
            return None
        seconds = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        if not 60 <= seconds <= 2**31:
            self.error(node, where, f"{text!r} is out of range (1 minute to 68 years)")
            return None
        return seconds

    def option_value(self, node: Node, where: str, code: int) -> bytes | None:
        """A DHCP option's value: an integer (options of known width), a list of IPv4 addresses, routes for
        option 121 (`net/len via gw`), `hex:0a0b...` for raw bytes, or text."""
        if code == 121:
            return self.classless_routes(node, where)
        if isinstance(node, SequenceNode):
            addresses = [self.ipv4(n, f"{where}[{i}]") for i, n in enumerate(node.value)]
            return None if None in addresses or not addresses else b"".join(a.packed for a in addresses)
        text = self.string(node, where)
        if text is None:
            return None
        if code in _INT_OPTIONS and node.style is None:
            width, signed = _INT_OPTIONS[code]
            try:
                return int(text).to_bytes(width, "big", signed=signed)
            except (ValueError, OverflowError):
                self.error(node, where, f"expected a {width * 8}-bit integer, got {text!r}")
                return None
        if text.startswith("hex:"):
            try:
                return bytes.fromhex(text[4:].replace(":", ""))
            except ValueError:
                self.error(node, where, f"{text!r} is not hex")
                return None
        try:
            return ipaddress.IPv4Address(text).packed
        except ValueError:
            return text.encode()

    def classless_routes(self, node: Node, where: str) -> bytes | None:
        """RFC 3442: each route is `network/prefix via gateway`."""
        items = self.sequence(node, where)
        if not items:
            self.error(node, where, "expected a list of 'network/prefix via gateway'")
            return None
        out = bytearray()
        for i, item in enumerate(items):
            text = self.string(item, f"{where}[{i}]") or ""
            try:
                network_text, gateway_text = (part.strip() for part in text.split(" via "))
                network = ipaddress.IPv4Network(network_text, strict=True)
                gateway = ipaddress.IPv4Address(gateway_text)
            except ValueError:
                self.error(item, f"{where}[{i}]", f"{text!r} is not 'network/prefix via gateway'")
                return None
            significant = (network.prefixlen + 7) // 8
            out += bytes((network.prefixlen,)) + network.network_address.packed[:significant] + gateway.packed
        return bytes(out)

    def bmc(self, node: Node, where: str) -> BmcConfig | None:
        """`bmc: {protocol, address, port, username, password_file | password_env, system, scheme, ca_file}`."""
        nodes = self.fields(node, where, {"protocol", "address", "port", "username", "password", "password_file",
                                          "password_env", "system", "scheme", "ca_file"})
        if nodes is None:
            return None
        if "password" in nodes:  # said before anything else: the file holds a secret in the clear
            self.error(nodes["password"], f"{where}.password", "a password is never written in bootd.yaml: put it "
                                                               "in a file (password_file, mode 0600) or in the "
                                                               "environment (password_env)")
        for required in ("protocol", "address", "username"):
            if required not in nodes:
                self.error(node, f"{where}.{required}", "required")
        protocol = self.optional(nodes, "protocol", where, lambda n, w: self.choice(n, w, BmcProtocol))
        kw: dict[str, Any] = {"protocol": protocol, "address": self.optional(nodes, "address", where, self.string),
                              "username": self.optional(nodes, "username", where, self.string),
                              "system": self.optional(nodes, "system", where, self.string),
                              "ca_file": self.optional(nodes, "ca_file", where, self.path)}
        port = self.optional(nodes, "port", where, lambda n, w: self.integer(n, w, 1, 65535))
        kw["port"] = port if port is not None else (443 if protocol is BmcProtocol.REDFISH else 623)
        if (scheme := self.optional(nodes, "scheme", where, self.string)) is not None:
            if scheme not in ("https", "http"):
                self.error(nodes["scheme"], f"{where}.scheme", f"{scheme!r} is not https or http")
            kw["scheme"] = scheme
        sources = [key for key in ("password_file", "password_env") if key in nodes]
        if len(sources) != 1 and "password" not in nodes:
            self.error(node, f"{where}.password_file", "give password_file (a file only its owner can read) or "
                                                       "password_env (an environment variable's name), one of them")
        if (path := self.optional(nodes, "password_file", where, self.path)) is not None:
            try:
                mode = path.stat().st_mode
            except OSError as exc:
                self.error(nodes["password_file"], f"{where}.password_file", f"{path}: {exc.strerror}")
            else:
                if mode & 0o004:
                    self.error(nodes["password_file"], f"{where}.password_file",
                               f"{path} is readable by every user (mode {mode & 0o777:04o}): chmod 600 it")
                else:
                    kw["password_file"] = path
        if (env := self.optional(nodes, "password_env", where, self.string)) is not None:
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env) is None:
                self.error(nodes["password_env"], f"{where}.password_env", f"{env!r} is not an environment "
                                                                           "variable's name")
            else:
                kw["password_env"] = env
        if None in (kw["protocol"], kw["address"], kw["username"]) or not ({"password_file", "password_env"} & kw.keys()):
            return None
        return BmcConfig(**kw)

    def listen(self, node: Node) -> ListenConfig | None:
        nodes = self.fields(node, "listen", {"interface", "interfaces", "address"})
        if nodes is None:
            return None
        interfaces: tuple[str, ...] = ()
        if "interface" in nodes and "interfaces" in nodes:
            self.error(nodes["interfaces"], "listen.interfaces", "give either interface or interfaces, not both")
        elif (one := self.optional(nodes, "interface", "listen", self.string)) is not None:
            interfaces = (one,)
        elif "interfaces" in nodes:
            items = self.sequence(nodes["interfaces"], "listen.interfaces") or []
            names = [self.string(n, f"listen.interfaces[{i}]") for i, n in enumerate(items)]
            interfaces = tuple(n for n in names if n is not None)
        return ListenConfig(interfaces=interfaces, address=self.optional(nodes, "address", "listen", self.ip))

    def names(self, node: Node) -> NamesConfig | None:
        nodes = self.fields(node, "names", {"provisioner", "controllers", "workers"})
        if nodes is None:
            return None
        return NamesConfig(**{key: self.optional(nodes, key, "names", self.label) for key in nodes})

    def http(self, node: Node) -> HttpConfig | None:
        nodes = self.fields(node, "http", {"enabled", "address", "port", "data_dir", "assets_dir"})
        if nodes is None:
            return None
        kw: dict[str, Any] = {}
        if (enabled := self.optional(nodes, "enabled", "http", self.boolean)) is not None:
            kw["enabled"] = enabled
        kw["address"] = self.optional(nodes, "address", "http", self.ip)
        if (port := self.optional(nodes, "port", "http", lambda n, w: self.integer(n, w, 0, 65535))) is not None:
            kw["port"] = port
        if (data_dir := self.optional(nodes, "data_dir", "http", self.path)) is not None:
            kw["data_dir"] = data_dir
        kw["assets_dir"] = self.optional(nodes, "assets_dir", "http", self.path)
        return HttpConfig(**kw)

    def metrics(self, node: Node, http: HttpConfig) -> MetricsConfig | None:
        nodes = self.fields(node, "metrics", {"address", "port"})
        if nodes is None:
            return None
        address = self.optional(nodes, "address", "metrics", self.ip)
        port = self.optional(nodes, "port", "metrics", lambda n, w: self.integer(n, w, 0, 65535))
        if "port" not in nodes:
            self.error(node, "metrics.port", "required: the port /metrics is served on apart from the HTTP port "
                                             "(without a metrics section it is served on the HTTP port)")
            return None
        if port is None:
            return None
        if (http.enabled and port != 0 and port == http.port
                and (address is None or http.address is None or address == http.address)):
            self.error(nodes["port"], "metrics.port", f"{port} is http.port: give another port (or leave the "
                                                      "metrics section out to serve /metrics on the HTTP port)")
            return None
        return MetricsConfig(address=address, port=port)

    def machines(self, node: Node, names: NamesConfig) -> tuple[Machine, ...]:
        items = self.sequence(node, "machines") or []
        machines: list[Machine] = []
        seen: dict[tuple[str, str], int] = {}
        reserved = {n: key for key in ("provisioner", "controllers", "workers") if (n := getattr(names, key))}
        for i, item in enumerate(items):
            where = f"machines[{i}]"
            nodes = self.fields(item, where, {"name", "mac", "ip", "role", "profile", "metadata", "ignore", "bmc",
                                              "boot_file", "secure_boot"})
            if nodes is None:
                continue
            for required in ("name", "mac"):
                if required not in nodes:
                    self.error(item, f"{where}.{required}", "required")
            kw: dict[str, Any] = {
                "name": self.optional(nodes, "name", where, self.label),
                "mac": self.optional(nodes, "mac", where, self.mac),
                "ip": self.optional(nodes, "ip", where, self.ip),
                "role": self.optional(nodes, "role", where, lambda n, w: self.choice(n, w, Role)),
                "profile": self.optional(nodes, "profile", where, self.string),
                "ignore": self.optional(nodes, "ignore", where, self.boolean),
                "boot_file": self.optional(nodes, "boot_file", where, self.string),
                "secure_boot": self.optional(nodes, "secure_boot", where, self.boolean),
                "line": item.start_mark.line + 1,
            }
            if "metadata" in nodes and (metadata := self.json_mapping(nodes["metadata"], f"{where}.metadata")):
                kw["metadata"] = metadata
            if "bmc" in nodes:
                kw["bmc"] = self.bmc(nodes["bmc"], f"{where}.bmc")
            # Duplicates: each name, MAC and IP may be used by one machine only.
            for key in ("name", "mac", "ip"):
                value = kw[key]
                if value is None:
                    continue
                if (key, str(value)) in seen:
                    self.error(nodes[key], f"{where}.{key}",
                               f"{str(value)!r} is already used by the machine on line {seen[key, str(value)]}")
                else:
                    seen[key, str(value)] = kw["line"]
            if kw["name"] in reserved:
                self.error(nodes["name"], f"{where}.name",
                           f"{kw['name']!r} is already the names.{reserved[kw['name']]} name")
            if kw["name"] is not None and kw["mac"] is not None:
                machines.append(Machine(**{k: v for k, v in kw.items() if v is not None}))
        return tuple(machines)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _show(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return repr(node.value)
    return "a list" if isinstance(node, SequenceNode) else "a mapping"
