"""HTTP(S) downloads that resume: aiohttp, the client bootd already depends on and runs on the daemon's loop
(the background tracker downloads beside serving; urllib would need a thread per download).

- TLS is checked against the system's CA store (`ssl.create_default_context()`: OpenSSL's default paths,
  /etc/ssl/certs on Debian; SSL_CERT_FILE/SSL_CERT_DIR override it as for every OpenSSL client).
- HTTP_PROXY / HTTPS_PROXY / NO_PROXY from the environment are honoured (`trust_env=True`).
- A large file is written to `<name>.part`; a later call asks for the rest with `Range: bytes=N-` (and
  `If-Range` with the validator the first answer gave, so a file that changed on the mirror starts over).
- An answer that is not the file (a 4xx/5xx, an HTML page: a captive portal or a mirror's error page sent
  with 200) is refused by status, Content-Type or its first bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

CHUNK = 1 << 20
SMALL_LIMIT = 16 << 20  # signatures, version.txt and stream metadata are a few KiB; more is not one of them
_HTML_START = re.compile(rb"^\s*<(!doctype html|html|head|body)", re.IGNORECASE)


class DownloadError(Exception):
    """A download did not complete; `resumable` when what was received is kept in the .part file."""

    def __init__(self, reason: str, *, resumable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.resumable = resumable


@dataclass(slots=True)
class Transfer:
    """What a progress display needs: the file, its size (None: unknown), and the bytes present so far."""

    name: str
    total: int | None
    done: int
    resumed_from: int = 0


Progress = Callable[[Transfer], None]


def new_session() -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(), limit=4)
    return aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=True,
                                 headers={"User-Agent": "bootd-assets"})


def _refusal(url: str, response: aiohttp.ClientResponse) -> str | None:
    if response.status >= 400:
        return f"{url}: HTTP {response.status} {response.reason or ''}".rstrip()
    if response.content_type == "text/html":
        return f"{url}: the mirror answered an HTML page, not the file"
    return None


async def fetch_small(session: aiohttp.ClientSession, url: str, *, limit: int = SMALL_LIMIT) -> bytes:
    """A small file (a signature, version.txt, stream metadata) read whole."""
    try:
        async with session.get(url) as response:
            if (refused := _refusal(url, response)) is not None:
                raise DownloadError(refused)
            data = await response.content.read(limit + 1)
    except aiohttp.ClientError as exc:
        raise DownloadError(f"{url}: {_describe(exc)}") from None
    except TimeoutError:
        raise DownloadError(f"{url}: no answer in time") from None
    if len(data) > limit:
        raise DownloadError(f"{url}: larger than {limit >> 20} MiB: not the small file expected")
    if _HTML_START.match(data[:512]):
        raise DownloadError(f"{url}: the mirror answered an HTML page, not the file")
    return data


def hash_file(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest


async def download(session: aiohttp.ClientSession, url: str, part: Path, name: str,
                   progress: Progress | None = None) -> str:
    """Download `url` into `part`, resuming what is there; the whole file's sha256. DownloadError on a
    refused answer (the .part is removed) or an interruption (the .part is kept: resumable)."""
    validator_file = part.with_name(part.name + ".validator")
    restart = False
    offset = part.stat().st_size if part.exists() else 0
    validator = validator_file.read_text().strip() if offset and validator_file.exists() else ""
    headers = {}
    if offset and validator:
        headers = {"Range": f"bytes={offset}-", "If-Range": validator}
    elif offset:  # no validator kept: the rest only if the server can say it is the same file
        offset = 0
    try:
        async with session.get(url, headers=headers) as response:
            if response.status == 416 and offset:  # asked past its end: not the same file; start again
                restart = True
                raise DownloadError(f"{url}: HTTP 416")
            if (refused := _refusal(url, response)) is not None:
                raise DownloadError(refused)
            resuming = response.status == 206 and offset > 0 and _range_start(response) == offset
            if not resuming:
                offset = 0
            total = response.content_length + offset if response.content_length is not None else None
            digest = await asyncio.to_thread(hash_file, part) if resuming else hashlib.sha256()
            new_validator = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
            if not resuming:
                validator_file.write_text(new_validator + "\n")
            transfer = Transfer(name=name, total=total, done=offset, resumed_from=offset)
            if progress is not None:
                progress(transfer)
            # plain writes: a chunk goes to the page cache in microseconds; the fsync below is the slow part
            with open(part, "ab" if resuming else "wb") as f:  # noqa: ASYNC230
                first = not resuming
                async for chunk in response.content.iter_chunked(CHUNK):
                    if first:
                        first = False
                        if _HTML_START.match(chunk[:512]):
                            raise DownloadError(f"{url}: the mirror answered an HTML page, not the file")
                    f.write(chunk)
                    digest.update(chunk)
                    transfer.done += len(chunk)
                    if progress is not None:
                        progress(transfer)
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
            if total is not None and transfer.done != total:
                raise DownloadError(f"{url}: interrupted after {transfer.done} of {total} bytes (kept for resume)",
                                    resumable=True)
    except aiohttp.ClientPayloadError as exc:
        size = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"{url}: interrupted after {size} bytes ({_describe(exc)}; kept for resume)",
                            resumable=True) from None
    except aiohttp.ClientError as exc:
        raise DownloadError(f"{url}: {_describe(exc)}", resumable=part.exists()) from None
    except TimeoutError:
        raise DownloadError(f"{url}: the mirror stopped sending (kept for resume)", resumable=True) from None
    except DownloadError as exc:
        if not exc.resumable:
            for leftover in (part, validator_file):
                leftover.unlink(missing_ok=True)
        if restart:
            return await download(session, url, part, name, progress)
        raise
    validator_file.unlink(missing_ok=True)
    return digest.hexdigest()


def _range_start(response: aiohttp.ClientResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"cannot reach the proxy {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = "connection refused" if isinstance(exc.os_error, ConnectionRefusedError) \
            else exc.os_error.strerror or str(exc.os_error)
        return f"cannot connect to {exc.host}:{exc.port}: {reason}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
