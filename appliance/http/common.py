"""What every handler shares: the app's state, labels, attributing a request to a machine, 404s."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from appliance.config import Config
from appliance.events import Event, EventBus, EventKind, PeerPublisher, ProgressTracker
from appliance.mac import MacAddress
from appliance.store import DataDir, Group, Profile, RequestLabels, labels_from_query, select_group

logger = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class HttpContext:
    """The HTTP server's view of the daemon. `config` and `store` are swapped whole on reload."""

    config: Config
    store: DataDir
    bus: EventBus
    tracker: ProgressTracker
    publisher: PeerPublisher
    stats: Callable[[], dict[str, Any]] = dict  # the daemon's counters, for /api/v1/stats


CONTEXT = web.AppKey("bootd_context", HttpContext)

# matchbox answers every miss with Go's http.NotFound.
NOT_FOUND_BODY = b"404 page not found\n"
TEXT = "text/plain"


def not_found() -> web.Response:
    return web.Response(status=404, body=NOT_FOUND_BODY, content_type=TEXT, charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def text_response(body: str | bytes, content_type: str = TEXT) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(body=data, content_type=content_type, charset="utf-8")


def request_labels(request: web.Request) -> RequestLabels:
    labels = labels_from_query(request.rel_url.raw_query_string)
    for key, value in labels.rejected:
        logger.warning("%s %s: dropping label %s=%r: not a MAC address", request.remote, request.path, key, value)
    return labels


def label_mac(labels: RequestLabels) -> MacAddress | None:
    for key, value in labels.labels.items():
        if key.lower() == "mac":
            return MacAddress(value)
    return None


@dataclass(frozen=True, slots=True)
class Selection:
    labels: RequestLabels
    mac: MacAddress | None  # from the labels, when the client sent one
    group: Group | None
    profile: Profile | None
    reason: str  # why nothing (or what) was selected, for logs and events


def select(ctx: HttpContext, request: web.Request) -> Selection:
    """The group and profile matchbox would choose for this request."""
    return choose(ctx.store, request_labels(request))


def choose(store: DataDir, labels: RequestLabels) -> Selection:
    """The group and profile matchbox would choose for these labels (also `bootd render`'s choice)."""
    mac = label_mac(labels)
    group = select_group(store.groups(), labels.labels)
    if group is None:
        return Selection(labels, mac, None, None, f"no group matches labels {dict(labels.labels)}")
    profile = store.profile(group.profile) if group.profile else None
    if profile is None:
        return Selection(labels, mac, group, None,
                         f"group {group.id!r} ({group.source}): profile {group.profile!r} not found")
    return Selection(labels, mac, group, profile, f"group {group.id!r}, profile {profile.id!r}")


def publish(ctx: HttpContext, request: web.Request, mac: MacAddress | None, event_type: type[Event] = Event,
            **fields: Any) -> None:
    """Publish a step of the machine behind `request`, found by the `mac=` label or the client's IP."""
    ctx.publisher.publish(request.remote, mac, event_type, **fields)


def failed(ctx: HttpContext, request: web.Request, mac: MacAddress | None, kind: EventKind, reason: str) -> web.Response:
    logger.debug("%s %s: 404: %s", request.remote, request.path_qs[:200], reason)
    publish(ctx, request, mac, kind=kind, detail=reason, ok=False)
    return not_found()
