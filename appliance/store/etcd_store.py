"""Profiles, groups and templates in etcd (`store: {backend: etcd}`), shared by every bootd replica.

Key layout under `store.prefix` (default /bootd):
- `<prefix>/data/current`: the name of the live generation (absent: `g0`).
- `<prefix>/data/written`: put (empty) in the same transaction as every write of the API and an import's
  switch: its mod_revision is the revision of the last write, what a replica's copy must have reached.
- `<prefix>/data/<generation>/<path>`: the matchbox data dir, one key per file, byte for byte: `profiles/<id>.json`,
  `groups/<id>.json`, `ignition/<name>`, `generic/<name>`, `cloud/<name>`. Assets stay on each replica's disk.
  The generation exists so that `bootd store import` replaces everything at once: it writes a new generation
  in batches (etcd takes at most 128 operations per transaction) and then moves `current` in one
  transaction; the old generation is deleted after. Every write of the API compares `current`, so no write
  lands in a generation that is no longer live.
- `<prefix>/leases/`, `<prefix>/machines/`: DHCP leases and machine progress (other modules).

Reads on the request path come from a mirror: every key under `<prefix>/data/`, read once and kept current
by a watch (resumed from the next revision when its member is lost). "An edit is served everywhere at the
next request": before a boot config is chosen, the HTTP side awaits `fresh()`: one linearizable read of the
`written` key (shared by the requests that arrive while it is in flight); when the mirror has not reached
its revision yet (the watch has not delivered that write, or is still resuming after an outage), a second
linearizable read fetches what changed under `<prefix>/data/` since the mirror's revision and applies it.
An edit acknowledged by any replica before the request arrived is therefore in the mirror when the request
is answered, whatever the watch is doing. (Not by waiting for the watch's progress notice: etcd 3.4.23
answers one with a revision its just-resumed watch has not delivered yet, see appliance/etcd/client.py; that
served the old profile after etcd's restart.) When etcd does not answer (within FRESH_SECONDS), the request
is served from the mirror as it is, and that is logged once per outage. Edits written into etcd by another
tool (etcdctl) are followed by the watch, without the next-request promise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from appliance.etcd import (Compare, Delete, EtcdClient, EtcdCompacted, EtcdError, EtcdUnavailable, EventType,
                            KeyValue, Put, RangeResult, WatchEvent)
from appliance.ignition import RAW_IGNITION_SUFFIXES
from appliance.store.datadir import MAX_DOCUMENT_BYTES
from appliance.store.model import Group, InvalidDocument, Profile, parse_group, parse_profile
from appliance.store.selection import order_groups
from appliance.store.writes import Kind, NotStored, StoreUnavailable, WriteRefused, check_name, group_json, \
    profile_json
from appliance.templates.compiled import check_template

logger = logging.getLogger(__name__)
R = TypeVar("R")

FRESH_SECONDS = 2.0  # at most this long per request for etcd's revision and the watch to catch up
# while etcd is unreachable (and no other call got an answer since), requests are served from the mirror for
# this long without asking again
RETRY_AFTER_FAILURE = 2.0
WATCH_RESTART_SECONDS = 5.0  # a watch that has not delivered a write this long after a read found it: restarted
FIRST_GENERATION = "g0"
KINDS = ("profiles", "groups", "ignition", "generic", "cloud")
FLAT_KINDS = ("profiles", "groups")
BATCH_OPS = 100  # puts per transaction when importing (etcd's default --max-txn-ops is 128)
# etcd refuses a request larger than --max-request-bytes (1.5 MiB by default): one file must fit in one put
# with its key, and an import's transaction holds at most BATCH_BYTES of files
MAX_VALUE_BYTES = 1_400_000
BATCH_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str  # "/bootd", no trailing slash

    @property
    def data(self) -> bytes:
        return f"{self.prefix}/data/".encode()

    @property
    def pointer(self) -> bytes:
        return f"{self.prefix}/data/current".encode()

    @property
    def written(self) -> bytes:
        return f"{self.prefix}/data/written".encode()

    def generation(self, name: str) -> bytes:
        return f"{self.prefix}/data/{name}/".encode()

    def key(self, generation: str, path: str) -> bytes:
        return self.generation(generation) + path.encode()

    def split(self, key: bytes) -> tuple[str, str] | None:
        """(generation, data-dir path) of a file key; None for the pointer, `written` or anything else."""
        if not key.startswith(self.data) or key == self.pointer:
            return None
        generation, _, path = key[len(self.data):].decode(errors="replace").partition("/")
        return (generation, path) if path else None


def kind_path(kind: Kind | str, name: str) -> str:
    """The data-dir path of a stored object: profiles/<id>.json, ignition/<name>."""
    value = kind.value if isinstance(kind, Kind) else kind
    return f"{value}/{name}.json" if value in FLAT_KINDS else f"{value}/{name}"


# --- the mirror ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoredFile:
    data: bytes
    mod_revision: int


@dataclass(slots=True)
class _View:
    """The live generation's files, path -> StoredFile; replaced whole when the generation changes."""
    generation: str
    files: dict[str, StoredFile] = field(default_factory=dict)
    changed_at: int = 0  # the revision of the last change to these files (the HTTP side's generation)


