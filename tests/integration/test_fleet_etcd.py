"""The fleet view through real sockets: two bootd daemons on loopback sharing one real etcd (store: backend
etcd), each serving some steps of the same machine. Both show one row with every step in time order and the
replica that served each; `bootd status --endpoint` on either shows it; the live stream of one delivers the
other's step; with etcd stopped the views keep serving and say they are stale, and the steps taken meanwhile
reach the other replica once etcd is back.

Machines are played by HTTP requests with `mac=` labels (iPXE's /boot.ipxe?mac=...) and reports (the
booted system's POST /api/v1/machines/{mac}/report): steps that need no profile, so nothing here depends
on what the store holds."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.bootd_process import BootdProcess
from tests.cdp import Browser
from tests.etcd_cluster import etcd_cluster  # noqa: F401 - the fixture
from tests.integration.test_http import write

NODE1, NODE2, NODE3 = "52:54:00:f1:ee:01", "52:54:00:f1:ee:02", "52:54:00:f1:ee:03"
WAIT = 20.0  # seconds a replica has to see what another wrote: a bound for a loaded machine, not a pace


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replica_config(root: Path, name: str, endpoints: list[str]) -> Path:
    data = root / name / "data"
    write(data / "groups/.keep", b"")
    (root / name / "state").mkdir(parents=True, exist_ok=True)
    config = root / name / "bootd.yaml"
    config.write_text(
        f"state_dir: {root / name / 'state'}\n"
        f"http:\n  address: 127.0.0.1\n  port: {free_port()}\n  data_dir: {data}\n"
        f"store:\n  backend: etcd\n  endpoints: [{', '.join(endpoints)}]\n  prefix: /fleet-test\n  replica: {name}\n"
        f"machines:\n  - {{name: node1, mac: \"{NODE1}\"}}\n")
    return config


@pytest.fixture
def fleet(tmp_path, etcd_cluster):  # noqa: F811
    cluster = etcd_cluster(size=1)
    servers = [BootdProcess(replica_config(tmp_path, name, cluster.endpoints)) for name in ("a", "b")]
    try:
        with ThreadPoolExecutor(2) as pool:  # both start at once: half the wait
            list(pool.map(BootdProcess.start, servers))
        yield cluster, servers[0], servers[1]
    finally:
        for server in servers:
            if server.proc is not None:
                assert server.stop() == 0


def get_json(server: BootdProcess, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(server.url(path), timeout=10) as response:
        return json.loads(response.read())


def request(server: BootdProcess, path: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(server.url(path), data=data), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(server: BootdProcess, path: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first answer of GET path that passes `check` (the other replica's write travels through etcd)."""
    deadline = time.monotonic() + WAIT
    while True:
        answer = get_json(server, path)
        if check(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{server.url(path)} never passed the check; last answer:\n"
                                 f"{json.dumps(answer, indent=1)[:4000]}")
        time.sleep(0.05)


def row(listing: dict[str, Any], mac: str) -> dict[str, Any] | None:
    return next((m for m in listing["machines"] if m["mac"] == mac), None)


def stages(machine: dict[str, Any] | None) -> list[tuple[str, str | None]]:
    return [(s["stage"], s.get("replica")) for s in (machine or {}).get("stages", [])]


def replica_of(server: BootdProcess) -> str:
    return get_json(server, "/api/v1/machines")["fleet"]["replica"]


def status(server: BootdProcess) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "status", "--endpoint", server.base_url],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_machine_served_by_two_replicas_is_one_row_on_both_with_the_replica_of_each_step(fleet):
    _, a, b = fleet
    name_a, name_b = replica_of(a), replica_of(b)
    assert (name_a, name_b) == ("a", "b")  # store.replica
    # b's live stream, open before a serves anything
    stream = urllib.request.urlopen(b.url(f"/api/v1/events?since={get_json(b, '/api/v1/machines')['last_event_id']}"),
                                    timeout=WAIT)

    assert request(a, f"/boot.ipxe?mac={NODE1}") == 200  # iPXE's first script, at a
    both = [("boot-script", name_a), ("report", name_b)]
    # b's stream delivers a's step, with the row as b has it
    message = read_machine_message(stream, lambda m: m["event"]["mac"] == NODE1)
    stream.close()
    assert message["event"]["stage"] == "boot-script" and message["event"]["replica"] == name_a
    assert stages(message["machine"]) == [("boot-script", name_a)]

    report = json.dumps({"ignition_sha256": "ab" * 32}).encode()
    assert request(b, f"/api/v1/machines/{NODE1}/report", report) == 200  # the booted system reports, to b
    for server in (a, b):
        listing = wait_for(server, "/api/v1/machines", lambda li: stages(row(li, NODE1)) == both)
        assert [m["mac"] for m in listing["machines"]] == [NODE1]  # one row, not one per replica
        machine = row(listing, NODE1)
        assert machine["name"] == "node1" and machine["stage"] == "report" and machine["report"] == \
            {"ignition_sha256": "ab" * 32}
        assert machine["replicas"] == sorted([name_a, name_b], key=lambda n: (n != listing["fleet"]["replica"], n))
        assert listing["fleet"]["stale"] is False and listing["fleet"]["replicas"] == sorted([name_a, name_b])
        times = [s["time"] for s in machine["stages"]]
        assert times == sorted(times)
        detail = get_json(server, f"/api/v1/machines/{NODE1}")
        assert [(e["stage"], e["replica"]) for e in detail["events"]] == both

    fed = get_json(b, "/api/v1/stats")["fleet"]
    assert fed["events_fed"] == 1 and fed["records_invalid"] == 0 and fed["writes"] >= 1  # a's step; b's report

    shown = status(b)
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.startswith("node1"))
    assert NODE1 in line and f"report@{name_b}" in line
    assert f"fleet: replicas {', '.join(sorted([name_a, name_b]))} (this is {name_b})" in shown.stdout.splitlines()


