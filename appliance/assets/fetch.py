"""Fetch a release, verify every file, then switch the channel: what `bootd assets fetch` and the daemon's
tracker both run.

Order, so that nothing served changes unless everything verified:
1. ask the mirror which version is current (Flatcar's version.txt, Fedora CoreOS's stream metadata);
2. download each file (resuming a kept .part) and its signature into `.<version>.partial/`;
3. check each file: the stream's sha256 (Fedora CoreOS), then its OpenPGP signature (gpgv, the
   distribution's key); a file that fails is removed and the fetch stops, naming it and why;
4. rename the partial directory to `<version>/`, then move the channel pointer to it.
An interruption keeps the .part files for the next run; a full disk removes the partial version (its space
is given back). Either way the pointer, and so every file served, is what it was.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from appliance.assets.download import DownloadError, Progress, download, fetch_small, hash_file, new_session
from appliance.assets.sources import (OsName, Release, ReleaseError, check_choice, fcos_stream_url, flatcar_base,
                                      flatcar_release, flatcar_version_url, parse_fcos_stream, parse_flatcar_version)
from appliance.assets.store import AssetStore, Manifest, StoreError
from appliance.assets.verify import KeyFileError, keyring_file, key_bytes, shipped_keys, verify

Say = Callable[[str], None]  # one line for the operator


class FetchFailed(Exception):
    """The fetch did not complete; one line names the file and why. Nothing served changed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchRequest:
    os: OsName
    channel: str = "stable"
    arch: str = "amd64"
    version: str | None = None  # None: the channel's current version
    mirror: str | None = None  # None: the distribution's own servers
    install: bool = False  # also the disk image the installer writes
    keyring: Path | None = None  # None: the keys shipped with bootd

    @property
    def label(self) -> str:
        return f"{self.os}/{self.arch}/{self.channel}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchOutcome:
    release: Release
    previous: str | None  # the version the channel pointed at before
    downloaded: bool  # False: the version was already here, verified
    signer: str

    @property
    def switched(self) -> bool:
        return self.previous != self.release.version


def load_keys(request: FetchRequest) -> bytes:
    try:
        if request.keyring is None:
            return shipped_keys(request.os)
        return key_bytes(request.keyring.read_bytes())
    except KeyFileError as exc:
        raise FetchFailed(f"{request.keyring or 'the shipped key'}: {exc}") from None
    except OSError as exc:
        raise FetchFailed(f"{exc.filename or request.keyring}: cannot read the keyring: {exc.strerror}") from None


async def resolve(session: aiohttp.ClientSession, request: FetchRequest) -> Release:
    """The release the request names, as the mirror describes it."""
    try:
        check_choice(request.os, request.channel, request.arch)
        if request.os is OsName.FLATCAR:
            base = flatcar_base(request.mirror, request.channel)
            version = request.version
            if version is None:
                url = flatcar_version_url(base, request.arch)
                version = parse_flatcar_version(_text(await fetch_small(session, url), url))
            return flatcar_release(base, request.channel, request.arch, version, install=request.install)
        url = fcos_stream_url(request.mirror, request.channel)
        data = await fetch_small(session, url)
        try:
            return parse_fcos_stream(data, url, request.channel, request.arch, install=request.install,
                                     version=request.version)
        except ReleaseError as exc:
            raise ReleaseError(f"{url}: {exc}") from None
    except (ReleaseError, DownloadError) as exc:
        raise FetchFailed(str(exc)) from None


async def fetch_release(store: AssetStore, request: FetchRequest, *, say: Say, progress: Progress | None = None,
                        session: aiohttp.ClientSession | None = None) -> FetchOutcome:
    keys = load_keys(request)
    own_session = session is None
    session = session or new_session()
    try:
        release = await resolve(session, request)
        say(f"{request.label}: version {release.version} ({len(release.files)} files)")
        try:
            with store.locked(request.os, request.arch):
                return await _fetch_locked(store, request, release, keys, session, say, progress)
        except StoreError as exc:
            raise FetchFailed(str(exc)) from None
    finally:
        if own_session:
            await session.close()