class EtcdMirror:
    """Every key under `<prefix>/data/`, kept current by a watch. Mutated on the event loop only; readers in
    worker threads see whole, consistent views (a view's dict is replaced, never changed, while shared)."""

    def __init__(self, client: EtcdClient, layout: Layout) -> None:
        self.client = client
        self.layout = layout
        self.revision = 0  # everything up to this revision has been applied
        self.view = _View(FIRST_GENERATION)
        self._raw: dict[bytes, StoredFile] = {}  # every generation's keys (an import stages one beside the live)
        self._task: asyncio.Task[None] | None = None
        self._catch_up_running: asyncio.Task[None] | None = None  # the catch-up in flight (or the last one)
        self._catch_up_next: asyncio.Task[None] | None = None  # the catch-up to start when that one is done
        self._watched = 0  # the last revision the watch delivered
        self._unwatched: tuple[float, int] | None = None  # (monotonic time, revision): a write read, not watched
        self._failed_at: float | None = None  # monotonic time of the last failed freshness check
        self.reachable = True
        self.loop: asyncio.AbstractEventLoop | None = None  # the daemon's, once started

    async def load(self) -> None:
        """Read every key once (linearizable); EtcdUnavailable when no endpoint answers."""
        found = await self.client.get_prefix(self.layout.data)
        self._raw = {kv.key: StoredFile(kv.value, kv.mod_revision) for kv in found.kvs}
        self.revision = found.revision
        self._rebuild(found.revision)

    def _rebuild(self, revision: int) -> None:
        pointer = self._raw.get(self.layout.pointer)
        generation = pointer.data.decode(errors="replace") if pointer is not None else FIRST_GENERATION
        files = {}
        for key, stored in self._raw.items():
            where = self.layout.split(key)
            if where is not None and where[0] == generation:
                files[where[1]] = stored
        self.view = _View(generation, files, revision)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._task = self.loop.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        while True:
            try:
                async for batch in self.client.watch(self.layout.data, start_revision=self.revision + 1):
                    self._watched = max(self._watched, batch.revision)
                    self._apply(batch.revision, batch.events)
            except EtcdCompacted as exc:
                logger.warning("store: %s; reading %s again", exc, self.layout.data.decode())
                await self._reload_until_read()
            except EtcdError as exc:
                logger.warning("store: the watch on %s stopped: %s; starting it again", self.layout.data.decode(), exc)
                await asyncio.sleep(1)
            except Exception:  # a bug of ours: said with its traceback, and the copy keeps following
                logger.exception("store: the watch on %s failed; starting it again", self.layout.data.decode())
                await asyncio.sleep(1)

    async def _reload_until_read(self) -> None:
        while True:
            try:
                await self.load()
                return
            except EtcdUnavailable:
                await asyncio.sleep(1)

    def _apply(self, revision: int, events: Iterable[WatchEvent]) -> None:
        """Events of the watch, or of a catch-up read; what is at or below `self.revision` is already here
        (a read brought the mirror past it: the watch delivers it later, and it is skipped)."""
        view = self.view
        files: dict[str, StoredFile] | None = None
        rebuild = False
        for event in events:
            if event.kv.mod_revision <= self.revision:
                continue
            key = event.kv.key
            if event.type is EventType.DELETE:
                self._raw.pop(key, None)
            else:
                self._raw[key] = StoredFile(event.kv.value, event.kv.mod_revision)
            if key == self.layout.pointer:
                rebuild = True
                continue
            where = self.layout.split(key)
            if where is None or where[0] != view.generation:
                continue
            if files is None:
                files = dict(view.files)  # copy on write: a reader holding the old view keeps it whole
            if event.type is EventType.DELETE:
                files.pop(where[1], None)
            else:
                files[where[1]] = StoredFile(event.kv.value, event.kv.mod_revision)
        if rebuild:
            self._rebuild(revision)
        elif files is not None:
            self.view = _View(view.generation, files, revision)
        self.revision = max(self.revision, revision)

    # --- freshness ----------------------------------------------------------------------------------

    async def fresh(self, budget: float = FRESH_SECONDS) -> bool:
        """Make sure (within `budget` s) that the mirror holds every write acknowledged before this call; False
        when etcd did not answer in time (the mirror serves as it is)."""
        if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER_FAILURE \
                and self.client.last_answer < self._failed_at:  # nothing (a write, the watch) got through since
            return False
        try:
            await asyncio.wait_for(self._caught_up(), budget)
        except (TimeoutError, EtcdError) as exc:
            self._failed_at = time.monotonic()
            if self.reachable:
                self.reachable = False
                reason = str(exc) or f"no answer within {budget:g} s from {', '.join(self.client.endpoints)}"
                logger.warning("store: etcd unreachable (%s): serving profiles, groups and templates from the "
                               "copy at revision %d until it answers", reason, self.revision)
            return False
        self._check_watch()
        if not self.reachable:
            self.reachable = True
            logger.info("store: etcd answers again: serving revision %d", self.revision)
        self._failed_at = None
        return True

    async def _catch_up(self) -> None:
        """The last write's revision (the `written` key, linearizable); if the mirror has not reached it, what
        changed since the mirror's revision, read and applied. Deletions show in the count of keys (etcd counts
        before it filters by revision): when it differs, the keys at that revision are listed."""
        found = await self.client.range(self.layout.written)
        written = found.kvs[0].mod_revision if found.kvs else 0
        if self.revision >= written:
            return
        since = self.revision
        changed = await self.client.range(self.layout.data, prefix=True, min_mod_revision=since + 1)
        at = changed.revision
        if self._watched < written and self._unwatched is None:
            self._unwatched = (time.monotonic(), written)
        if self.revision >= at:
            return  # the watch got there meanwhile
        events = [WatchEvent(EventType.PUT, kv) for kv in changed.kvs]
        if len(set(self._raw) | {kv.key for kv in changed.kvs}) != changed.count:
            try:
                listed = await self.client.range(self.layout.data, prefix=True, keys_only=True, revision=at)
            except EtcdUnavailable:
                raise
            except EtcdError as exc:  # `at` compacted already: read everything again
                logger.info("store: %s; reading %s again", exc, self.layout.data.decode())
                await self.load()
                return
            if self.revision >= at:
                return
            present = {kv.key for kv in listed.kvs}
            # the copy's keys as they are now (the watch may have brought some while the list was read)
            gone = (set(self._raw) | {kv.key for kv in changed.kvs}) - present
            events += [WatchEvent(EventType.DELETE, KeyValue(key, b"", 0, at, 0, 0)) for key in sorted(gone)]
        self._apply(at, events)

    def _check_watch(self) -> None:
        """A write that a read had to bring in (the watch had not delivered it) is normal for a moment; if the
        watch has still not delivered it WATCH_RESTART_SECONDS later, its member may be cut off without the
        connection breaking: start it again (it resumes after the mirror's revision, so nothing is missed)."""
        if self._unwatched is None:
            return
        since, revision = self._unwatched
        if self._watched >= revision or self._task is None:
            self._unwatched = None
            return
        if time.monotonic() - since < WATCH_RESTART_SECONDS:
            return
        self._unwatched = None
        logger.warning("store: the watch has not delivered revision %d (it is at %d) %g s after a read found it; "
                       "starting it again through another member", revision, self._watched, WATCH_RESTART_SECONDS)
        self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _caught_up(self) -> None:
        """`_catch_up`, from one that started after this call: requests arriving while one is in flight share
        the next one. They are tasks of their own: a request that gives up waiting (its budget) cancels only
        its wait, never the catch-up others share."""
        if self._catch_up_next is None:
            previous = self._catch_up_running

            async def catch_up() -> None:
                if previous is not None:
                    await asyncio.wait([previous])
                self._catch_up_next = None  # whoever arrives from now on needs a read that starts later
                self._catch_up_running = task
                await self._catch_up()

            task = asyncio.ensure_future(catch_up())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, even if nobody waits
            self._catch_up_next = task
        await asyncio.shield(self._catch_up_next)