def read_machine_message(stream, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first `event: machine` message of an SSE stream whose data passes `wanted`."""
    name, data = None, ""
    for raw in stream:  # the socket's timeout (WAIT) bounds each line; heartbeats come every 15 s
        line = raw.decode().rstrip("\n")
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "":
            if name == "machine" and wanted(parsed := json.loads(data)):
                return parsed
            name, data = None, ""
    raise AssertionError("the stream ended")


def cell(mac: str, name: str) -> str:
    """JS: the text of a cell of `mac`'s row on /ui/."""
    return f"(document.querySelector('tr[data-mac=\"{mac}\"] td.{name}') || {{}}).textContent"


FLEET_NOTE = "document.getElementById('fleet').textContent"


def test_with_etcd_stopped_the_views_serve_and_say_stale_and_writes_resume_after(fleet):
    cluster, a, b = fleet
    name_a = replica_of(a)
    browser = Browser().start()  # b's /ui/, on loopback
    try:
        page = browser.new_page()
        page.goto(b.url("/ui/"))
        page.wait_for("document.getElementById('connection').textContent === 'live'", within=WAIT)
        assert request(a, f"/boot.ipxe?mac={NODE2}") == 200
        # a's first record: b hears of a new replica and tells its views to reload the list
        page.wait_for(f"{FLEET_NOTE} === 'fleet: a, b (this is b)'", within=WAIT)
        page.wait_for(f"{cell(NODE2, 'stage')} === 'boot-script@a'", within=WAIT)  # a's step, live on b's page
        page.evaluate(f"document.querySelector('tr[data-mac=\"{NODE2}\"]').click()")  # its timeline
        page.wait_for("document.querySelector('#timeline-stages tbody tr td.replica')?.textContent === 'a'",
                      within=WAIT)
        assert page.evaluate("document.getElementById('timeline-replica').hidden") is False

        cluster.stop_all()
        # the page is told to reload the list, which says the view is stale; the row stays
        page.wait_for(f"{FLEET_NOTE}.startsWith('fleet view stale since ')", within=WAIT)
        assert "showing what b has" in page.evaluate(FLEET_NOTE)
        assert page.evaluate(f"{cell(NODE2, 'stage')}") == "boot-script@a"
        for server in (a, b):
            listing = wait_for(server, "/api/v1/machines", lambda li: li["fleet"]["stale"])
            assert stages(row(listing, NODE2)) == [("boot-script", name_a)]  # what it has, still served
            assert listing["fleet"]["stale_since"] is not None and listing["fleet"]["stale_reason"]
        status_then_recovery(cluster, a, b, name_a)
        page.wait_for(f"{FLEET_NOTE} === 'fleet: a, b (this is b)'", within=WAIT)  # current again
        page.wait_for(f"{cell(NODE3, 'stage')} === 'boot-script@a'", within=WAIT)  # what a served meanwhile
    finally:
        browser.close()


def status_then_recovery(cluster, a: BootdProcess, b: BootdProcess, name_a: str) -> None:
    """etcd is stopped: `bootd status` says stale, a step at a is kept; etcd back: both current, a's step at b."""
    shown = status(b)
    assert shown.returncode == 0, shown.stderr
    assert any(x.startswith("fleet view STALE since") and f"showing what {replica_of(b)} has" in x
               for x in shown.stdout.splitlines()), shown.stdout
    assert NODE2 in shown.stdout
    # a serves a machine while etcd is away: it shows it, and keeps the record to write
    assert request(a, f"/boot.ipxe?mac={NODE3}") == 200
    assert stages(row(get_json(a, "/api/v1/machines"), NODE3)) == [("boot-script", name_a)]
    pending = wait_for(a, "/api/v1/machines", lambda li: li["fleet"]["records_pending"] >= 1)
    assert pending["fleet"]["stale"]

    cluster.start_all()
    for server in (a, b):
        listing = wait_for(server, "/api/v1/machines", lambda li: not li["fleet"]["stale"]
                           and stages(row(li, NODE3)) == [("boot-script", name_a)])
        assert listing["fleet"]["stale_since"] is None
    assert wait_for(a, "/api/v1/machines", lambda li: li["fleet"]["records_pending"] == 0)
    a.wait_for_log(lambda line: "fleet view is stale" in line.get("message", ""))
    a.wait_for_log(lambda line: "fleet view is current again" in line.get("message", ""))
