"""Prometheus metrics (/metrics): what each service received, answered and dropped, TFTP transfers, HTTP
requests per route, how long machines take to reach each boot stage, machines per stage, config reloads.

Invariants:
- Every label value comes from a set fixed at start: the services, each service's drop reasons (a reason
  not in its set counts as "other"), the HTTP app's route patterns (never the path asked), HTTP status
  codes, boot stages, reload results. Nothing a client sends (a MAC, a path, a name) becomes a label, so
  the number of series depends on the config and the code, never on the traffic.
- The packet paths count nothing new: DHCP, TFTP and DNS keep the plain integer counters they always had
  (their `*Stats`, also behind /api/v1/stats) and `ServiceCollector` reads them at scrape time
  (prometheus_client's custom-collector pattern). Counting a packet stays an attribute increment.
- HTTP requests are counted by a middleware into prometheus_client's Counter and Histogram; the child for
  each (route, code) is bound once and kept.
- Boot stage durations come from the event bus (`StageTimer` is a sink), not from the publishers.
- One CollectorRegistry per `Metrics`, never the library's global one: tests build as many as they like.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram, Info, ProcessCollector
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from appliance import __version__
from appliance.events import Event, EventKind, ProgressTracker

if TYPE_CHECKING:
    from appliance.dhcp.server import DhcpStats
    from appliance.dns.server import DnsStats
    from appliance.http.limits import ConnectionStats
    from appliance.tftp.server import TftpStats

OTHER = "other"  # a reason the code gave that is not in its service's set (a new one nobody added here)

# Why each service drops a request: the reasons its code gives (tests/unit/test_metrics.py reads them out of the
# source and checks each is here). DHCP's come from dhcp/pxe.py, authoritative.py, leases.py and packet.py.
DHCP_DROP_REASONS = (
    "bad-hlen", "bad-magic-cookie", "bad-op", "bad-option-43", "bad-option-93", "bad-option-97", "bootreply",
    "decline-not-holder", "decline-without-address", "firmware-missing", "ignored-machine", "no-message-type",
    "no-profile", "not-a-client-message", "not-ethernet", "not-for-proxy", "not-pxe", "option-past-end",
    "option-truncated", "other-interface", "other-server", "pool-exhausted", "release-not-holder",
    "request-without-address", "send-failed", "short-packet", "unknown-machine", "unsupported-arch",
    "no-pool-for-relay",
    "overload",  # authoritative mode: a DISCOVER past the backlog (REQUESTs are finished first)
    "no-quorum",  # etcd leases: this replica cannot reach etcd's quorum, so it gives no new address
    "stale-discover",  # etcd leases: a DISCOVER answered after its client REQUESTed another replica's offer
)
TFTP_DROP_REASONS = ("bad-fields", "bad-opcode", "duplicate-request", "no-nul-terminator", "not-a-request", "not-ascii",
                     "request-too-long", "short")
# Refused with a TFTP ERROR: the server's own refusals and negotiate()'s (tftp/protocol.py).
TFTP_REFUSE_REASONS = ("bad-blksize", "bad-mode", "bad-timeout", "bad-tsize", "bad-windowsize", "busy", "not-found",
                       "refused-path", "write-refused")
DNS_DROP_REASONS = ("malformed", "response", "send-failed", "short")
# malformed: aiohttp could not parse the request (it answers 400); client-gone: the client left while its
# request was handled.
HTTP_DROP_REASONS = ("client-gone", "malformed")

UNMATCHED_ROUTE = "unmatched"  # a request no route took (a method a route does not have: 405)
HTTP_CODES = frozenset(str(status.value) for status in HTTPStatus)
# Seconds from power-on to a stage: a BIOS machine's iPXE takes seconds, an installer minutes, a slow disk more.
STAGE_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
# The stages a machine goes through (DATA is a write through the API: no machine).
STAGES = tuple(kind for kind in EventKind if kind is not EventKind.DATA)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStats:
    """The running services' counters, read at each scrape (None: the service is off)."""

    dhcp: DhcpStats | None = None
    tftp: TftpStats | None = None
    tftp_active: int = 0  # transfers under way
    dns: DnsStats | None = None
    http: ConnectionStats | None = None