# --- the store the HTTP side reads ----------------------------------------------------------------------

def _serialised(method: Callable[..., R]) -> Callable[..., R]:
    @functools.wraps(method)
    def locked(self: EtcdStore, *args: object, **kwargs: object) -> R:
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class EtcdStore:
    """DataDir's reading interface over the mirror: groups(), profile(), ignition(), generic(), cloud(),
    check(), template_errors(), generation(), plus `fresh()` (awaited before a boot config is chosen).
    A file matchbox would not load is skipped with a warning, once per version of it."""

    def __init__(self, mirror: EtcdMirror, extra_groups: Iterable[Group] = ()) -> None:
        self._lock = threading.RLock()
        self.mirror = mirror
        self.extra_groups = tuple(extra_groups)
        self._groups: tuple[_View, list[Group]] | None = None
        self._parsed: dict[str, tuple[int, object | None, str | None]] = {}  # path -> (mod rev, value, reason)

    async def fresh(self) -> bool:
        return await self.mirror.fresh()

    def writer(self) -> EtcdWriter:
        """What the read-write API writes through (appliance/api/service.py Backend.writer)."""
        assert self.mirror.loop is not None, "the mirror is started on the daemon's loop"
        return EtcdWriter(self.mirror.client, self.mirror.layout, self.mirror.loop)

    def generation(self) -> int:
        return self.mirror.view.changed_at

    def _parse(self, path: str, stored: StoredFile, parse: Callable[[bytes], object]) -> tuple[object | None, str | None]:
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == stored.mod_revision:
            return cached[1], cached[2]
        value, reason = None, None
        if len(stored.data) > MAX_DOCUMENT_BYTES:
            reason = f"larger than {MAX_DOCUMENT_BYTES} bytes"
        else:
            try:
                value = parse(stored.data)
            except InvalidDocument as exc:
                reason = str(exc)
        if reason is not None:
            logger.warning("skipping %s (etcd, revision %d): %s", path, stored.mod_revision, reason)
        if len(self._parsed) > 20_000:
            self._parsed.clear()
        self._parsed[path] = (stored.mod_revision, value, reason)
        return value, reason

    @_serialised
    def groups(self) -> list[Group]:
        """Configured machines first, then groups/*.json by name, in selection order; the same list object
        while nothing changed (the daemon compares it to know when DHCP's scope must be computed again)."""
        view = self.mirror.view
        if self._groups is not None and self._groups[0] is view:
            return self._groups[1]
        loaded = []
        for path in sorted(p for p in view.files if p.startswith("groups/") and p.endswith(".json")
                           and "/" not in p[len("groups/"):]):
            group, _ = self._parse(path, view.files[path], lambda data, p=path: parse_group(data, source=p))
            if group is not None:
                loaded.append(group)
        ordered = order_groups([*self.extra_groups, *loaded])
        if self._groups is not None and self._groups[1] == ordered:
            ordered = self._groups[1]  # an edit elsewhere (a template) keeps the same list
        self._groups = (view, ordered)
        return ordered

    @_serialised
    def profile(self, profile_id: str) -> Profile | None:
        if not profile_id or "/" in profile_id or profile_id in (".", ".."):
            return None
        path = f"profiles/{profile_id}.json"
        stored = self.mirror.view.files.get(path)
        if stored is None:
            return None
        return self._parse(path, stored, parse_profile)[0]

    def _raw(self, kind: Kind | str, name: str) -> bytes | None:
        try:
            check_name(Kind.IGNITION, name)  # the rules of a nested name: no '..', no empty or hidden part
        except WriteRefused as exc:
            logger.warning("%s/%s refused: %s", kind, name[:80], exc)
            return None
        stored = self.mirror.view.files.get(f"{kind}/{name}")
        return stored.data if stored is not None else None

    def ignition(self, name: str) -> bytes | None:
        return self._raw("ignition", name)

    def generic(self, name: str) -> bytes | None:
        return self._raw("generic", name)

    def cloud(self, name: str) -> bytes | None:
        return self._raw("cloud", name)

    @_serialised
    def check(self) -> list[str]:
        files = self.mirror.view.files
        problems = data_problems(files)
        groups = self.groups()
        for group in groups:
            if group.profile and self.profile(group.profile) is None:
                problems.append(f"{group.source or group.id}: profile {group.profile!r} is missing or invalid")
        for path in sorted(p for p in files if p.startswith("profiles/") and p.endswith(".json")):
            profile = self.profile(path[len("profiles/"):-len(".json")])
            if profile is None:
                continue
            for kind, name in (("ignition", profile.ignition_id), ("generic", profile.generic_id),
                               ("cloud", profile.cloud_id)):
                if name and f"{kind}/{name}" not in files:
                    problems.append(f"{path}: profile {profile.id!r}: {kind}/{name} is missing or refused")
        return problems

    @_serialised
    def template_errors(self) -> list[str]:
        return template_errors(self.mirror.view.files)


