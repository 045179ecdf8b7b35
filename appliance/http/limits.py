"""What HTTP clients can hold: descriptors and connections.

Every open connection is a descriptor, and a client may open thousands and send nothing (or a byte a
second). Two limits keep bootd answering fresh clients:
- at start the soft RLIMIT_NOFILE is raised to the hard one (systemd's default soft limit is 1024, the hard
  one 524288), so a flood reaches the connection cap long before accept() fails with EMFILE;
- at most `max_connections` HTTP connections are kept: past it, each new connection closes the oldest one
  that is not in a request (waiting for a request, or sending its headers slowly). A connection that never
  completes a request is closed by aiohttp after the keep-alive timeout anyway (KEEPALIVE_SECONDS).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)

# Seconds a connection may wait for (or send) its next request's headers: iPXE fetches its kernel and
# initrd back to back, well within it.
KEEPALIVE_SECONDS = 15.0
MAX_CONNECTIONS = 4096
FALLBACK_NOFILE = 65536  # when the hard limit is "unlimited", which setrlimit refuses as a soft limit


def raise_open_file_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, FALLBACK_NOFILE)
    if wanted <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, wanted, exc)
        return soft, soft
    return soft, wanted


def connection_cap(open_file_limit: int) -> int:
    """HTTP connections kept at once: a quarter of the descriptors at most. The rest: connections accepted
    in one burst before the cap closes others (up to the listen backlog, 128), those closing, DNS over TCP,
    TFTP transfers, files being sent and the API."""
    return max(16, min(MAX_CONNECTIONS, open_file_limit // 4))


@dataclass
class ConnectionStats:
    max_connections: int
    open: int = 0
    closed_idle: int = 0  # closed to make room for a new connection
    malformed: int = 0  # requests aiohttp could not parse (answered 400 before any route saw them)

    def as_json(self) -> dict[str, int]:
        return {"max_connections": self.max_connections, "open": self.open, "closed_idle": self.closed_idle,
                "malformed": self.malformed}


def in_request(handler: RequestHandler) -> bool:
    # aiohttp marks a connection whose request is being handled (its response being sent included).
    return bool(getattr(handler, "_request_in_progress", False))


class ConnectionCap:
    """The open connections, oldest first; past `max_connections`, a new one closes the oldest idle one."""

    def __init__(self, max_connections: int) -> None:
        self.stats = ConnectionStats(max_connections)
        self._open: dict[RequestHandler, None] = {}  # insertion-ordered: oldest first

    def opened(self, handler: RequestHandler) -> None:
        if len(self._open) >= self.stats.max_connections:
            victim = next((h for h in self._open if not in_request(h)), None)
            if victim is not None:  # every one in a request: the new one is let in over the cap
                del self._open[victim]
                victim.force_close()
                self.stats.closed_idle += 1
                if self.stats.closed_idle in (1, 10, 100, 1000) or self.stats.closed_idle % 10000 == 0:
                    logger.warning("http: %d connections open (the cap): closed the oldest idle one (%d so far)",
                                   len(self._open) + 1, self.stats.closed_idle)
        self._open[handler] = None
        self.stats.open = len(self._open)

    def lost(self, handler: RequestHandler) -> None:
        self._open.pop(handler, None)
        self.stats.open = len(self._open)


class CappedRequestHandler(RequestHandler):
    """aiohttp's connection, counted in and out of its site's cap."""

    __slots__ = ("_cap",)

    def __init__(self, cap: ConnectionCap, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._cap.opened(self)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cap.lost(self)
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):  # the parser's; a handler's own errors reach the app's middleware
            self._cap.stats.malformed += 1
        return super().handle_error(request, status, exc, message)


class CappedTCPSite(web.TCPSite):
    """aiohttp's TCPSite whose connections are CappedRequestHandlers."""

    def __init__(self, runner: web.AppRunner, host: str | None, port: int, *, max_connections: int,
                 reuse_address: bool = True) -> None:
        super().__init__(runner, host, port, reuse_address=reuse_address)
        self.cap = ConnectionCap(max_connections)

    @property
    def stats(self) -> ConnectionStats:
        return self.cap.stats

    async def start(self) -> None:
        # TCPSite.start with our protocol factory (aiohttp has no hook for the handler class; Server.__call__
        # builds a RequestHandler from the same loop and keyword arguments).
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def connection() -> RequestHandler:
            return CappedRequestHandler(self.cap, server, loop=server._loop, **server._kwargs)

        self._server = await asyncio.get_running_loop().create_server(
            connection, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address,
            reuse_port=self._reuse_port)