async def _fetch_locked(store: AssetStore, request: FetchRequest, release: Release, keys: bytes,
                        session: aiohttp.ClientSession, say: Say, progress: Progress | None) -> FetchOutcome:
    version_dir = store.version_dir(request.os, request.arch, release.version)
    downloaded = False
    if version_dir.exists():
        manifest = store.manifest(request.os, request.arch, release.version)
        if manifest is None:
            raise FetchFailed(f"{version_dir} exists but bootd did not verify it (no manifest): move it away "
                              "and fetch again")
        missing = {f.name for f in release.files} - {name for name, _ in manifest.files}
        if missing:
            raise FetchFailed(f"{version_dir} lacks {', '.join(sorted(missing))}: remove the directory and fetch "
                              "again (e.g. with --install)")
        signer = manifest.signer
        say(f"{request.label}: {release.version} is already here, verified by key {signer}")
    else:
        signer = await _download_and_verify(store, request, release, keys, session, say, progress)
        downloaded = True
    try:
        previous = store.switch(request.os, request.arch, request.channel, release.version)
    except OSError as exc:
        raise FetchFailed(f"{exc.filename or version_dir.parent}: cannot switch the channel: {exc.strerror}") from None
    if previous != release.version:
        say(f"{request.label} -> {release.version} (was {previous or 'nothing'})")
    return FetchOutcome(release=release, previous=previous, downloaded=downloaded, signer=signer)


async def _download_and_verify(store: AssetStore, request: FetchRequest, release: Release, keys: bytes,
                               session: aiohttp.ClientSession, say: Say, progress: Progress | None) -> str:
    partial = store.partial_dir(request.os, request.arch, release.version)
    signers: set[str] = set()
    digests: dict[str, str] = {}
    current = release.files[0].name
    try:
        partial.mkdir(mode=0o700, parents=True, exist_ok=True)
        with keyring_file(keys) as keyring:
            for item in release.files:
                current = item.name
                target, part, signature = partial / item.name, partial / f"{item.name}.part", partial / f"{item.name}.sig"
                signature.write_bytes(await fetch_small(session, item.signature_url))
                if target.exists():  # downloaded and verified by an earlier run that stopped later: checked again
                    checked, digest = target, (await asyncio.to_thread(hash_file, target)).hexdigest()
                else:
                    checked, digest = part, await download(session, item.url, part, item.name, progress)
                if item.sha256 is not None and digest != item.sha256:
                    checked.unlink()
                    raise FetchFailed(f"{item.name}: sha256 {digest} is not the stream's {item.sha256} (changed or "
                                      "truncated); removed")
                verdict = await verify(checked, signature, keyring)
                if not verdict.ok:
                    checked.unlink()
                    raise FetchFailed(f"{item.name}: {verdict.reason}; removed")
                if checked is part:
                    part.rename(target)
                signers.add(verdict.signer)
                digests[item.name] = digest
                say(f"{item.name}: {target.stat().st_size} bytes, sha256 {digest[:16]}..., {verdict.reason}")
        manifest = Manifest(os=str(request.os), arch=request.arch, version=release.version, channel=request.channel,
                            files=tuple(sorted(digests.items())),
                            signer=", ".join(sorted(signers)), source=release.files[0].url.rsplit("/", 1)[0],
                            verified_at=time.time())
        store.commit(partial, request.os, request.arch, release.version, manifest)
        return manifest.signer
    except DownloadError as exc:
        kept = " (the partial download is kept: run again to resume)" if exc.resumable else ""
        raise FetchFailed(f"{current}: {exc.reason}{kept}") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            shutil.rmtree(partial, ignore_errors=True)
            raise FetchFailed(f"{current}: no space left on device under {partial.parent} (the partial version "
                              "was removed)") from None
        raise FetchFailed(f"{current}: {exc.filename or partial}: {exc.strerror}") from None


def _text(data: bytes, url: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FetchFailed(f"{url}: not text") from None