def data_problems(files: dict[str, StoredFile] | dict[str, bytes]) -> list[str]:
    """What matchbox would skip in these files (path -> bytes), one line each."""
    problems = []
    for path in sorted(files):
        stored = files[path]
        data = stored.data if isinstance(stored, StoredFile) else stored
        kind, _, name = path.partition("/")
        if kind in FLAT_KINDS:
            if "/" in name:
                problems.append(f"{path}: {kind}/ is flat (matchbox reads no subdirectory), skipped")
                continue
            if not name.endswith(".json"):
                problems.append(f"{path}: not a .json file, skipped")
                continue
            try:
                if len(data) > MAX_DOCUMENT_BYTES:
                    raise InvalidDocument(f"larger than {MAX_DOCUMENT_BYTES} bytes")
                (parse_profile if kind == "profiles" else parse_group)(data)
            except InvalidDocument as exc:
                problems.append(f"{path}: {exc}")
    return problems


def template_errors(files: dict[str, StoredFile] | dict[str, bytes]) -> list[str]:
    errors = []
    for path in sorted(files):
        kind = path.partition("/")[0]
        if kind not in ("ignition", "generic", "cloud") or path.endswith(RAW_IGNITION_SUFFIXES):
            continue
        stored = files[path]
        data = stored.data if isinstance(stored, StoredFile) else stored
        if (error := check_template(data, path)) is not None:
            errors.append(error)
    return errors


