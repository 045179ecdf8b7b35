"""Shared by the benchmarks: loopback namespaces, processes pinned to a core and stopped by PID, CPU time,
waiting for a quiet machine, and the results file.

Method (research/bench.md §2): the server runs on CPU 1 and the load on CPU 0; servers alternate round by
round on the same box in the same run; only ratios measured in one run mean anything.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from pyroute2 import NetNS, netns

from appliance.lab import kill_namespace_processes

RESULTS = Path(__file__).parent / "results"
SERVER_CPU, LOAD_CPU = "1", "0"


class LoopbackNamespace:
    """A namespace with only `lo` up: the benchmark's traffic never leaves it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> LoopbackNamespace:
        if self.name in netns.listnetns():
            self._kill_all()
            netns.remove(self.name)
        netns.create(self.name)
        with NetNS(self.name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        return self

    def __exit__(self, *exc: object) -> None:
        self._kill_all()
        netns.remove(self.name)

    def _kill_all(self) -> None:
        kill_namespace_processes(self.name)

    def argv(self, argv: list[str], cpu: str | None = None) -> list[str]:
        pin = ["taskset", "-c", cpu] if cpu is not None else []
        return ["ip", "netns", "exec", self.name, *pin, *argv]

    def start(self, argv: list[str], log: Path, cpu: str | None = SERVER_CPU) -> subprocess.Popen:
        with open(log, "wb") as out:
            return subprocess.Popen(self.argv(argv, cpu), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def run(self, argv: list[str], timeout: float, cpu: str | None = LOAD_CPU) -> str:
        return subprocess.run(self.argv(argv, cpu), capture_output=True, text=True, timeout=timeout,
                              check=True).stdout


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its children (nginx's workers), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def busy_fraction(seconds: float = 1.0) -> float:
    def sample() -> tuple[int, int]:
        values = list(map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]))
        return values[3] + values[4], sum(values)

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit: float | None = None, threshold: float = 0.10) -> float:
    """Wait (bounded: `limit`, else $BENCH_QUIET_WAIT, else 60 s) until the machine is under `threshold` busy;
    returns the last busy fraction seen (kept in each results file: how loaded the machine was)."""
    if limit is None:
        limit = float(os.environ.get("BENCH_QUIET_WAIT", "60"))
    deadline = time.monotonic() + limit
    busy = busy_fraction()
    while busy > threshold and time.monotonic() < deadline:
        busy = busy_fraction()
    return busy


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    payload = {"benchmark": name, "when": stamp, "host": platform.node(), "cpus": os.cpu_count(),
               "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], **payload}
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
