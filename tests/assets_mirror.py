"""A distribution mirror of the tests' own, on loopback: release files laid out as Flatcar's and Fedora
CoreOS's mirrors lay them out, signed at test time with a throw-away OpenPGP key (gpg in a private
GNUPGHOME) that the tests hand to bootd with --keyring in place of the shipped keys.

The mirror is an aiohttp server in a thread: files with Range (aiohttp's FileResponse), and, per path,
what a bad mirror does: cut the answer after N bytes once, answer an HTML page, answer 404. Every request's
path and Range header is kept for the tests to check.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


class SigningKey:
    """An ed25519 signing key in its own GNUPGHOME; `public` is the armored public key file."""

    def __init__(self, name: str = "bootd test") -> None:
        self.home = Path(tempfile.mkdtemp(prefix="bootd-gpg-"))
        os.chmod(self.home, 0o700)
        self.env = {**os.environ, "GNUPGHOME": str(self.home)}
        self._gpg("--quick-gen-key", f"{name} <test@bootd.invalid>", "ed25519", "sign", "never")
        listing = self._gpg("--with-colons", "--list-keys").stdout
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        self.public = self.home / "public.asc"
        self.public.write_text(self._gpg("--armor", "--export", self.fingerprint).stdout)

    def _gpg(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args],
                              env=self.env, capture_output=True, text=True, check=True)

    def sign(self, path: Path) -> Path:
        signature = path.with_name(path.name + ".sig")
        signature.unlink(missing_ok=True)
        self._gpg("--detach-sign", "-o", str(signature), str(path))
        return signature

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass
class Mirror:
    """Serves `root` on 127.0.0.1 (plain HTTP, or TLS with `ssl_context`)."""

    root: Path
    ssl_context: object | None = None
    cut_once: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the connection is cut
    html: set[str] = field(default_factory=set)  # paths answered with an HTML page and status 200
    missing: set[str] = field(default_factory=set)  # paths answered 404
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> Mirror:
        self._thread.start()
        self._started.wait(10)
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append((path, request.headers.get("Range")))
        if path in self.missing:
            raise web.HTTPNotFound(text="404 page not found\n")
        if path in self.html:
            return web.Response(text="<!DOCTYPE html><html><body>Please log in to the captive portal</body></html>",
                                content_type="text/html")
        file = self.root / path.lstrip("/")
        if not file.is_file():
            raise web.HTTPNotFound(text="404 page not found\n")
        if path in self.cut_once:
            cut = self.cut_once.pop(path)
            data = file.read_bytes()
            response = web.StreamResponse(headers={"Content-Length": str(len(data)), "ETag": _etag(file),
                                                   "Content-Type": "application/octet-stream"})
            await response.prepare(request)
            await response.write(data[:cut])
            request.transport.close()  # the connection drops mid-file
            return response
        response = web.FileResponse(file)
        response.headers["ETag"] = _etag(file)
        return response

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _etag(path: Path) -> str:
    st = path.stat()
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def payload(label: str, size: int) -> bytes:
    """Deterministic bytes that stand in for a kernel or an image."""
    seed = hashlib.sha256(label.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def publish_flatcar(root: Path, key: SigningKey, version: str, files: dict[str, bytes], *, channel: str = "stable",
                    arch: str = "amd64", current: bool = True) -> Path:
    """`<root>/<channel>/<arch>-usr/<version>/` with each file and its .sig; `current` -> version."""
    board = root / channel / f"{arch}-usr"
    directory = board / version
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
        key.sign(directory / name)
    (directory / "version.txt").write_text(f"FLATCAR_BUILD=1\nFLATCAR_VERSION={version}\nFLATCAR_VERSION_ID={version}\n")
    if current:
        link = board / "current"
        link.unlink(missing_ok=True)
        link.symlink_to(version)
    return directory


def publish_fcos(root: Path, base_url: str, key: SigningKey, version: str, *, stream: str = "stable",
                 size: int = 4096, install: bool = False) -> dict[str, bytes]:
    """Artifacts under `prod/streams/<stream>/builds/<version>/x86_64/` and `streams/<stream>.json` naming
    them with their sha256 and signature URLs; the artifacts' bytes by role."""
    directory = root / "prod/streams" / stream / "builds" / version / "x86_64"
    directory.mkdir(parents=True, exist_ok=True)
    names = {"kernel": f"fedora-coreos-{version}-live-kernel-x86_64",
             "initramfs": f"fedora-coreos-{version}-live-initramfs.x86_64.img",
             "rootfs": f"fedora-coreos-{version}-live-rootfs.x86_64.img"}
    if install:
        names["raw.xz"] = f"fedora-coreos-{version}-metal.x86_64.raw.xz"
    formats: dict[str, dict] = {"pxe": {}}
    contents = {}
    for role, name in names.items():
        data = payload(f"fcos {version} {role}", size)
        contents[role] = data
        (directory / name).write_bytes(data)
        key.sign(directory / name)
        url = f"{base_url}/prod/streams/{stream}/builds/{version}/x86_64/{name}"
        artifact = {"location": url, "signature": url + ".sig", "sha256": hashlib.sha256(data).hexdigest()}
        if role == "raw.xz":
            formats["raw.xz"] = {"disk": artifact}
        else:
            formats["pxe"][role] = artifact
    document = {"stream": stream, "metadata": {"last-modified": "2026-12-01T00:00:00Z"},
                "architectures": {"x86_64": {"artifacts": {"metal": {"release": version, "formats": formats}}}}}
    (root / "streams").mkdir(exist_ok=True)
    (root / "streams" / f"{stream}.json").write_text(json.dumps(document, indent=2))
    return contents