@dataclass(slots=True)
class HttpCounts:
    """What the boot port's requests did, beside the per-route Counter (plain integers, as the other services'
    counters are, so the collector reads every service the same way)."""

    received: int = 0
    answered: int = 0
    client_gone: int = 0
    internal_errors: int = 0


class Metrics:
    """bootd's metrics and their registry. `services` gives the running servers' counters (a reload may replace
    a server), `tracker` the machines' progress."""

    def __init__(self, *, services: Callable[[], ServiceStats], tracker: ProgressTracker,
                 clock: Callable[[], float] = time.time) -> None:
        # `_created` series (one more per counter and histogram series) say when a counter started, which
        # Prometheus already sees as a reset: without them the scrape is half as long. A process-wide switch;
        # bootd is the only user of prometheus_client in its process.
        prometheus_client.disable_created_metrics()
        self.registry = CollectorRegistry()
        self.http = HttpCounts()
        self._clock = clock
        self._requests = PromCounter("bootd_http_requests", "HTTP requests on the boot port, by route pattern and "
                                     "status code", ["route", "code"], registry=self.registry)
        self._latency = Histogram("bootd_http_request_duration_seconds", "Time to answer an HTTP request on the "
                                  "boot port (to its response headers; a file's transfer is not in it), by route "
                                  "pattern", ["route"], registry=self.registry)
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}  # (route, code) -> (counter, histogram)
        stage = Histogram("bootd_boot_stage_seconds", "Seconds from a boot's first step (its first DHCP request: "
                          "power-on as bootd sees it) to each stage it reached", ["stage"], buckets=STAGE_BUCKETS,
                          registry=self.registry)
        self.stage_timer = StageTimer(tracker, {kind: stage.labels(kind.value) for kind in STAGES})
        reloads = PromCounter("bootd_config_reloads", "Config reloads (SIGHUP), by result", ["result"],
                              registry=self.registry)
        self._reloads = {True: reloads.labels("success"), False: reloads.labels("failure")}
        self._last_ok = Gauge("bootd_config_last_reload_successful", "1 when the last reload applied the new "
                              "config (or none was tried), 0 when it was refused", registry=self.registry)
        self._last_ok_time = Gauge("bootd_config_last_reload_success_timestamp_seconds", "When the running config "
                                   "was loaded (start or the last successful reload), Unix time",
                                   registry=self.registry)
        self._last_time = Gauge("bootd_config_last_reload_timestamp_seconds", "When the last reload was tried, "
                                "whatever its result (0: none yet), Unix time", registry=self.registry)
        self._last_ok.set(1)
        self._last_ok_time.set(clock())
        Info("bootd_build", "bootd's version and the Python running it", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()})
        ProcessCollector(registry=self.registry)  # process_*: memory, CPU, open files, start time
        self.registry.register(ServiceCollector(services, self.http))
        self.registry.register(MachinesCollector(tracker))

    # --- config reloads ---------------------------------------------------------------------------

    def reloaded(self, ok: bool) -> None:
        now = self._clock()
        self._reloads[ok].inc()
        self._last_ok.set(1 if ok else 0)
        self._last_time.set(now)
        if ok:
            self._last_ok_time.set(now)

    # --- HTTP -------------------------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        """Every route's latency series from the start (at 0), so the set of series does not wait for traffic."""
        for route in route_patterns(app.router):
            self._latency.labels(route)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        counts = self.http
        counts.received += 1
        start = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self._answered(request, exc.status, start)
            raise
        except (asyncio.CancelledError, ConnectionError):
            counts.client_gone += 1
            raise
        except Exception:  # a handler's bug: aiohttp answers 500 and logs it
            counts.internal_errors += 1
            self._answered(request, 500, start)
            raise
        self._answered(request, response.status, start)
        return response

    def _answered(self, request: web.Request, status: int, start: float) -> None:
        seconds = time.perf_counter() - start
        self.http.answered += 1
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        code = str(status)
        children = self._children.get((route, code))
        if children is None:
            children = self._children[route, code] = (
                self._requests.labels(route, code if code in HTTP_CODES else OTHER), self._latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    async def scrape(self, request: web.Request) -> web.Response:
        """GET /metrics: Prometheus's text format, or OpenMetrics when the scraper asks for it."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})


def route_patterns(router: web.UrlDispatcher) -> list[str]:
    return [resource.canonical for resource in router.resources()] + [UNMATCHED_ROUTE]


def metrics_app(metrics: Metrics) -> web.Application:
    """The listener of its own (`metrics.port`): /metrics only."""
    app = web.Application(client_max_size=4096)
    app.router.add_get("/metrics", metrics.scrape)
    return app


# --- read at scrape time ---------------------------------------------------------------------------------

class ServiceCollector(Collector):
    """Per service: received, answered, dropped by reason; TFTP's transfers; our own bugs."""

    def __init__(self, services: Callable[[], ServiceStats], http: HttpCounts) -> None:
        self._services = services
        self._http = http

    def collect(self) -> Iterable[Metric]:
        stats = self._services()
        received = CounterMetricFamily("bootd_requests_received", "Requests (datagrams, queries, HTTP requests) "
                                       "read, by service", labels=["service"])
        answered = CounterMetricFamily("bootd_requests_answered", "Requests answered (error answers included: "
                                       "TFTP ERROR, DNS FORMERR or SERVFAIL, HTTP 4xx/5xx), by service",
                                       labels=["service"])
        dropped = CounterMetricFamily("bootd_requests_dropped", "Requests bootd did not serve, by service and "
                                      "reason (some still got an error answer: a malformed DNS query its FORMERR)",
                                      labels=["service", "reason"])
        errors = CounterMetricFamily("bootd_internal_errors", "bootd's own bugs (each logged with its traceback; "
                                     "the next request is served), by service", labels=["service"])
        out: list[Metric] = [received, answered, dropped, errors]
        if (dhcp := stats.dhcp) is not None:
            for service, counts in (("dhcp", dhcp.dhcp), ("proxy-dhcp", dhcp.pxe)):
                received.add_metric([service], counts.received)
                answered.add_metric([service], counts.answered)
                _by_reason(dropped, service, counts.dropped, DHCP_DROP_REASONS)
            errors.add_metric(["dhcp"], dhcp.internal_errors)
            out.append(_counter("bootd_dhcp_lease_write_failures", "Lease changes answered while the lease file "
                                "could not be written (a full disk)", dhcp.lease_write_failures))
        if (tftp := stats.tftp) is not None:
            received.add_metric(["tftp"], tftp.requests)
            answered.add_metric(["tftp"], tftp.started + sum(tftp.refused.values()))
            _by_reason(dropped, "tftp", tftp.dropped, TFTP_DROP_REASONS)
            errors.add_metric(["tftp"], tftp.internal_errors)
            refused = CounterMetricFamily("bootd_tftp_refused", "TFTP requests answered with an ERROR, by reason",
                                          labels=["reason"])
            _by_reason(refused, None, tftp.refused, TFTP_REFUSE_REASONS)
            finished = CounterMetricFamily("bootd_tftp_transfers_finished", "TFTP transfers that ended, by outcome",
                                           labels=["outcome"])
            finished.add_metric(["completed"], tftp.completed)
            finished.add_metric(["failed"], tftp.failed)
            out += [refused, finished,
                    _counter("bootd_tftp_transfers_started", "TFTP transfers started", tftp.started),
                    _gauge("bootd_tftp_transfers_active", "TFTP transfers under way", stats.tftp_active),
                    _counter("bootd_tftp_sent_bytes", "File bytes the clients acknowledged, counted when a "
                             "transfer ends", tftp.bytes_sent),
                    _counter("bootd_tftp_data_packets", "TFTP DATA packets sent (retransmissions included), "
                             "counted when a transfer ends", tftp.data_packets),
                    _counter("bootd_tftp_retransmissions", "TFTP DATA packets sent again after a timeout or a "
                             "gap, counted when a transfer ends", tftp.retransmitted)]
        if (dns := stats.dns) is not None:
            received.add_metric(["dns"], dns.queries)
            answered.add_metric(["dns"], dns.cache_hits + sum(dns.answered.values()))
            _by_reason(dropped, "dns", dns.dropped, DNS_DROP_REASONS)
            errors.add_metric(["dns"], dns.internal_errors)
        if (http := stats.http) is not None:
            counts = self._http
            received.add_metric(["http"], counts.received + http.malformed)
            answered.add_metric(["http"], counts.answered + http.malformed)
            _by_reason(dropped, "http", Counter({"malformed": http.malformed, "client-gone": counts.client_gone}),
                       HTTP_DROP_REASONS)
            errors.add_metric(["http"], counts.internal_errors)
            out += [_gauge("bootd_http_connections_open", "HTTP connections open on the boot port", http.open),
                    _counter("bootd_http_connections_closed_idle", "Idle HTTP connections closed to make room for "
                             "new ones (at the connection cap)", http.closed_idle)]
        return [family for family in out if family.samples]  # no service running: no family


class MachinesCollector(Collector):
    """Machines by their current stage, from the tracker at scrape time (a few thousand at most)."""

    def __init__(self, tracker: ProgressTracker) -> None:
        self._tracker = tracker

    def collect(self) -> Iterable[Metric]:
        by_stage = Counter({kind: 0 for kind in STAGES})
        failed = 0
        for machine in self._tracker.machines():
            if machine.stages:
                by_stage[machine.stages[-1].kind] += 1
                failed += not all(mark.ok for mark in machine.stages)
        machines = GaugeMetricFamily("bootd_machines", "Machines bootd tracks, by the stage of their current boot "
                                     "they reached last", labels=["stage"])
        for kind in STAGES:
            machines.add_metric([kind.value], by_stage[kind])
        return [machines, _gauge("bootd_machines_failed", "Machines whose current boot has a failed step",
                                 failed)]


def _by_reason(family: CounterMetricFamily, service: str | None, counts: Mapping[str, int],
               reasons: tuple[str, ...]) -> None:
    """One series per reason of the fixed set (0 until it happens) and one for any other reason."""
    labels = [service] if service is not None else []
    for reason in reasons:
        family.add_metric([*labels, reason], counts.get(reason, 0))
    family.add_metric([*labels, OTHER], sum(n for reason, n in counts.items() if reason not in reasons))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


# --- boot stage durations --------------------------------------------------------------------------------

class StageTimer:
    """The bus sink behind bootd_boot_stage_seconds. Runs after the tracker's sink, so the machine's progress
    already holds the event: a stage reached (ok) for the first time in a boot is observed once, as the
    time since that boot's first step. The stage's mark in the tracker remembers that it was observed
    (`StageMark.timed`): a new boot has new marks, a forgotten machine has none, and nothing is kept here per
    machine (this runs for every event, a new machine's DHCP included)."""

    def __init__(self, tracker: ProgressTracker, histograms: Mapping[EventKind, Any]) -> None:
        self._tracker = tracker
        self._histograms = histograms

    def __call__(self, event: Event) -> None:
        if event.mac is None or not event.ok:
            return
        histogram = self._histograms.get(event.kind)
        if histogram is None:
            return
        progress = self._tracker.get(event.mac)
        if progress is None:
            return
        for mark in progress.stages:
            if mark.kind is event.kind:
                break
        else:
            return
        if mark.timed:
            return
        mark.timed = True
        histogram.observe(max(0.0, event.time - progress.stages[0].first))
