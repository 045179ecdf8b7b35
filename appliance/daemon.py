"""The daemon: builds the services the config enables and runs them on one event loop.

Lifecycle, in named phases: `start` (config already loaded and checked; bind every socket), `become_user`
(started as root with `user:` set: drop to that user, keeping only the capabilities to bind), then "ready"
(logged, and READY=1 to systemd), `serve` (wait for SIGTERM/SIGINT; SIGHUP reloads), `stop` (stop
accepting, let requests in flight finish, exit 0).

Reload (SIGHUP) re-reads bootd.yaml and the data dir. A config with errors is logged, error by error, and
the running one is kept. A new TFTP or DNS address or port is bound at reload (the old socket is kept if
the new one cannot be bound); other listening changes are logged and need a restart. systemd is told
RELOADING=1 before and READY=1 after, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from appliance.config import Config, ConfigInvalid, DhcpMode, IPAddress, load_config
from appliance.dhcp.leases import LeaseTable
from appliance.dhcp.policy import DhcpPolicies, available_firmware, build_policies
from appliance.dhcp.server import DhcpServer
from appliance.dns.server import DnsServer
from appliance.dns.zone import ExtraRecord, Zone, build_zone
from appliance.tftp.files import TftpFiles
from appliance.grubnet import NetworkGrub, tftp_event_kind
from appliance.secureboot import RefusedBinaryWatch
from appliance.tftp.server import TftpServer
from appliance.events import Event, EventBus, PeerPublisher, ProgressTracker, track_and_log
from appliance.fleet.state import local_only, replica_name, track_fleet, uses_fleet
from appliance.http import HttpContext, make_app
from appliance.net import NeighbourTable, RouterAdvertiser, interface_addresses
from appliance.http.boot import SCRIPT_LABELS
from appliance.http.limits import KEEPALIVE_SECONDS, CappedTCPSite, connection_cap, raise_open_file_limit
from appliance.metrics import Metrics, ServiceStats, metrics_app
from appliance.store import DataDir, Group, MatchScope, machine_groups, match_scope
from appliance.systemd import Notifier, PrivilegeError, describe_user, drop_privileges, limit_bounding_set, \
    lookup_user

# imported where used: the etcd modules bring grpc (0.4 s, 10 MB), only with store.backend etcd; the asset
# tracker's fetchers (~30 ms) only with assets.track
if TYPE_CHECKING:
    from appliance.assets.track import AssetTracker
    from appliance.dhcp.etcd_leases import EtcdLeaseStore
    from appliance.etcd import EtcdClient
    from appliance.fleet.sync import Fleet
    from appliance.store.etcd_store import EtcdMirror

logger = logging.getLogger(__name__)

# How long SIGTERM waits for requests in flight (a kernel download on a slow link) before closing them.
DRAIN_SECONDS = 10.0
METRICS_CONNECTIONS = 64  # connections kept open on metrics.port's listener


class StartupError(Exception):
    """A problem that stops `bootd run` before it serves (exit code 2)."""


class _StoppedWhileWaiting(Exception):
    """SIGTERM or SIGINT while start-up waited for etcd (store.on_unreachable: wait): exit 0."""


def startup_problems(config: Config) -> list[str]:
    """What stops the daemon from starting although the file itself is valid."""
    problems = []
    if config.http.enabled and not config.http.data_dir.is_dir():
        problems.append(f"{config.source.name}: http.data_dir: {config.http.data_dir} is not a directory")
    if config.api.enabled:
        if not config.http.data_dir.is_dir() and config.store.backend.value == "dir":
            problems.append(f"{config.source.name}: api: writes go to http.data_dir, and {config.http.data_dir} "
                            "is not a directory")
        for key in ("cert_file", "key_file", "ca_file"):
            path = getattr(config.api, key)
            if not path.is_file():
                problems.append(f"{config.source.name}: api.{key}: {path} does not exist (bootd certs init makes "
                                "a CA, a server and a client certificate)")
    if config.store.tls is not None:
        for key in ("ca", "cert", "key"):
            path = getattr(config.store.tls, key)
            if path is not None and not path.is_file():
                problems.append(f"{config.source.name}: store.tls.{key}: {path} does not exist")
    return problems + runtime_refusals(config)


def runtime_refusals(config: Config) -> list[str]:
    """The tables the daemon builds from the config (DNS zone, DHCP decisions), built once here and thrown
    away: `bootd check`, the start and every reload run this, so whatever the check accepts, the runtime
    accepts. Each is a pure function of the config; a refusal is a problem in the config the parser let by."""
    problems = []
    if config.dns.enabled:
        try:
            own = [config.listen.address or config.dns.address or ipaddress.ip_address("127.0.0.1")]
            build_zone(config, own, extra=extra_records(config), reverse=config.dns.reverse, ttl=config.dns.ttl)
        except Exception as exc:  # noqa: BLE001 - the zone's builder refused something: say it, never crash
            problems.append(f"{config.source.name}: dns: the zone cannot be built: {exc}")
    if config.dhcp.mode is not DhcpMode.OFF:
        try:
            build_policies(config, frozenset(), http_port=config.http.port)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{config.source.name}: dhcp: the DHCP tables cannot be built: {exc}")
    return problems


def extra_records(config: Config) -> list[ExtraRecord]:
    return [ExtraRecord(name=r.name, rtype=r.rtype, value=r.value) for r in config.dns.records]


def firmware_roots(config: Config) -> list[Path]:
    """Where boot files come from: the firmware directory, then the TFTP root."""
    return [config.firmware_dir] + ([config.tftp.root] if config.tftp.root else [])


def build_store(config: Config, mirror: EtcdMirror | None = None) -> DataDir:
    """The profiles, groups and templates the HTTP side reads: the data dir, or with `store.backend: etcd`
    (and the daemon's mirror of it) an EtcdStore with the same interface."""
    if mirror is not None:
        from appliance.store.etcd_store import EtcdStore
        return EtcdStore(mirror, machine_groups(config))  # type: ignore[return-value] - DataDir's interface
    return DataDir(config.http.data_dir, machine_groups(config))


def _etcd_of(config: Config) -> tuple[EtcdClient | None, EtcdMirror | None]:
    """store.backend etcd: the daemon's client and its mirror of the data (nothing is read yet)."""
    if config.store.backend.value != "etcd":
        return None, None
    from appliance.etcd import EtcdClient, EtcdTls
    from appliance.store.etcd_store import EtcdMirror, Layout

    store = config.store
    tls = EtcdTls(store.tls.ca, store.tls.cert, store.tls.key) if store.tls is not None else None
    try:
        client = EtcdClient(store.endpoints, tls=tls, timeout=store.timeout)
    except OSError as exc:
        raise StartupError(f"{config.source.name}: store.tls: cannot read {exc.filename}: {exc.strerror}") from None
    return client, EtcdMirror(client, Layout(store.prefix))


def describe_serving(*, dhcp_mode: str | None, interfaces: tuple[str, ...], tftp_port: int | None,
                     dns_port: int | None, domain: str | None, http_port: int | None, api_port: int | None,
                     machines: int) -> str:
    """One line for systemd's STATUS= (`systemctl status bootd`): what is served where."""
    parts = []
    if dhcp_mode is not None:
        parts.append(f"{dhcp_mode}-DHCP on {', '.join(interfaces) or 'every interface'}")
    if tftp_port is not None:
        parts.append(f"TFTP :{tftp_port}")
    if dns_port is not None:
        parts.append(f"DNS :{dns_port} ({domain})")
    if http_port is not None:
        parts.append(f"HTTP :{http_port}")
    if api_port is not None:
        parts.append(f"API :{api_port}")
    parts.append(f"{machines} machines")
    return ", ".join(parts)

T = TypeVar("T")


def _as_is(sink: Callable[[Event], None]) -> Callable[[Event], None]:
    return sink


@dataclass(frozen=True, slots=True)
class _DhcpBuild:
    policies: DhcpPolicies
    groups: list[Group]
    scope: MatchScope


@dataclass(slots=True)
class _ReloadParts:
    store: DataDir
    dhcp: _DhcpBuild | None
    tftp_files: TftpFiles | None
    zone: Zone | None


@dataclass(slots=True)
class _ReloadSockets:
    tftp: TftpServer | None = None
    dns: DnsServer | None = None


class _BindFailed(Exception):
    pass


class _BuildFailed(Exception):
    def __init__(self, part: str, cause: Exception) -> None:
        super().__init__(f"{part}: {cause}")
        self.part, self.cause = part, cause


def _building(part: str, build: Callable[[], T]) -> T:
    """`build()`, or _BuildFailed naming `part` (a reload says which part refused the new config)."""
    try:
        return build()
    except Exception as exc:
        raise _BuildFailed(part, exc) from exc


class Daemon:
    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.bus = EventBus()
        self.tracker = ProgressTracker()
        # With the etcd store, other replicas' steps come through the bus too (appliance/fleet): they are
        # tracked and shown, but this replica's log, metrics and Secure Boot watch take its own steps only.
        local = local_only if uses_fleet(config) else _as_is
        self.bus.add_sink(track_fleet(self.tracker) if uses_fleet(config) else track_and_log(self.tracker))
        self.bus.add_sink(local(RefusedBinaryWatch(self.bus).see))  # Secure Boot refusing unsigned iPXE, in words
        self.fleet: Fleet | None = None  # started with the etcd client (_start_fleet)
        self.neighbours = NeighbourTable()
        self.tracker.set_known((m.mac, m.name) for m in config.machines)
        self.publisher = PeerPublisher(self.bus, self.tracker, self.neighbours.lookup)
        self.etcd, self.mirror = _etcd_of(config)  # store.backend etcd: the one client every part shares
        self.http_context = HttpContext(config=config, store=build_store(config, self.mirror), bus=self.bus,
                                        tracker=self.tracker, publisher=self.publisher)
        self.http_context.stats = self.stats
        self.metrics = Metrics(services=self.service_stats, tracker=self.tracker)
        self.bus.add_sink(local(self.metrics.stage_timer))  # after the tracker's sink: it reads what it recorded
        self._metrics_runner: web.AppRunner | None = None  # metrics.port's listener
        self._runner: web.AppRunner | None = None
        self._http_site: CappedTCPSite | None = None
        self.open_file_limit = 1024
        self._stopping = asyncio.Event()
        self.addresses: list[str] = []
        self.http_port = config.http.port
        self.dhcp: DhcpServer | None = None
        self.etcd_leases: EtcdLeaseStore | None = None  # authoritative leases in etcd (store.backend etcd)
        self.advertiser: RouterAdvertiser | None = None
        self.tftp: TftpServer | None = None
        self.dns: DnsServer | None = None
        self.api = None  # grpc.aio.Server, imported only when the api section is on
        self.api_port: int | None = None
        self.assets: AssetTracker | None = None  # the background tracker, when `assets.track` lists channels
        self._assets_task: asyncio.Task[None] | None = None
        self.notifier = Notifier.from_environ()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        # What the running TFTP and DNS sockets were bound for (a reload binds again when these change).
        self._tftp_listen = (config.tftp.address, config.tftp.port)
        self._dns_listen = (config.dns.address, config.dns.port)
        self._zone_serial = int(time.time())
        self._interface_addresses: list[IPAddress] = []
        self._scope: MatchScope | None = None  # which MACs some group could select (DHCP answers only those)
        self._scope_groups: list[Group] | None = None  # the groups it was computed from

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {"events_dropped": self.bus.dropped, "event_sink_errors": self.bus.sink_errors,
                                  "machines_tracked": len(self.tracker), "machines_evicted": self.tracker.evicted}
        if self._http_site is not None:
            out["http"] = self._http_site.stats.as_json()
        if self.dhcp is not None:
            out["dhcp"] = self.dhcp.stats.as_json()
        if self.tftp is not None:
            out["tftp"] = self.tftp.stats.as_json()
        if self.dns is not None:
            out["dns"] = self.dns.stats.as_json()
        if self.assets is not None:
            out["assets"] = {"checks": self.assets.checks, "switches": self.assets.switches,
                             "failures": self.assets.failures}
        if self.fleet is not None:
            out["fleet"] = self.fleet.stats()
        return out

    def service_stats(self) -> ServiceStats:
        """The running services' counters, for /metrics."""
        return ServiceStats(dhcp=self.dhcp.stats if self.dhcp is not None else None,
                            tftp=self.tftp.stats if self.tftp is not None else None,
                            tftp_active=len(self.tftp.sessions) if self.tftp is not None else 0,
                            dns=self.dns.stats if self.dns is not None else None,
                            http=self._http_site.stats if self._http_site is not None else None)

    async def run(self) -> int:
        try:
            if self.config.user is not None and os.geteuid() == 0:
                try:
                    limit_bounding_set()  # before any thread starts, so that every thread inherits it
                except PrivilegeError as exc:
                    raise StartupError(f"user: {exc}") from None
            try:
                await self.start()  # a StartupError part-way still closes what was opened
            except _StoppedWhileWaiting:  # SIGTERM while waiting for etcd: a stop asked for, not a failure
                logger.info("bootd stopped before it was ready (it was waiting for etcd)")
                return 0
            self.become_user()
            logger.info("bootd ready: %s", ", ".join(self.addresses) or "no service enabled",
                        extra={"addresses": ",".join(self.addresses)})
            self.notifier.ready(self.serving())
            self.notifier.start_watchdog(asyncio.get_running_loop())
            # What start-up made (modules, config, caches) lives as long as bootd: out of the collector's
            # sight, so a full collection while serving walks only what serving made (one took 45-50 ms).
            gc.freeze()
            await self._stopping.wait()
        finally:
            await self.stop()
            self.notifier.close()
        return 0

    def _on_stop_signal(self) -> None:
        if not self._stopping.is_set():
            self.notifier.stopping()
        self._stopping.set()

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def serving(self) -> str:
        return describe_serving(
            dhcp_mode=self.config.dhcp.mode.value if self.dhcp is not None else None,
            interfaces=self.config.listen.interfaces,
            tftp_port=self.tftp.bound_port if self.tftp is not None else None,
            dns_port=self.dns.port if self.dns is not None else None, domain=self.config.domain,
            http_port=self.http_port if self._runner is not None else None, api_port=self.api_port,
            machines=len(self.config.machines))

    def become_user(self) -> None:
        """Every socket is bound: started as root with `user:` set, become that user, keeping only
        CAP_NET_BIND_SERVICE and CAP_NET_RAW (a reload may bind again), after giving it state_dir."""
        wanted = self.config.user
        if wanted is None:
            if os.geteuid() == 0:
                logger.warning("running as root with every capability: set `user:` in %s, or run bootd.service "
                               "(bootd install-service), to keep only the two it needs", self.config.source.name)
            return
        user = lookup_user(wanted)
        if user is None:
            raise StartupError(f"{self.config.source.name}: user: no user {wanted!r} on this host")
        if os.geteuid() != 0:
            if os.geteuid() != user.uid:
                logger.warning("user: %s ignored: bootd was not started as root (it runs as %s)", wanted,
                               describe_user(os.getuid(), os.getgid()))
            return
        try:
            drop_privileges(user, [self.config.state_dir])
        except (PrivilegeError, OSError) as exc:
            raise StartupError(f"user: cannot become {wanted}: {exc}") from None
        logger.info("running as %s with cap_net_bind_service,cap_net_raw only", describe_user(user.uid, user.gid))
        if self.config.api.enabled and not os.access(self.config.http.data_dir, os.W_OK):
            logger.warning("api: user %s cannot write %s: api writes will fail (chown it to %s)", wanted,
                           self.config.http.data_dir, wanted)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.mirror is not None:
            await self._start_store()
        before, self.open_file_limit = raise_open_file_limit()  # every connection is a descriptor
        if before != self.open_file_limit:
            logger.info("open-file limit raised from %d to %d", before, self.open_file_limit)
        if uses_fleet(self.config):
            self._start_fleet()
        if self.config.http.enabled:
            await self._start_http()
        if self.config.metrics.port is not None:
            await self._start_metrics()
        if self.config.dhcp.mode is not DhcpMode.OFF:
            await self._start_etcd_leases()
            self._start_dhcp()
        if self.config.tftp.enabled:
            self._start_tftp()
        if self.config.dns.enabled:
            await self._start_dns()
        if self.config.api.enabled:
            await self._start_api()
        if self.config.assets.track:
            self._start_assets()

    def _start_fleet(self) -> None:
        """Every replica's machines in this one's views: this replica's steps written to etcd, the others'
        read back (appliance/fleet). It shares the store's etcd client."""
        from appliance.fleet.sync import Fleet

        store = self.config.store
        assert self.etcd is not None  # made with the etcd store (_etcd_of)
        self.fleet = Fleet(self.etcd, prefix=store.prefix, replica=replica_name(store),
                           bus=self.bus, max_machines=self.tracker.max_machines)
        self.bus.add_sink(self.fleet.see)
        self.http_context.fleet = self.fleet
        self.fleet.start()
        logger.info("fleet: this replica is %s; machine progress shared under %s/machines/", self.fleet.replica,
                    store.prefix)

    async def _start_store(self) -> None:
        """store.backend etcd: read the data once before serving. etcd unreachable: with on_unreachable
        refuse, stop with each endpoint and its reason; with wait, say so and try again every second (a line
        per attempt for the first ten, then one a minute) until it answers or bootd is stopped."""
        from appliance.etcd import EtcdUnavailable

        assert self.mirror is not None
        store, attempt = self.config.store, 0
        while True:
            attempt += 1
            try:
                await self.mirror.load()
                break
            except EtcdUnavailable as exc:
                if store.on_unreachable.value == "refuse":
                    raise StartupError(f"store: {exc} (store.on_unreachable: refuse)") from None
                if attempt <= 10 or attempt % 60 == 0:
                    logger.warning("store: %s; waiting for it (attempt %d, store.on_unreachable: wait)", exc, attempt)
            try:
                await asyncio.wait_for(self._stopping.wait(), 1.0)
                raise _StoppedWhileWaiting()
            except asyncio.TimeoutError:
                pass
        self.mirror.start()
        files = len(self.mirror.view.files)
        logger.info("store: etcd %s, %s/data/ at revision %d (%d files, generation %s)", ", ".join(store.endpoints),
                    store.prefix, self.mirror.revision, files, self.mirror.view.generation)

    def _start_assets(self) -> None:
        """The tracker runs beside the services; it reads the running config at every check."""
        # imported here, not at the top: its fetch, download and verify modules were ~30 ms of every start, with
        # or without assets.track (issue 16's start target; tests/unit/test_imports.py)
        from appliance.assets.track import AssetTracker

        self.assets = AssetTracker(lambda: (self.config.assets, self.config.http.assets_root), self.bus)
        self._assets_task = asyncio.get_running_loop().create_task(self.assets.run())

    async def _start_http(self) -> None:
        http = self.config.http
        runner = web.AppRunner(make_app(self.http_context, self.metrics), access_log=None, handle_signals=False,
                               shutdown_timeout=DRAIN_SECONDS, keepalive_timeout=KEEPALIVE_SECONDS)
        await runner.setup()
        site = CappedTCPSite(runner, str(http.address) if http.address else None, http.port,
                             max_connections=connection_cap(self.open_file_limit))
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"http: cannot listen on {http.address or '*'}:{http.port}: {exc.strerror}") from None
        self._runner = runner
        self._http_site = site
        self.http_port = runner.addresses[0][1]
        for sockname in runner.addresses:
            host, port = sockname[0], sockname[1]
            self.addresses.append(f"http://{'[' + host + ']' if ':' in host else host}:{port}")

    async def _start_metrics(self) -> None:
        """/metrics on a listener of its own (`metrics.port`), apart from the boot network's HTTP port."""
        metrics = self.config.metrics
        runner = web.AppRunner(metrics_app(self.metrics), access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            # a few scrapers at most: a client holding connections open cannot take more descriptors than these
            await CappedTCPSite(runner, str(metrics.address) if metrics.address else None, metrics.port,
                                max_connections=METRICS_CONNECTIONS).start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"metrics: cannot listen on {metrics.address or '*'}:{metrics.port}: "
                               f"{exc.strerror or exc}") from None
        self._metrics_runner = runner
        for sockname in runner.addresses:
            host, port = sockname[0], sockname[1]
            self.addresses.append(f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics")

    async def _start_api(self) -> None:
        from appliance.api.service import ApiError, Backend, start_api
        from appliance.power.service import power_handler

        api = self.config.api
        try:
            self.api, port = await start_api(api, Backend(store=lambda: self.http_context.store, bus=self.bus),
                                             (power_handler(lambda: self.config.machines, self.bus.publish),))
        except ApiError as exc:
            raise StartupError(str(exc)) from None
        self.api_port = port
        self.addresses.append(f"grpcs://{api.address or '*'}:{port}")

    def _dhcp_policies(self, config: Config, store: DataDir):
        built = self._build_dhcp_policies(config, store)
        self._use_scope(built)
        return built.policies

    def _build_dhcp_policies(self, config: Config, store: DataDir) -> _DhcpBuild:
        """The DHCP tables for `config` and `store`, touching nothing that runs (a reload builds first)."""
        groups = store.groups()
        scope = match_scope(groups, SCRIPT_LABELS)
        policies = build_policies(config, available_firmware(*firmware_roots(config)), http_port=self.http_port,
                                  selectable=None if scope.any_mac else scope.macs)
        return _DhcpBuild(policies=policies, groups=groups, scope=scope)

    def _use_scope(self, built: _DhcpBuild) -> None:
        self._scope_groups = built.groups
        if built.scope != self._scope:
            self._scope = built.scope
            logger.info("dhcp: PXE answered for %s", "any MAC (a group can select any machine)" if built.scope.any_mac
                        else f"{len(built.scope.macs)} MACs some group selects; others are left to their next boot "
                             "device")

    def _refresh_dhcp(self) -> None:
        """The groups decide which MACs DHCP answers; a data-dir edit or an API write changes them between
        reloads. `DataDir.groups` gives back the same list until a group file changes."""
        if self.dhcp is not None and self.http_context.store.groups() is not self._scope_groups:
            self.dhcp.update(self._dhcp_policies(self.config, self.http_context.store))

    def _tftp_files(self, config: Config) -> TftpFiles:
        """The firmware dir and tftp.root; for the network GRUB (Secure Boot) its config and the assets."""
        grub = NetworkGrub(http_port=self.http_port, store=lambda: self.http_context.store, publisher=self.publisher)
        return TftpFiles(firmware_roots(config), grub, {"/assets/": config.http.assets_root},
                         lambda name, peer: tftp_event_kind(self.publisher, name, peer))

    def _bind_tftp(self, config: Config) -> TftpServer:
        """A started TFTP server for `config`; OSError if its socket cannot be bound."""
        tftp = config.tftp
        server = TftpServer(files=self._tftp_files(config), publisher=self.publisher,
                            address=str(tftp.address) if tftp.address else "", port=tftp.port,
                            max_transfers=tftp.max_transfers, max_per_client=tftp.max_per_client,
                            retries=tftp.retries, timeout=float(tftp.timeout), max_blksize=tftp.max_blksize,
                            max_windowsize=tftp.max_windowsize,
                            stats=self.tftp.stats if self.tftp is not None else None)  # a rebind counts on
        try:
            server.start()
        except OSError:
            server.close()
            raise
        return server

    def _start_tftp(self) -> None:
        tftp = self.config.tftp
        try:
            self.tftp = self._bind_tftp(self.config)
        except OSError as exc:
            raise StartupError(f"tftp: cannot listen on UDP {tftp.port}: {exc.strerror or exc}") from None
        self.addresses.append(f"tftp://{tftp.address or '*'}:{self.tftp.bound_port}")

    def _start_dhcp(self) -> None:
        config = self.config
        address = config.listen.address
        leases = None
        if config.dhcp.mode is DhcpMode.AUTHORITATIVE and self.etcd_leases is None:
            leases = LeaseTable.load(config.state_dir / "leases.json")
        on_new_interface = None
        if config.dhcp.mode is DhcpMode.AUTHORITATIVE and config.dhcp.router_advertisement:
            advertiser = RouterAdvertiser()
            try:
                advertiser.start()
            except OSError as exc:
                raise StartupError(f"dhcp.router_advertisement: cannot open an ICMPv6 socket: {exc.strerror}") from None
            self.advertiser = advertiser
            on_new_interface = advertiser.add_interface
        make = DhcpServer
        if self.etcd_leases is not None:
            from appliance.dhcp.etcd_leases import EtcdDhcpServer
            make = functools.partial(EtcdDhcpServer, store=self.etcd_leases)
        server = make(policies=self._dhcp_policies(config, self.http_context.store), bus=self.bus, leases=leases,
                            port=config.dhcp.port, pxe_port=config.dhcp.pxe_port,
                            server_address=address if address is not None and address.version == 4 else None,
                            interfaces=config.listen.interfaces, on_new_interface=on_new_interface,
                            on_lease_change=self.lease_changed, refresh=self._refresh_dhcp)
        try:
            server.start()
        except OSError as exc:
            server.close()
            raise StartupError(f"dhcp: cannot listen on UDP {config.dhcp.port}/{config.dhcp.pxe_port}: "
                               f"{exc.strerror or exc}") from None
        self.dhcp = server
        mode = config.dhcp.mode.value
        self.addresses.append(f"dhcp-{mode}://*:{server.bound_ports[0]}+{server.bound_ports[1]}")
        servable = sorted(f.value for f in server.policies.pxe.available)
        logger.info("dhcp %s mode; firmware present: %s", mode, ", ".join(servable) or "none (only iPXE clients boot)")

    async def _start_etcd_leases(self) -> None:
        """With store.backend etcd, authoritative DHCP's leases live in etcd (issue 18): their local view,
        loaded before DHCP answers anything."""
        if self.config.dhcp.mode is not DhcpMode.AUTHORITATIVE or self.etcd is None:
            return
        from appliance.dhcp.etcd_leases import open_lease_store
        from appliance.etcd import EtcdError
        address = self.config.listen.address
        try:
            self.etcd_leases = await open_lease_store(self.etcd, self.config.store.prefix,
                                                      address if address is not None and address.version == 4 else None)
        except EtcdError as exc:
            raise StartupError(f"dhcp: cannot read the leases from etcd: {exc}") from None

    def _zone(self, config: Config) -> Zone:
        leases: dict[str, IPAddress] = {}
        if self.dhcp is not None:
            now = time.time()
            for machine in config.machines:
                if machine.ip is None and (lease := self.dhcp.leases.lease_for(machine.mac, now)) is not None:
                    leases[machine.name] = lease.ip
        self._zone_serial += 1
        return build_zone(config, self.server_addresses(config), extra=extra_records(config), leases=leases,
                          reverse=config.dns.reverse, ttl=config.dns.ttl, serial=self._zone_serial)

    def server_addresses(self, config: Config) -> list[IPAddress]:
        """bootd's own addresses, for the provisioner's name: listen.address, else the DNS address."""
        for candidate in (config.listen.address, config.dns.address):
            if candidate is not None and not candidate.is_unspecified:
                return [candidate]
        return list(self._interface_addresses)

    async def _bind_dns(self, config: Config) -> DnsServer:
        """A started DNS server (UDP and TCP) for `config`; OSError if a socket cannot be bound."""
        dns = config.dns
        server = DnsServer(zone=self._zone(config), address=str(dns.address) if dns.address else "",
                           port=dns.port, forward=dns.forward, max_tcp_connections=dns.max_tcp_connections,
                           tcp_idle_timeout=float(dns.tcp_idle_timeout),
                           stats=self.dns.stats if self.dns is not None else None)  # a rebind counts on
        try:
            await server.start()
        except OSError:
            await server.close()
            raise
        return server

    async def _start_dns(self) -> None:
        dns = self.config.dns
        if self.config.listen.interfaces:
            self._interface_addresses = await interface_addresses(self.config.listen.interfaces)
        try:
            self.dns = await self._bind_dns(self.config)
        except OSError as exc:
            raise StartupError(f"dns: cannot listen on port {dns.port}: {exc.strerror or exc}") from None
        self.addresses.append(f"dns://{dns.address or '*'}:{self.dns.port}")
        if not self.server_addresses(self.config):
            logger.warning("dns: no address for names.provisioner: set listen.address (or listen.interfaces)")

    def lease_changed(self) -> None:
        if self.dns is not None:
            self.dns.update(self._zone(self.config))

    async def stop(self) -> None:
        logger.info("bootd stopping: draining requests in flight")
        if self._assets_task is not None:
            self._assets_task.cancel()  # a download in flight keeps its .part for the next start
            await asyncio.gather(self._assets_task, return_exceptions=True)
        if self.api is not None:
            await self.api.stop(grace=DRAIN_SECONDS)  # calls in flight finish; their writes are atomic anyway
        if self.dns is not None:
            await self.dns.close()
        if self.dhcp is not None:
            self.dhcp.close()
        if self.etcd_leases is not None:
            await self.etcd_leases.close()
        if self.advertiser is not None:
            self.advertiser.close()
        if self.tftp is not None:
            self.tftp.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self.fleet is not None:
            await self.fleet.stop()  # the last steps written (for at most a second)
        self.publisher.cancel()
        await self.neighbours.close()
        if self.mirror is not None:
            await self.mirror.stop()
        if self.etcd is not None:
            await self.etcd.close()
        logger.info("bootd stopped")

    async def reload(self) -> None:
        """SIGHUP: one reload at a time, between RELOADING=1 and READY=1."""
        async with self._reload_lock:
            self.notifier.reloading()
            running = self.config
            try:
                await self._reload()
            finally:
                self.metrics.reloaded(ok=self.config is not running)  # only a reload that applied swaps it
                self.notifier.ready(self.serving())

    async def _reload(self) -> None:
        """All or nothing: every part the new config needs is built (and every socket that changes is bound)
        before anything running is touched; one failure, and bootd keeps running the old config whole."""
        new = self._load_for_reload()
        if new is None:
            return
        old = self.config
        for what, changed in (
                ("http address or port", (new.http.address, new.http.port, new.http.enabled)
                 != (old.http.address, old.http.port, old.http.enabled)),
                ("dhcp mode, port or listen", (new.dhcp.mode, new.dhcp.port, new.dhcp.pxe_port, new.listen)
                 != (old.dhcp.mode, old.dhcp.port, old.dhcp.pxe_port, old.listen)),
                ("user", new.user != old.user),
                ("store section", new.store != old.store),
                ("metrics address or port", new.metrics != old.metrics)):
            if changed:
                logger.warning("reload: a change of %s takes effect at the next restart", what)
        try:
            parts = self._build_for_reload(new)
        except _BuildFailed as exc:  # a part of the runtime refused what the config check let through: say which
            logger.error("reload refused: building %s failed: %s; keeping the running config", exc.part,
                         exc.cause, exc_info=not isinstance(exc.cause, (ValueError, OSError)))
            return
        try:
            sockets = await self._bind_for_reload(new)
        except _BindFailed as exc:
            logger.error("reload refused: %s; keeping the running config", exc)
            return
        await self._switch(new, parts, sockets)
        logger.info("reloaded %s: %d machines, data dir %s", self.config_path, len(new.machines),
                    new.http.data_dir)

    def _load_for_reload(self) -> Config | None:
        try:
            new = load_config(self.config_path)
        except ConfigInvalid as exc:
            for error in exc.errors:
                logger.error("reload refused: %s", error)
            logger.error("reload refused: keeping the running config (%d errors)", len(exc.errors))
            return None
        except OSError as exc:
            logger.error("reload refused: cannot read %s: %s; keeping the running config", self.config_path, exc)
            return None
        if problems := startup_problems(new):
            for problem in problems:
                logger.error("reload refused: %s", problem)
            return None
        return new

    def _build_for_reload(self, new: Config) -> _ReloadParts:
        """Everything the new config needs, built beside the running parts (nothing running changes)."""
        def store_of() -> DataDir:
            store = build_store(new, self.mirror)
            store.groups()  # parsed now, so a broken groups dir shows here and not at the next request
            return store

        store = _building("the data dir", store_of)
        dhcp = _building("the DHCP tables", lambda: self._build_dhcp_policies(new, store)) \
            if self.dhcp is not None else None
        files = _building("the TFTP roots", lambda: self._tftp_files(new)) if self.tftp is not None else None
        zone = _building("the DNS zone", lambda: self._zone(new)) if self.dns is not None else None
        return _ReloadParts(store=store, dhcp=dhcp, tftp_files=files, zone=zone)

    async def _bind_for_reload(self, new: Config) -> _ReloadSockets:
        """New TFTP and DNS servers where their address or port changed; if one cannot be bound, the ones
        bound so far are closed again and the reload is refused."""
        sockets = _ReloadSockets()
        try:
            if self.tftp is not None and new.tftp.enabled and (new.tftp.address, new.tftp.port) != self._tftp_listen:
                try:
                    sockets.tftp = self._bind_tftp(new)
                except OSError as exc:
                    raise _BindFailed(f"tftp: cannot listen on {new.tftp.address or '*'}:{new.tftp.port}: "
                                      f"{exc.strerror or exc}") from None
            if self.dns is not None and new.dns.enabled and (new.dns.address, new.dns.port) != self._dns_listen:
                try:
                    sockets.dns = await self._bind_dns(new)
                except OSError as exc:
                    raise _BindFailed(f"dns: cannot listen on {new.dns.address or '*'}:{new.dns.port}: "
                                      f"{exc.strerror or exc}") from None
        except _BindFailed:
            if sockets.tftp is not None:
                sockets.tftp.close()
            if sockets.dns is not None:
                await sockets.dns.close()
            raise
        return sockets

    async def _switch(self, new: Config, parts: _ReloadParts, sockets: _ReloadSockets) -> None:
        """The new config, at once: plain assignments and swaps that cannot fail halfway; the replaced DNS
        server is closed after the switch."""
        old_dns = None
        if sockets.tftp is not None and self.tftp is not None:
            self.tftp.close()  # transfers in flight end with it; their clients retry
            self.tftp = sockets.tftp
            self._tftp_listen = (new.tftp.address, new.tftp.port)
            logger.info("reload: tftp now on %s:%d", new.tftp.address or "*", self.tftp.bound_port,
                        extra={"tftp_port": self.tftp.bound_port})
        elif self.tftp is not None and parts.tftp_files is not None:
            self.tftp.files = parts.tftp_files
        if sockets.dns is not None and self.dns is not None:
            old_dns, self.dns = self.dns, sockets.dns
            self._dns_listen = (new.dns.address, new.dns.port)
            logger.info("reload: dns now on %s:%d", new.dns.address or "*", self.dns.port,
                        extra={"dns_port": self.dns.port})
        elif self.dns is not None and parts.zone is not None:
            self.dns.update(parts.zone)
        if self.dhcp is not None and parts.dhcp is not None:
            self._use_scope(parts.dhcp)
            self.dhcp.update(parts.dhcp.policies)
        assets_changed = new.assets != self.config.assets
        self.config = new
        if assets_changed and self.assets is not None:
            self.assets.wake()
        elif assets_changed and new.assets.track:
            self._start_assets()
        self.tracker.set_known((m.mac, m.name) for m in new.machines)
        self.http_context.config = new
        self.http_context.store = parts.store
        if old_dns is not None:
            await old_dns.close()