# --- writes (the read-write API) -------------------------------------------------------------------------

class EtcdWriter:
    """DataWriter's interface on etcd, for the API's handlers (worker threads): each call runs on the event
    loop and waits for it. One etcd transaction per write, conditional on the live generation, so a write
    is atomic and never lands in a generation an import has replaced. No endpoint answering:
    StoreUnavailable naming each endpoint and its reason."""

    def __init__(self, client: EtcdClient, layout: Layout, loop: asyncio.AbstractEventLoop) -> None:
        self.client, self.layout, self.loop = client, layout, loop

    def _run(self, coro) -> R:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        wait = self.client.timeout * (len(self.client.endpoints) + 1) + 5
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise StoreUnavailable(f"etcd {', '.join(self.client.endpoints)}: no answer in {wait:g} s") from None
        except EtcdUnavailable as exc:
            raise StoreUnavailable(str(exc)) from None
        except EtcdError as exc:
            raise StoreUnavailable(f"etcd refused: {exc}") from None

    async def _generation(self) -> tuple[str, Compare, int]:
        """The live generation, the compare that holds while it stays live, and the revision read at."""
        found = await self.client.range(self.layout.pointer)
        if not found.kvs:
            return FIRST_GENERATION, Compare.version(self.layout.pointer, 0), found.revision
        kv = found.kvs[0]
        return kv.value.decode(), Compare.mod_revision(self.layout.pointer, kv.mod_revision), found.revision

    async def _put(self, path: str, data: bytes) -> int:
        for _ in range(3):  # the generation moved under us (an import): write into the new one
            generation, live, _ = await self._generation()
            done = await self.client.txn([live], [Put(self.layout.key(generation, path), data),
                                                  Put(self.layout.written, b"")])
            if done.succeeded:
                return done.revision
        raise StoreUnavailable("the store's data was replaced three times during this write (imports running)")

    async def _delete(self, path: str) -> int:
        for _ in range(3):
            generation, live, _ = await self._generation()
            done = await self.client.txn([live], [Delete(self.layout.key(generation, path)),
                                                  Put(self.layout.written, b"")])
            if done.succeeded:
                return int(done.responses[0] or 0)
        raise StoreUnavailable("the store's data was replaced three times during this delete (imports running)")

    async def _read(self, path: str) -> bytes | None:
        generation, _, revision = await self._generation()
        found = await self.client.range(self.layout.key(generation, path), revision=revision)
        return found.kvs[0].value if found.kvs else None

    async def _list(self, kind: Kind) -> list[str]:
        generation, _, revision = await self._generation()
        found = await self.client.range(self.layout.key(generation, f"{kind.value}/"), prefix=True,
                                        revision=revision, keys_only=True)
        start = len(self.layout.key(generation, f"{kind.value}/"))
        names = [kv.key[start:].decode(errors="replace") for kv in found.kvs]
        return sorted(n[:-5] for n in names if n.endswith(".json") and "/" not in n and not n.startswith("."))

    def _checked(self, kind: Kind, name: str, data: bytes = b"") -> str:
        check_name(kind, name)
        if len(data) > MAX_VALUE_BYTES:
            raise WriteRefused(f"{name[:80]!r}: {len(data)} bytes, more than the etcd store takes in one object "
                               f"({MAX_VALUE_BYTES})")
        return kind_path(kind, name)

    # DataWriter's interface

    def put_profile(self, profile: Profile) -> str:
        if not profile.id:
            raise WriteRefused("profile: id is required")
        data = profile_json(profile)
        path = self._checked(Kind.PROFILE, profile.id, data)
        self._run(self._put(path, data))
        return path

    def put_group(self, group: Group) -> str:
        if not group.id:
            raise WriteRefused("group: id is required")
        if not group.profile:
            raise WriteRefused(f"group {group.id!r}: profile is required")
        data = group_json(group)
        try:
            parse_group(data)
        except InvalidDocument as exc:
            raise WriteRefused(f"group {group.id!r}: {exc}") from None
        path = self._checked(Kind.GROUP, group.id, data)
        self._run(self._put(path, data))
        return path

    def get_profile(self, profile_id: str) -> Profile:
        try:
            return parse_profile(self.read(Kind.PROFILE, profile_id))
        except InvalidDocument as exc:
            raise WriteRefused(f"profile {profile_id!r} is stored but invalid: {exc}") from None

    def get_group(self, group_id: str) -> Group:
        try:
            return parse_group(self.read(Kind.GROUP, group_id))
        except InvalidDocument as exc:
            raise WriteRefused(f"group {group_id!r} is stored but invalid: {exc}") from None

    def list(self, kind: Kind) -> list[str]:
        return self._run(self._list(kind))

    def sweep_temp_files(self) -> list[str]:
        return []  # an etcd write is one transaction: nothing partial to sweep

    def put(self, kind: Kind, name: str, data: bytes) -> str:
        path = self._checked(kind, name, data)
        self._run(self._put(path, data))
        return path

    def read(self, kind: Kind, name: str) -> bytes:
        data = self._run(self._read(self._checked(kind, name)))
        if data is None:
            raise NotStored(f"{kind.value[:-1] if kind.flat else kind.value} {name!r} does not exist")
        return data

    def delete(self, kind: Kind, name: str) -> str:
        path = self._checked(kind, name)
        if self._run(self._delete(path)) == 0:
            raise NotStored(f"{kind.value[:-1] if kind.flat else kind.value} {name!r} does not exist")
        return path


