"""What every handler shares: the app's state, labels, attributing a request to a machine, 404s."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from appliance.config import Config
from appliance.events import Event, EventBus, EventKind, PeerPublisher, ProgressTracker
from appliance.mac import MacAddress
from appliance.store import DataDir, Group, Profile, RequestLabels, labels_from_query, select_group

if TYPE_CHECKING:
    from appliance.fleet.sync import Fleet

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Selection:
    labels: RequestLabels
    mac: MacAddress | None  # from the labels, when the client sent one
    group: Group | None
    profile: Profile | None
    reason: str  # why nothing (or what) was selected, for logs and events


@dataclass(slots=True, eq=False)
class Choice:
    """A query's selection and what was rendered from it (by renderer: /ipxe's and /grub's scripts)."""

    selection: Selection
    bodies: dict[Callable[..., str], bytes] = field(default_factory=dict)

    def body(self, render: Callable[..., str], *args: object) -> bytes:
        """render(*args) encoded; kept when the choice is (the args come from the selection)."""
        found = self.bodies.get(render)
        if found is None:
            found = self.bodies[render] = render(*args).encode()
        return found


CHOICES_KEPT = 4096


class ChoiceCache:
    """The group and profile chosen for a query string, kept while the data dir's generation holds.

    Selection (labels parsed, every group matched, the profile looked up) was most of /ipxe's time; a
    machine asks with the same query each boot and a fleet's scripts repeat it. What a choice depends on:
    the query string (its labels) and the groups and profiles, which the store's `generation()` numbers
    (an inotify watch, checked once per request: an edit is seen by the next request). A store without
    `generation` (or one that cannot tell, None) is asked every time. A reload builds a new store, and a
    new store empties the cache."""

    def __init__(self, kept: int = CHOICES_KEPT) -> None:
        self._kept = kept
        self._store: object = None
        self._generation: int | None = None
        self._entries: dict[str, Choice] = {}

    def choose(self, store: DataDir, raw_query: str) -> Choice:
        generation_of = getattr(store, "generation", None)  # optional: a store that cannot tell is asked each time
        generation = generation_of() if generation_of is not None else None
        if generation is None:
            return Choice(choose(store, labels_from_query(raw_query)))
        if store is not self._store or generation != self._generation:
            self._entries.clear()
            self._store, self._generation = store, generation
        found = self._entries.get(raw_query)
        if found is not None:
            return found
        choice = Choice(choose(store, labels_from_query(raw_query)))
        if generation_of() == generation:  # nothing changed while choosing, and every file read was watched
            if len(self._entries) >= self._kept:
                del self._entries[next(iter(self._entries))]  # the oldest: a fleet's MACs each ask once or twice
            self._entries[raw_query] = choice
        return choice


@dataclass(slots=True, kw_only=True)
class HttpContext:
    """The HTTP server's view of the daemon. `config` and `store` are swapped whole on reload."""

    config: Config
    store: DataDir
    bus: EventBus
    tracker: ProgressTracker
    publisher: PeerPublisher
    stats: Callable[[], dict[str, Any]] = dict  # the daemon's counters, for /api/v1/stats
    fleet: Fleet | None = None  # with the etcd store: every replica's machines (appliance/fleet)
    choices: ChoiceCache = field(default_factory=ChoiceCache)


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
    _warn_rejected(request, labels)
    return labels


def _warn_rejected(request: web.Request, labels: RequestLabels) -> None:
    for key, value in labels.rejected:
        logger.warning("%s %s: dropping label %s=%r: not a MAC address", request.remote, request.path, key, value)


def label_mac(labels: RequestLabels) -> MacAddress | None:
    for key, value in labels.labels.items():
        if key.lower() == "mac":
            return MacAddress(value)
    return None


def select(ctx: HttpContext, request: web.Request) -> Selection:
    """The group and profile matchbox would choose for this request."""
    return select_choice(ctx, request).selection


def select_choice(ctx: HttpContext, request: web.Request) -> Choice:
    """`select`, with what was rendered from it before (see ChoiceCache)."""
    choice = ctx.choices.choose(ctx.store, request.rel_url.raw_query_string)
    _warn_rejected(request, choice.selection.labels)
    return choice


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
