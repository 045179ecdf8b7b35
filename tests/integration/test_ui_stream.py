"""/api/v1/events and /ui/ through real sockets: resuming from Last-Event-ID, resync, the heartbeat, the
caps, garbage, and a client that opens 1,000 streams and never reads them while another keeps its updates
and bootd's memory stays within its bound.

Machines are played by HTTP requests with `mac=` labels (iPXE's /ipxe?mac=...)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from appliance.config import load_config
from appliance.daemon import build_store
from appliance.events import EventBus, PeerPublisher, ProgressTracker, track_and_log
from appliance.http import HttpContext, make_app, stream
from tests.bootd_process import BootdProcess
from tests.integration.test_http import write

CONFIG = "http:\n  address: 127.0.0.1\n  port: 0\n  data_dir: {data}\nmachines:\n  - {{name: node1, mac: \"{mac}\"}}\n"
NODE1 = "52:54:00:e0:00:01"


def data_dir(root: Path) -> Path:
    data = root / "data"
    write(data / "profiles/p.json", {"id": "p", "boot": {"kernel": "/assets/vmlinuz"}})
    write(data / "groups/default.json", {"id": "default", "profile": "p"})
    return data


@pytest.fixture
def bootd(tmp_path):
    (tmp_path / "bootd.yaml").write_text(CONFIG.format(data=data_dir(tmp_path), mac=NODE1))
    server = BootdProcess(tmp_path / "bootd.yaml").start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def shared_bootd(tmp_path_factory):
    """One daemon for the tests that only read and are refused (each starting its own would cost a second)."""
    root = tmp_path_factory.mktemp("ui-stream")
    (root / "bootd.yaml").write_text(CONFIG.format(data=data_dir(root), mac=NODE1))
    server = BootdProcess(root / "bootd.yaml").start()
    yield server
    assert server.stop() == 0


def mac(n: int) -> str:
    return f"52:54:00:e1:{n >> 8 & 0xff:02x}:{n & 0xff:02x}"


async def boot_step(session: aiohttp.ClientSession, server: BootdProcess, machine: str) -> None:
    async with session.get(server.url(f"/ipxe?mac={machine}")) as response:
        assert response.status == 200


class Messages:
    """A server-sent-events reader: (event name, id, data) as they come."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, timeout: float = 10) -> tuple[str, str | None, dict]:
        name, event_id, data = "message", None, ""
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.response.content.readline()).decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif line == "" and data:
                    return name, event_id, json.loads(data)
                elif line == "" and self.response.content.at_eof():
                    raise EOFError("the stream ended")

    async def until(self, name: str, timeout: float = 10, **match: str) -> tuple[str | None, dict]:
        """The next message named `name` whose machine's fields equal `match`."""
        async with asyncio.timeout(timeout):
            while True:
                got, event_id, data = await self.next(timeout)
                if got == name and all(data.get("machine", {}).get(k) == v for k, v in match.items()):
                    return event_id, data


async def test_a_view_resumes_after_its_last_event_id_and_is_told_to_resync_when_it_cannot(bootd):
    async with aiohttp.ClientSession() as session:
        for n in range(3):
            await boot_step(session, bootd, mac(n))
        async with session.get(bootd.url("/api/v1/machines")) as response:
            listing = await response.json()
        last = listing["last_event_id"]
        assert last >= 3
        async with session.get(bootd.url("/api/v1/events"), headers={"Last-Event-ID": str(last - 2)}) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
            messages = Messages(response)
            replayed = [await messages.next() for _ in range(2)]
            assert [int(i) for _, i, _ in replayed] == [last - 1, last]
            assert [d["machine"]["mac"] for _, _, d in replayed] == [mac(1), mac(2)]
            assert replayed[1][2]["machine"]["stage"] == "boot-config"
            # then live: the next step comes with the machine's row as the list shows it
            await boot_step(session, bootd, NODE1)
            event_id, data = await messages.until("machine", mac=NODE1)
            assert int(event_id) == last + 1
            assert data["machine"]["name"] == "node1" and data["machine"]["group"] == "default"
            assert data["event"]["stage"] == "boot-config" and data["event"]["ok"] is True
        # an id this run of bootd never gave (a page left open across a restart): start again from the list
        async with session.get(bootd.url("/api/v1/events?since=99999")) as response:
            name, _, data = await Messages(response).next()
            assert name == "resync" and data == {"last_event_id": last + 1}


