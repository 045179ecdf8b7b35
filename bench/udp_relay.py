"""A UDP relay that adds delay and/or loss between TFTP clients and a server, following TFTP's TIDs: the
relay's port stands for the server's port 69 until the server answers from a transfer port; after that the
client's packets go to that port. There is no `tc netem` on this kernel, so delay and loss happen here.

    python -m bench.udp_relay --listen 127.0.0.1:6969 --server 127.0.0.1:69 [--delay-ms 0.25] [--loss 0.1]

Used in-process by the tests (`UdpRelay`), which read the drop counts directly.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket


class UdpRelay:
    def __init__(self, listen: tuple[str, int], server: tuple[str, int], *, delay: float = 0.0, loss: float = 0.0,
                 seed: int = 1, drop_every: int = 0) -> None:
        """`loss`: drop each packet with that probability (seeded). `drop_every`: drop exactly every Nth packet
        in each direction instead: the same share of loss, but never two in a row for a flow that is alone,
        so a test's outcome does not hang on a rare run of losses (what the seeded draw gives depends on how
        the transfers' packets interleave, which depends on timing)."""
        self.listen, self.server = listen, server
        self.delay, self.loss, self.drop_every = delay, loss, drop_every
        self.random = random.Random(seed)
        self._count = {"to_server": 0, "to_client": 0}
        self.dropped = {"to_server": 0, "to_client": 0}
        self.forwarded = {"to_server": 0, "to_client": 0}
        self._front: socket.socket | None = None
        self._upstreams: dict[tuple[str, int], tuple[socket.socket, list]] = {}  # client -> (socket, [server TID])
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        assert self._front is not None
        return self._front.getsockname()[1]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(self.listen)
        self._front.setblocking(False)
        self._loop.add_reader(self._front.fileno(), self._from_client)

    def close(self) -> None:
        assert self._loop is not None
        for sock, _ in self._upstreams.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        if self._front is not None:
            self._loop.remove_reader(self._front.fileno())
            self._front.close()

    def _forward(self, direction: str, sock: socket.socket, data: bytes, target: tuple[str, int]) -> None:
        self._count[direction] += 1
        if (self.drop_every and self._count[direction] % self.drop_every == 0) or (
                self.loss and self.random.random() < self.loss):
            self.dropped[direction] += 1
            return
        self.forwarded[direction] += 1
        if self.delay:
            assert self._loop is not None
            self._loop.call_later(self.delay, self._send, sock, data, target)
        else:
            self._send(sock, data, target)

    @staticmethod
    def _send(sock: socket.socket, data: bytes, target: tuple[str, int]) -> None:
        try:
            sock.sendto(data, target)
        except OSError:
            pass  # the socket closed meanwhile: a relay drops, as a network would

    def _from_client(self) -> None:
        assert self._front is not None and self._loop is not None
        while True:
            try:
                data, client = self._front.recvfrom(65536)
            except BlockingIOError:
                return
            entry = self._upstreams.get(client)
            request = data[:2] in (b"\x00\x01", b"\x00\x02")
            # A new request starts a new TID pairing; the same request again is the client retransmitting it
            # (its first answer was lost or slow) and goes out from the same port, as it would on a network:
            # the server sees a duplicate, not a second client.
            if entry is None or (request and data != entry[1][1]):
                if entry is not None:
                    self._loop.remove_reader(entry[0].fileno())
                    entry[0].close()
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((self.server[0], 0))
                sock.setblocking(False)
                entry = (sock, [self.server, data if request else b""])
                self._upstreams[client] = entry
                self._loop.add_reader(sock.fileno(), self._from_server, client, entry)
            self._forward("to_server", entry[0], data, self.server if request else entry[1][0])

    def _from_server(self, client: tuple[str, int], entry: tuple[socket.socket, list]) -> None:
        assert self._front is not None
        while True:
            try:
                data, source = entry[0].recvfrom(65536)
            except (BlockingIOError, OSError):
                return
            entry[1][0] = source  # the server's transfer port (its TID)
            self._forward("to_client", self._front, data, client)


async def _main(args: argparse.Namespace) -> None:
    host, port = args.listen.rsplit(":", 1)
    server_host, server_port = args.server.rsplit(":", 1)
    relay = UdpRelay((host, int(port)), (server_host, int(server_port)), delay=args.delay_ms / 1000, loss=args.loss)
    relay.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    asyncio.run(_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