# --- bootd store import / export -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DataDirFiles:
    files: dict[str, bytes]  # data-dir path -> content
    problems: list[str]  # each bad file: path: why (an import with any writes nothing)
    skipped: list[str]  # what is not imported and why (assets/, files beside the kinds)


def read_data_dir(root: Path) -> DataDirFiles:
    """Every file of a matchbox data dir that belongs in etcd, each checked as bootd would load it."""
    files: dict[str, bytes] = {}
    problems: list[str] = []
    skipped: list[str] = []
    if not root.is_dir():
        return DataDirFiles({}, [f"{root}: not a directory"], [])
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name == "assets":
            skipped.append("assets/: assets stay on each replica's disk (not in etcd)")
        elif entry.name not in KINDS:
            skipped.append(f"{entry.name}: not part of a matchbox data dir ({', '.join(KINDS)})")
    real_root = root.resolve()
    for kind in KINDS:
        directory = root / kind
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_dir() and not path.is_symlink():
                if kind in FLAT_KINDS:
                    problems.append(f"{relative}: a directory; {kind}/ is flat")
                continue
            try:
                real = path.resolve(strict=True)
            except OSError as exc:
                problems.append(f"{relative}: cannot be read ({exc.strerror or exc})")
                continue
            if not real.is_relative_to(real_root / kind):
                problems.append(f"{relative}: a symlink leading outside {kind}/")
                continue
            if not real.is_file():
                problems.append(f"{relative}: not a regular file")
                continue
            name = relative[len(kind) + 1:]
            try:
                check_name(Kind.IGNITION, name)  # nested names: no hidden or empty parts (as the API writes)
            except WriteRefused as exc:
                problems.append(f"{relative}: {exc}")
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                problems.append(f"{relative}: cannot be read ({exc.strerror or exc})")
                continue
            if len(data) > MAX_VALUE_BYTES:
                problems.append(f"{relative}: {len(data)} bytes, more than etcd takes in one value "
                                f"({MAX_VALUE_BYTES}); serve it as an asset instead")
                continue
            files[relative] = data
    problems += data_problems(files)
    problems += template_errors(files)
    return DataDirFiles(files, sorted(set(problems)), skipped)


