"""The lab's bootd, reachable from the host's own browser: a TCP forwarder from a host loopback port into the
lab's network namespace.

    python -m appliance.lab.forward --fd N --netns bootd-lab --to 10.77.0.1:8080

`bootd lab up` binds the listening socket in the host's namespace and passes it as fd N; this process then
enters the lab's namespace, so every connection it opens to bootd starts there. Nothing is added to the
host's interfaces or routes: the only thing in the host's namespace is a socket on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import socket

CLONE_NEWNET = 0x40000000
MAX_CONNECTIONS = 256  # a browser opens a handful; past it new ones are closed at once
CHUNK = 64 * 1024


def enter_namespace(name: str) -> None:
    """setns(2) into /run/netns/NAME, as `ip netns exec` does (os.setns arrives with Python 3.12)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()  # a slow reader on one side holds the other: at most CHUNK buffered each way
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(listener: socket.socket, host: str, port: int) -> None:
    open_connections = 0

    async def connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        if open_connections >= MAX_CONNECTIONS:
            client_writer.close()
            return
        open_connections += 1
        try:
            try:
                bootd_reader, bootd_writer = await asyncio.open_connection(host, port)
            except OSError:
                client_writer.close()
                return
            await asyncio.gather(pipe(client_reader, bootd_writer), pipe(bootd_reader, client_writer))
        finally:
            open_connections -= 1

    server = await asyncio.start_server(connection, sock=listener)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket, bound in the host's namespace")
    parser.add_argument("--netns", required=True)
    parser.add_argument("--to", required=True, help="HOST:PORT of bootd inside the namespace")
    args = parser.parse_args()
    listener = socket.socket(fileno=args.fd)
    enter_namespace(args.netns)
    host, port = args.to.rsplit(":", 1)
    try:
        asyncio.run(serve(listener, host, int(port)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
