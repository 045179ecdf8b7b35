"""GET /api/v1/events: the event bus as server-sent events, for the live views (/ui/, `bootd status --watch`).

Messages (each `id: N` with the bus's event id, data one line of JSON):
- `event: machine`: a step of a machine; data {"event": {...}, "machine": its row as in /api/v1/machines};
- `event: event`: a step without a machine (a write through the read-write API, an unattributed request);
- `event: resync`: the view missed events (it reconnected after the kept ones, or fell BACKLOG behind):
  it reloads /api/v1/machines; data {"last_event_id": N}.
A comment every HEARTBEAT_SECONDS keeps the connection and the view's liveness check awake. A view resumes
with `Last-Event-ID` (EventSource sends it when it reconnects) or `?since=N` (the list's `last_event_id`).

Bounds, so that no client (or many) can make bootd hold much:
- at most MAX_STREAMS streams, MAX_STREAMS_PER_PEER per client address: past the per-address cap a new stream
  gets 429; past the total, a new stream from an address holding fewer streams than the busiest address
  closes that address's oldest one (so a few addresses cannot keep the others out), else 503. (Clients with
  more than MAX_STREAMS addresses can keep closing each other's streams, a view's included: the page then
  reconnects and resumes from its last event id.);
- per stream: a backlog of at most BACKLOG events (references: the bus and the tracker keep the events
  anyway), plus the unsent bytes aiohttp buffers before it waits for the socket (its writer drains past
  64 KiB); a client that takes no bytes for WRITE_SECONDS is closed.
So the streams hold at most MAX_STREAMS x (BACKLOG references + about 128 KiB), under 9 MiB, whatever
clients do.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from appliance.events import Event, EventBus, EventStream
from appliance.http.common import CONTEXT, HttpContext

logger = logging.getLogger(__name__)

MAX_STREAMS = 64  # live views at once: an appliance has a few operators, not an audience
MAX_STREAMS_PER_PEER = 8  # a browser opens one per tab; above six tabs per host it queues them anyway
BACKLOG = 256  # events a stream may be behind before it is told to resync
HEARTBEAT_SECONDS = 15.0
WRITE_SECONDS = 10.0
MAX_EVENT_ID = 2**63  # a Last-Event-ID above any id the bus gives: the view's own invention
ENCODED_KEPT = 256  # messages kept encoded, so N views cost one serialisation per event


@dataclass(eq=False, slots=True)
class OpenStream:
    peer: str
    request: web.Request
    stream: EventStream
    reason: str | None = None  # why bootd closes it (set by `close`)

    def close(self, reason: str) -> None:
        """End the stream from outside its handler: wake the handler, which says why and returns."""
        self.reason = reason
        queue = self.stream.queue
        if queue.full():
            queue.get_nowait()
        queue.put_nowait((0, _CLOSE))

    @property
    def gone(self) -> bool:
        return self.request.transport is None or self.request.transport.is_closing()


_CLOSE = Event.__new__(Event)  # the wake-up for a stream being closed; never published


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    reason: str


@dataclass(slots=True)
class StreamSlots:
    """The open streams, oldest first, and who may open another (`admit`)."""

    max_streams: int = MAX_STREAMS
    max_per_peer: int = MAX_STREAMS_PER_PEER
    open: dict[OpenStream, None] = field(default_factory=dict)
    refused: Counter[int] = field(default_factory=Counter)
    closed_for_room: int = 0

    def admit(self, peer: str) -> OpenStream | Refused | None:
        """None: there is room; an OpenStream: room once that one is closed; Refused: no room."""
        for entry in [e for e in self.open if e.gone]:  # clients gone since their last heartbeat
            entry.close("client gone")
            del self.open[entry]
        per_peer = Counter(entry.peer for entry in self.open)
        if per_peer[peer] >= self.max_per_peer:
            return self._refuse(429, f"{self.max_per_peer} event streams are open from {peer}: close one first")
        if len(self.open) < self.max_streams:
            return None
        busiest, held = per_peer.most_common(1)[0]
        if held <= per_peer[peer]:
            return self._refuse(503, f"{self.max_streams} event streams are open (the cap): try again later")
        victim = next(entry for entry in self.open if entry.peer == busiest)
        del self.open[victim]
        self.closed_for_room += 1
        return victim

    def _refuse(self, status: int, reason: str) -> Refused:
        self.refused[status] += 1
        if sum(self.refused.values()) in (1, 10, 100, 1000) or sum(self.refused.values()) % 10000 == 0:
            logger.warning("events: refused a stream (%d so far): %s", sum(self.refused.values()), reason)
        return Refused(status, reason)

    def as_json(self) -> dict[str, object]:
        return {"open": len(self.open), "max": self.max_streams, "max_per_peer": self.max_per_peer,
                "refused": sum(self.refused.values()), "closed_for_room": self.closed_for_room}


STREAMS = web.AppKey("bootd_event_streams", StreamSlots)


def parse_since(request: web.Request) -> int | None | ValueError:
    """The id a view resumes after: Last-Event-ID (a reconnecting EventSource) or ?since=; None: from now."""
    text = request.headers.get("Last-Event-ID") or request.query.get("since")
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) >= MAX_EVENT_ID:
        return ValueError(f"{text[:40]!r} is not an event id (a whole number from this server)")
    return int(text)


def event_json(event: Event) -> dict[str, object]:
    return {"stage": event.kind.value, "mac": event.mac, "peer": event.peer, "detail": event.detail,
            "ok": event.ok, "time": event.time}


class Encoder:
    """Each event's message, built once for every stream (the machine's row as it is when first sent)."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self._kept: OrderedDict[int, bytes] = OrderedDict()

    def message(self, event_id: int, event: Event) -> bytes:
        data = self._kept.get(event_id)
        if data is None:
            data = self._encode(event_id, event)
            self._kept[event_id] = data
            if len(self._kept) > ENCODED_KEPT:
                self._kept.popitem(last=False)
        return data

    def _encode(self, event_id: int, event: Event) -> bytes:
        tracker = self.ctx.tracker
        progress = tracker.get(event.mac) if event.mac is not None else None
        if progress is None:
            return sse(event_id, "event", {"event": event_json(event)})
        row = progress.as_json(known=tracker.is_known(progress.mac))
        fleet = self.ctx.fleet
        if fleet is not None:  # which replica served the event and each of the row's steps
            return sse(event_id, "machine", {"event": {**event_json(event), "replica": fleet.replica_of(event)},
                                             "machine": fleet.row(progress, row)})
        return sse(event_id, "machine", {"event": event_json(event), "machine": row})