@dataclass(frozen=True, slots=True)
class ImportResult:
    generation: str
    files: int
    revision: int  # the revision at which the new data became live


def import_batches(items: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    """The files in transactions etcd accepts: at most BATCH_OPS files and BATCH_BYTES (or one file) each."""
    batches: list[list[tuple[str, bytes]]] = []
    size = 0
    for item in items:
        weight = len(item[0]) + len(item[1])
        if not batches or len(batches[-1]) >= BATCH_OPS or (batches[-1] and size + weight > BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += weight
    return batches


async def import_files(client: EtcdClient, layout: Layout, files: dict[str, bytes],
                       progress: Callable[[str], None] = lambda line: None) -> ImportResult:
    """Replace the store's data with `files`, all at once: staged under a new generation in batches, then made
    live in one transaction that also checks nobody else moved it meanwhile. Any failure removes what was
    staged; the live data is then untouched."""
    found = await client.range(layout.pointer)
    if found.kvs:
        old, live = found.kvs[0].value.decode(), Compare.mod_revision(layout.pointer, found.kvs[0].mod_revision)
    else:
        old, live = FIRST_GENERATION, Compare.version(layout.pointer, 0)
    new = f"g{found.revision}-{secrets.token_hex(4)}"
    staged = layout.generation(new)
    try:
        items = sorted(files.items())
        done_files = 0
        for batch in import_batches(items):
            await client.txn([], [Put(staged + path.encode(), data) for path, data in batch])
            done_files += len(batch)
            progress(f"staged {done_files}/{len(items)} files under {staged.decode()}")
        done = await client.txn([live], [Put(layout.pointer, new.encode()), Put(layout.written, b"")])
        if not done.succeeded:
            raise EtcdError(f"{layout.pointer.decode()} changed during the import (another import?); nothing "
                            "was replaced")
    except BaseException:
        try:
            await client.delete(staged, prefix=True)
        except EtcdError as exc:
            logger.warning("store import: could not remove the staged %s: %s", staged.decode(), exc)
        raise
    await client.delete(layout.generation(old), prefix=True)  # no reader uses it any more
    return ImportResult(new, len(files), done.revision)


async def export_files(client: EtcdClient, layout: Layout) -> tuple[dict[str, bytes], int]:
    """The live data (path -> bytes) as of one revision, and that revision."""
    found = await client.range(layout.pointer)
    generation = found.kvs[0].value.decode() if found.kvs else FIRST_GENERATION
    files: RangeResult = await client.range(layout.generation(generation), prefix=True, revision=found.revision)
    start = len(layout.generation(generation))
    return {kv.key[start:].decode(): kv.value for kv in files.kvs}, found.revision


__all__ = ["EtcdMirror", "EtcdStore", "EtcdWriter", "Layout", "StoredFile", "export_files", "import_files",
           "read_data_dir"]
