"""The host's network as bootd sees it: the kernel's neighbour table (IP -> MAC), through pyroute2.

pyroute2's synchronous `IPRoute` runs an event loop of its own and cannot be used inside bootd's loop, so
this uses `AsyncIPRoute`, opened once and kept for the daemon's life.
"""

from __future__ import annotations

import ipaddress
import logging

from appliance.mac import MacAddress, try_parse_mac

logger = logging.getLogger(__name__)


class NeighbourTable:
    def __init__(self) -> None:
        self._ipr = None
        self.failures = 0

    async def lookup(self, ip: str) -> MacAddress | None:
        """The MAC the kernel has for `ip` on any interface, or None (loopback, unknown, netlink failure)."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if address.is_loopback or address.is_unspecified:
            return None
        try:
            if self._ipr is None:
                from pyroute2 import AsyncIPRoute

                self._ipr = AsyncIPRoute()
                await self._ipr.setup_endpoint()
            async for neighbour in await self._ipr.get_neighbours(dst=str(address)):
                mac = try_parse_mac(neighbour.get("NDA_LLADDR") or "")
                if mac is not None and mac != "00:00:00:00:00:00":
                    return mac
        except Exception as exc:  # netlink is best effort: a failed lookup leaves the event without a MAC
            self.failures += 1
            logger.debug("neighbour lookup for %s failed: %r", ip, exc)
            await self.close()
        return None

    async def close(self) -> None:
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            try:
                ipr.close()
            except Exception as exc:  # closing a broken netlink socket: nothing left to do but note it
                logger.debug("closing the netlink socket failed: %r", exc)
