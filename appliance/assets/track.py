"""The daemon's background tracker (`assets: {track: [...], check: daily}`): at start and then every
`check` interval, each tracked channel is fetched as `bootd assets fetch` would (a new version is downloaded
and verified, then the channel pointer moves), and the outcome is published as an `assets` event (the
progress views, the log, /metrics). A check that fails changes nothing served; the event says which file
failed and why, and the next check tries again (resuming a kept download).

One check at a time; a reload wakes the tracker so a changed `assets:` section is used at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from appliance.assets.fetch import FetchFailed, FetchRequest, fetch_release
from appliance.assets.sources import OsName
from appliance.assets.store import AssetStore
from appliance.config import AssetsConfig, TrackedChannel
from appliance.events import Event, EventBus, EventKind

logger = logging.getLogger(__name__)


def request_for(tracked: TrackedChannel) -> FetchRequest:
    return FetchRequest(os=OsName(tracked.os), channel=tracked.channel, arch=tracked.arch, mirror=tracked.mirror,
                        install=tracked.install, keyring=tracked.keyring)


class AssetTracker:
    def __init__(self, settings: Callable[[], tuple[AssetsConfig, Path]], bus: EventBus) -> None:
        """`settings()` gives the running config's assets section and assets root (read at every check, so
        a reload counts)."""
        self.settings = settings
        self.bus = bus
        self._wake = asyncio.Event()
        self.checks = 0
        self.switches = 0
        self.failures = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()  # a reload during the checks below wakes the next round at once
            assets, root = self.settings()
            for tracked in assets.track:
                await self.check(tracked, root)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=assets.check_seconds if assets.track else None)
            except TimeoutError:
                pass

    async def check(self, tracked: TrackedChannel, root: Path) -> None:
        request = request_for(tracked)
        store = AssetStore(root)
        self.checks += 1
        try:
            outcome = await fetch_release(store, request, say=lambda line: logger.debug("assets: %s", line))
        except FetchFailed as exc:
            self.failures += 1
            serving = store.pointer(request.os, request.arch, request.channel)
            self._publish(f"{request.label}: check failed: {exc}; still serving {serving or 'nothing'}", ok=False)
            return
        except Exception as exc:  # the tracker's one broad guard: a bug of ours must not stop the daemon
            self.failures += 1
            logger.exception("assets: checking %s failed", request.label)
            self._publish(f"{request.label}: check failed: internal error {type(exc).__name__}", ok=False)
            return
        version = outcome.release.version
        if outcome.switched:
            self.switches += 1
            self._publish(f"{request.label}: switched to {version} (was {outcome.previous or 'nothing'}), "
                          f"verified by key {outcome.signer}")
        else:
            self._publish(f"{request.label}: {version} is current")

    def _publish(self, detail: str, *, ok: bool = True) -> None:
        self.bus.publish(Event(kind=EventKind.ASSETS, mac=None, peer=None, detail=detail, ok=ok))