@pytest.mark.parametrize("headers, query", [
    pytest.param({"Last-Event-ID": "abc"}, "", id="not-a-number"),
    pytest.param({"Last-Event-ID": "-1"}, "", id="negative"),
    pytest.param({"Last-Event-ID": "9" * 40}, "", id="huge"),
    pytest.param({}, "?since=1e5", id="since-float"),
    pytest.param({}, "?since=%00%ff", id="since-bytes"),
    pytest.param({"Last-Event-ID": "\u0661"}, "", id="arabic-digit"),
])
async def test_a_bad_event_id_is_a_400(shared_bootd, headers, query):
    async with aiohttp.ClientSession() as session:
        async with session.get(shared_bootd.url("/api/v1/events" + query), headers=headers) as response:
            assert response.status == 400 and "is not an event id" in (await response.json())["error"]


@pytest.mark.parametrize("method, path, status", [
    pytest.param("POST", "/api/v1/events", 405, id="post-events"),
    pytest.param("GET", "/ui", 301, id="ui-without-slash"),
    pytest.param("GET", "/ui/../../etc/passwd", 404, id="traversal"),
    pytest.param("GET", "/ui/%2e%2e%2fbootd.yaml", 404, id="encoded-traversal"),
    pytest.param("GET", "/ui/app.js/x", 404, id="below-a-file"),
    pytest.param("GET", "/ui/__init__.py", 404, id="package-file"),
    pytest.param("GET", "/ui/" + "a" * 5000, 404, id="long-name"),
    pytest.param("DELETE", "/ui/", 405, id="delete-page"),
])
def test_garbage_to_the_page_and_the_stream_gets_4xx(shared_bootd, method, path, status):
    with socket.create_connection(("127.0.0.1", int(shared_bootd.base_url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(4096).decode("latin-1")
    assert head.startswith(f"HTTP/1.1 {status} "), head


async def test_the_page_is_shipped_whole_and_may_run_only_its_own_script(shared_bootd):
    bootd = shared_bootd
    async with aiohttp.ClientSession() as session:
        async with session.get(bootd.url("/ui/")) as response:
            page = await response.text()
            csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        for asset in ("/ui/app.js", "/ui/style.css"):
            assert asset in page
            async with session.get(bootd.url(asset)) as response:
                assert response.status == 200 and response.headers["X-Content-Type-Options"] == "nosniff"
                body = await response.text()
                assert "innerHTML" not in body and "http://" not in body and "https://" not in body


async def test_past_eight_streams_from_one_address_a_clear_429_and_stopping_bootd_ends_every_stream(bootd):
    async with aiohttp.ClientSession() as session:
        opened = [await session.get(bootd.url("/api/v1/events")) for _ in range(stream.MAX_STREAMS_PER_PEER)]
        assert all(r.status == 200 for r in opened)
        async with session.get(bootd.url("/api/v1/events")) as refused:
            assert refused.status == 429 and refused.headers["Retry-After"] == "10"
            assert (await refused.json())["error"] == "8 event streams are open from 127.0.0.1: close one first"
        opened[0].close()  # one view leaves: its place is free again
        async with session.get(bootd.url("/ui/")) as response:  # one more request: bootd sees the close
            assert response.status == 200
        again = await session.get(bootd.url("/api/v1/events"))
        assert again.status == 200
        bootd.send(__import__("signal").SIGTERM)
        name, _, data = await Messages(again).next()
        assert name == "closed" and data == {"reason": "bootd is stopping"}
        for response in opened[1:] + [again]:
            response.close()
    bootd.proc.wait(30)  # the SIGTERM above: stop() must not send a second one while bootd drains
    assert bootd.stop() == 0


BIG_REPORT = {"note": "y" * 4000}  # kept whole (4 KiB): every message carrying its machine's row is that big


@contextlib.asynccontextmanager
async def own_app(tmp_path: Path):
    """bootd's HTTP app in this process on a real socket, so a test can shorten its intervals: (app, port)."""
    (tmp_path / "bootd.yaml").write_text(CONFIG.format(data=data_dir(tmp_path), mac=NODE1))
    config = load_config(tmp_path / "bootd.yaml")
    bus, tracker = EventBus(), ProgressTracker()
    bus.add_sink(track_and_log(tracker))
    context = HttpContext(config=config, store=build_store(config), bus=bus, tracker=tracker,
                          publisher=PeerPublisher(bus, tracker))
    app = make_app(context)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield app, runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_heartbeat_comments_keep_an_idle_stream_alive(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "HEARTBEAT_SECONDS", 0.05)  # 15 s in bootd
    async with own_app(tmp_path) as (_, port), aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/api/v1/events") as response:
            assert await response.content.readline() == b"retry: 2000\n"
            assert await response.content.readline() == b"\n"
            async with asyncio.timeout(10):
                assert await response.content.readline() == b": heartbeat\n"


async def test_a_client_that_takes_nothing_is_closed_and_its_place_freed(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "WRITE_SECONDS", 0.5)  # 10 s in bootd
    async with own_app(tmp_path) as (app, port), aiohttp.ClientSession() as session:
        hog = socket.socket()
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        hog.connect(("127.0.0.1", port))
        hog.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        slots = app[stream.STREAMS]
        async with asyncio.timeout(10):
            while len(slots.open) != 1:
                await asyncio.sleep(0.01)
        # steps whose rows are large (a 4 KiB report each): the hog's buffers fill, bootd's write waits
        n = 0
        async with asyncio.timeout(30):
            while slots.open:
                async with session.post(f"http://127.0.0.1:{port}/api/v1/machines/{mac(n % 50)}/report",
                                        json=BIG_REPORT) as response:
                    assert response.status == 200
                n += 1
        hog.setblocking(False)
        received = b""
        with contextlib.suppress(BlockingIOError, ConnectionResetError):
            while chunk := hog.recv(1 << 20):
                received += chunk
        hog.close()
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert app[stream.STREAMS].as_json()["open"] == 0


async def test_a_view_that_falls_behind_its_backlog_is_told_to_resync(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "BACKLOG", 4)  # 256 in bootd
    async with own_app(tmp_path) as (app, port), aiohttp.ClientSession() as session:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        slots = app[stream.STREAMS]
        async with asyncio.timeout(10):
            while len(slots.open) != 1:
                await asyncio.sleep(0.01)
        [entry] = slots.open
        n = 0
        async with asyncio.timeout(30):
            while not entry.stream.behind:  # steps until its buffers are full and 4 more wait
                async with session.post(f"http://127.0.0.1:{port}/api/v1/machines/{mac(n % 50)}/report",
                                        json=BIG_REPORT) as response:
                    assert response.status == 200
                n += 1
        assert entry.stream.queue.qsize() == 4  # never more than its backlog
        received = b""
        slow.settimeout(10)
        while b"event: resync\n" not in received:  # it reads again: bootd says start again from the list
            chunk = await asyncio.to_thread(slow.recv, 1 << 16)
            assert chunk, "closed before the resync"
            received += chunk
        slow.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


RSS_GROWTH_BOUND_MIB = 32  # streams (64 x ~130 KiB), the kept events (<= 5.3 MiB), 1,000 connections come and gone


async def test_a_thousand_streams_never_read_and_garbage_leave_another_view_its_updates(bootd):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    port = int(bootd.base_url.rsplit(":", 1)[1])
    pid = bootd.proc.pid
    async with aiohttp.ClientSession() as session:
        for n in range(20):  # the page's usual load first: a baseline with every code path warm
            await boot_step(session, bootd, mac(n))
    before = rss_kib(pid)

    # 1,000 streams from 125 addresses (8 each: their share), each reading its status line and nothing more,
    # with a small receive buffer so that bootd's writes to them back up quickly
    hogs: list[socket.socket] = []
    statuses: dict[str, int] = {}
    for n in range(1000):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.bind((f"127.0.1.{n // 8 + 1}", 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        status = sock.recv(12).decode()[9:12]
        statuses[status] = statuses.get(status, 0) + 1
        hogs.append(sock)
    assert sum(statuses.values()) == 1000 and set(statuses) <= {"200", "503"}, statuses

    # garbage alongside: random bytes, bad ids, traversal, a header flood
    rng = random.Random(15)
    for n in range(300):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            kind = n % 4
            if kind == 0:
                sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600))))
            elif kind == 1:
                sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {rng.random()}\r\n\r\n".encode())
            elif kind == 2:
                sock.sendall(f"GET /ui/{'../' * rng.randrange(1, 50)}etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            else:
                sock.sendall(b"GET /api/v1/events HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n")
            sock.settimeout(10)
            try:
                answer = sock.recv(64)
            except (ConnectionResetError, TimeoutError):
                answer = b""
            assert answer == b"" or answer[9:10] == b"4", answer  # a 4xx, or closed

    # the other view: gets in (the busiest address's oldest stream makes room) and sees every step
    async with aiohttp.ClientSession() as session:
        async with session.get(bootd.url("/api/v1/events")) as response:
            assert response.status == 200
            messages = Messages(response)
            for n in range(300):  # traffic: each step is a message every stream is offered
                await boot_step(session, bootd, mac(1000 + n))
                await messages.until("machine", mac=mac(1000 + n))
            peak = rss_kib(pid)
    for sock in hogs:
        sock.close()
    growth_mib = (peak - before) / 1024
    print(f"streams answered: {statuses}; bootd RSS {before / 1024:.1f} -> {peak / 1024:.1f} MiB "
          f"(+{growth_mib:.1f} MiB)")
    assert growth_mib < RSS_GROWTH_BOUND_MIB
    assert bootd.stop() == 0  # and no traceback in its log
