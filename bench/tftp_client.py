"""A TFTP read client for the benchmark and the tests: N concurrent transfers with blksize, tsize and
windowsize (RFC 7440; no packaged command-line client does windowsize together with concurrency).

    python -m bench.tftp_client --server HOST:PORT --file NAME [--count N] [--blksize B] [--windowsize W]
                                [--tsize] [--timeout S] [--retries R] [--deadline S] [--stagger S]

Prints one JSON object: completed, failed, seconds, and per transfer the size, sha256, seconds and errors.
Each transfer learns the server's TID from its first answer and then only talks to it. On a gap it
acknowledges the last block it has in order (RFC 7440 §4); on silence it repeats its last packet.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import struct
import sys
import time

RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6


class TransferError(Exception):
    pass


async def fetch(server: tuple[str, int], name: str, *, blksize: int | None, windowsize: int | None, tsize: bool,
                timeout: float, retries: int) -> dict:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind(("", 0))
    options = {}
    if blksize:
        options["blksize"] = str(blksize)
    if windowsize:
        options["windowsize"] = str(windowsize)
    if tsize:
        options["tsize"] = "0"
    request = struct.pack("!H", RRQ) + f"{name}\0octet\0".encode() + b"".join(
        f"{k}\0{v}\0".encode() for k, v in options.items())
    started = time.perf_counter()
    peer: tuple[str, int] | None = None
    size, window = 512, 1
    expected = 1  # the next block wanted, counted from 1 without wrapping
    received = bytearray()
    finished = 0.0
    last_packet, last_target = request, server
    tries = 0
    since_ack = 0
    acks = 0
    announced_size = None
    try:
        sock.sendto(request, server)
        while True:
            try:
                data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), timeout)
            except TimeoutError:
                tries += 1
                if tries > retries:
                    raise TransferError(f"timed out after {retries} retries at block {expected}") from None
                sock.sendto(last_packet, last_target)
                continue
            if peer is None:
                if source[0] != server[0]:
                    continue
                peer = source
            elif source != peer:
                continue  # another TID: not ours
            tries = 0
            opcode = int.from_bytes(data[:2], "big")
            if opcode == ERROR:
                message = data[4:].split(b"\0")[0].decode(errors="replace")
                raise TransferError(f"error {int.from_bytes(data[2:4], 'big')}: {message}")
            if opcode == OACK:
                fields = data[2:].split(b"\0")[:-1]
                accepted = {fields[i].decode().lower(): fields[i + 1].decode() for i in range(0, len(fields) - 1, 2)}
                size = int(accepted.get("blksize", 512))
                window = int(accepted.get("windowsize", 1))
                announced_size = int(accepted["tsize"]) if "tsize" in accepted else None
                last_packet, last_target = struct.pack("!HH", ACK, 0), peer
                sock.sendto(last_packet, peer)
                continue
            if opcode != DATA:
                continue
            block = int.from_bytes(data[2:4], "big")
            payload = data[4:]
            if block == expected & 0xFFFF:
                received += payload
                expected += 1
                since_ack += 1
                final = len(payload) < size
                if final or since_ack >= window:
                    last_packet, last_target = struct.pack("!HH", ACK, (expected - 1) & 0xFFFF), peer
                    sock.sendto(last_packet, peer)
                    acks += 1
                    since_ack = 0
                if final:
                    finished = time.perf_counter()
                    await _dally(loop, sock, peer, last_packet, timeout)  # not counted in the time
                    break
            elif since_ack or block != (expected - 1) & 0xFFFF:
                # a gap (or a window resent after our ACK was lost): say what we have, once
                last_packet, last_target = struct.pack("!HH", ACK, (expected - 1) & 0xFFFF), peer
                sock.sendto(last_packet, peer)
                acks += 1
                since_ack = 0
        if announced_size is not None and announced_size != len(received):
            raise TransferError(f"tsize said {announced_size}, got {len(received)} bytes")
        return {"ok": True, "bytes": len(received), "sha256": hashlib.sha256(received).hexdigest(),
                "seconds": finished - started, "finished": finished, "blksize": size, "windowsize": window,
                "acks": acks}
    except TransferError as exc:
        return {"ok": False, "error": str(exc), "bytes": len(received), "seconds": time.perf_counter() - started}
    finally:
        sock.close()


async def _dally(loop: asyncio.AbstractEventLoop, sock: socket.socket, peer: tuple[str, int], ack: bytes,
                 timeout: float) -> None:
    """RFC 1350 §6: after the last block, stay a while and acknowledge it again if it comes again (our ACK
    was lost and the server is retransmitting)."""
    deadline = loop.time() + max(2 * timeout, 3.0)  # servers retransmit after a second or more
    while (left := deadline - loop.time()) > 0:
        try:
            data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), left)
        except TimeoutError:
            return
        if source == peer and data[:2] == b"\x00\x03":
            sock.sendto(ack, peer)


async def run(args: argparse.Namespace) -> dict:
    host, port = args.server.rsplit(":", 1)
    server = (host, int(port))

    async def one(i: int) -> dict:
        await asyncio.sleep(i * args.stagger)
        return await fetch(server, args.file, blksize=args.blksize, windowsize=args.windowsize, tsize=args.tsize,
                           timeout=args.timeout, retries=args.retries)

    started = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.count))), args.deadline)
    ends = [r.pop("finished") for r in results if "finished" in r]
    return {"completed": sum(r["ok"] for r in results), "failed": sum(not r["ok"] for r in results),
            "seconds": (max(ends) if ends else time.perf_counter()) - started, "transfers": results}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--blksize", type=int)
    parser.add_argument("--windowsize", type=int)
    parser.add_argument("--tsize", action="store_true")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--retries", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--stagger", type=float, default=0.0)
    args = parser.parse_args()
    json.dump(asyncio.run(run(args)), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