ENCODER = web.AppKey("bootd_event_encoder", Encoder)


def sse(event_id: int | None, name: str, data: object) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class ClientTooSlow(Exception):
    pass


async def write(response: web.StreamResponse, data: bytes) -> None:
    try:
        async with asyncio.timeout(WRITE_SECONDS):
            await response.write(data)
    except TimeoutError:
        raise ClientTooSlow from None


async def events(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    slots = request.app[STREAMS]
    since = parse_since(request)
    if isinstance(since, ValueError):
        return web.json_response({"error": str(since)}, status=400)
    peer = request.remote or "?"
    room = slots.admit(peer)
    if isinstance(room, Refused):
        return web.json_response({"error": room.reason}, status=room.status, headers={"Retry-After": "10"})
    if room is not None:
        room.close(f"{slots.max_streams} event streams are open (the cap): this one, the oldest of {room.peer}, "
                   "made room for another address")
    bus = ctx.bus
    # Subscribe and take the kept events with no await in between: the stream gets every id after the kept ones.
    entry = OpenStream(peer, request, bus.stream(BACKLOG))
    replay = bus.since(since) if since is not None else []
    slots.open[entry] = None
    encoder = request.app[ENCODER]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"})
    try:
        await response.prepare(request)
        await write(response, b"retry: 2000\n\n")  # EventSource's reconnect delay, in ms
        if replay is None:
            await write(response, sse(None, "resync", {"last_event_id": bus.last_id}))
        else:
            for event_id, event in replay:
                await write(response, encoder.message(event_id, event))
        await _follow(response, entry, encoder, bus)
    except ClientTooSlow:
        logger.debug("events: closed the stream to %s: it took nothing for %.0f s", peer, WRITE_SECONDS)
        if request.transport is not None:
            request.transport.close()
    except ConnectionResetError:
        logger.debug("events: the stream to %s ended: the client left", peer)
    finally:
        bus.unsubscribe(entry.stream)
        slots.open.pop(entry, None)
    return response


async def _follow(response: web.StreamResponse, entry: OpenStream, encoder: Encoder, bus: EventBus) -> None:
    stream = entry.stream
    while True:
        try:
            async with asyncio.timeout(HEARTBEAT_SECONDS):
                event_id, event = await stream.queue.get()
        except TimeoutError:
            await write(response, b": heartbeat\n\n")
            continue
        if event is _CLOSE:
            await write(response, sse(None, "closed", {"reason": entry.reason}))
            return
        if stream.behind:
            stream.catch_up()
            await write(response, sse(None, "resync", {"last_event_id": bus.last_id}))
            continue
        await write(response, encoder.message(event_id, event))


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end every stream, so stopping bootd does not wait for open views."""
    slots = app[STREAMS]
    for entry in list(slots.open):
        entry.close("bootd is stopping")
