"""`bootd run` as a subprocess for integration tests: started, read and stopped by PID.

The daemon logs JSON lines on stderr; a reader thread keeps them, and tests wait on a line they expect
(`wait_for_log`), never for a while.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.netns import NetLab

LogLine = dict[str, Any]


class BootdProcess:
    live: set[BootdProcess] = set()  # started and not yet stopped: the session's safety net ends them

    def __init__(self, config: Path, *, lab: NetLab | None = None, ns: str | None = None,
                 log_level: str = "info") -> None:
        self.config = config
        self.lab, self.ns = lab, ns
        self.argv = [sys.executable, "-m", "appliance", "run", "-c", str(config), "--log-format", "json",
                     "--log-level", log_level]
        self.lines: list[LogLine] = []
        self.addresses: list[str] = []
        self._changed = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 20) -> BootdProcess:
        kw: dict[str, Any] = {"stderr": subprocess.PIPE, "stdout": subprocess.DEVNULL, "text": True,
                              "env": {**os.environ, "PYTHONUNBUFFERED": "1"}}
        if self.lab is not None and self.ns is not None:
            self.proc = self.lab.start(self.ns, self.argv, **kw)
        else:
            self.proc = subprocess.Popen(self.argv, start_new_session=True, **kw)
        BootdProcess.live.add(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.wait_for_log(lambda line: line.get("message", "").startswith("bootd ready"), timeout)
        self.addresses = ready["addresses"].split(",")
        return self

    @property
    def base_url(self) -> str:
        return self.addresses[0]

    def url(self, path: str) -> str:
        return self.base_url + path

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                line = {"message": raw.rstrip("\n"), "level": "raw"}
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_log(self, predicate: Callable[[LogLine], bool], timeout: float = 10, start: int = 0) -> LogLine:
        """The first log line from index `start` on that satisfies `predicate`; AssertionError on timeout."""
        with self._changed:
            seen = start
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                # Exited counts once every line it wrote has been read: a process can end before the
                # reader has seen its last lines, which may be the awaited one.
                exited = self._reader is not None and not self._reader.is_alive()
                if exited or not self._changed.wait(timeout):
                    raise AssertionError(f"no matching log line (exited={exited}); log:\n{self.log_text()}")

    def log_text(self) -> str:
        return "\n".join(f"{line.get('level')} {line.get('message')}" + (f"\n{line['exception']}" if "exception" in line
                                                                        else "") for line in self.lines[-60:])

    def kill(self) -> None:
        """End the process group at once (the safety net for a test that did not get to stop it)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        BootdProcess.live.discard(self)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        # Inside a namespace the PID is `ip netns exec`, which execs the daemon: the same process.
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 20) -> int:
        """The exit code, once the process has ended and every line it logged has been read."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; the exit code. Fails the test if the daemon logged a traceback (a bug of ours,
        even when every request was answered)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.send(signal.SIGTERM)
        try:
            code = self.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            BootdProcess.live.discard(self)
        with self._changed:
            tracebacks = [line for line in self.lines if "exception" in line]
        assert not tracebacks, f"bootd logged tracebacks:\n{self.log_text()}"
        return code
