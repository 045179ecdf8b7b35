"""Debian's Chromium, headless, driven through the DevTools protocol over `--remote-debugging-pipe`.

Why the protocol and not playwright: the system browser is the one a test may use (nothing is downloaded at
test time), and the pipe needs no port and no client library: JSON messages separated by NUL bytes, the
browser reading fd 3 and writing fd 4. The fds pass through `ip netns exec`, so the browser can sit in a
test's client namespace and see bootd exactly as a machine on that network does. A playwright release
pins the Chromium protocol it expects; Debian's Chromium moves on with security updates.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--hide-scrollbars", "--window-size=1400,900",
         "--remote-debugging-pipe"]


class CdpError(Exception):
    pass


class Browser:
    """One headless Chromium; `start(prefix)` runs it behind `prefix` (e.g. `ip netns exec NS`)."""

    def __init__(self, prefix: list[str] | None = None) -> None:
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._profile = tempfile.TemporaryDirectory(prefix="bootd-chromium-")
        self._next_id = 0
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.console: list[str] = []  # console messages and exceptions of the page, for failure reports

    def start(self) -> Browser:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes replies on fd 4: move its ends above those numbers
        # first, so that putting one in place cannot overwrite the other
        high_r, high_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        to_browser_r, from_browser_w = high_r, high_w
        argv = [*self.prefix, CHROMIUM, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, pass_fds=(3, 4),
            preexec_fn=lambda: (os.dup2(to_browser_r, 3), os.dup2(from_browser_w, 4)) and None)
        os.close(to_browser_r)
        os.close(from_browser_w)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        waiter = self._replies.get(message["id"])
                    if waiter is not None:
                        waiter.put(message)
                elif message.get("method") == "Runtime.consoleAPICalled":
                    args = message["params"]["args"]
                    self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in args))
                elif message.get("method") == "Runtime.exceptionThrown":
                    self.console.append(json.dumps(message["params"]["exceptionDetails"])[:500])

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
            waiter: queue.Queue[dict[str, Any]] = queue.Queue()
            self._replies[call_id] = waiter
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = waiter.get(timeout=timeout)
        except queue.Empty:
            raise CdpError(f"{method}: no reply within {timeout} s") from None
        finally:
            with self._lock:
                self._replies.pop(call_id, None)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def new_page(self) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Runtime.enable")
        return page

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.call("Browser.close", timeout=5)
                self.proc.wait(5)
            except (CdpError, OSError, subprocess.TimeoutExpired):
                pass
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        return self.browser.call(method, params, self.session, timeout)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """The value of `expression` (awaited when it is a promise); a thrown error is a CdpError."""
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, timeout)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, condition: str, within: float = 10.0) -> float:
        """Milliseconds until the JS `condition` holds, checked every 5 ms in the page; CdpError when it does
        not within `within` seconds."""
        waited = self.evaluate(f"""new Promise((resolve) => {{
            const t0 = performance.now();
            const check = () => {{
                let ok = false;
                try {{ ok = Boolean({condition}); }} catch (e) {{ ok = false; }}
                if (ok) resolve(performance.now() - t0);
                else if (performance.now() - t0 > {within * 1000}) resolve(-1);
                else setTimeout(check, 5);
            }};
            check();
        }})""", timeout=within + 30)
        if waited < 0:
            raise CdpError(f"not within {within} s: {condition}; console: {self.browser.console[-5:]}")
        return waited

    def screenshot(self, path: Path, down_to: str | None = None) -> Path:
        """A PNG of the viewport, or of its top down to the bottom of the element `down_to` (a CSS selector)."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": False}
        if down_to is not None:
            box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(down_to)})"
                                f".getBoundingClientRect(); return [window.innerWidth, r.bottom + 12]; }})()")
            params["clip"] = {"x": 0, "y": 0, "width": box[0], "height": box[1], "scale": 1}
        data = self.call("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
