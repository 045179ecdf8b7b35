"""An asyncio client for etcd's v3 API (etcd 3.4 and later) on grpc.aio: the calls bootd needs, typed.

Why not aetcd (PyPI): it opens insecure channels only (no TLS, no client certificates) and talks to one
host; bootd needs TLS with a client certificate and several endpoints. This module is a thin layer over the
generated messages of appliance/etcd/proto/etcd.proto (etcd's own, trimmed).

- Endpoints: `http://host:port` (plain), `https://host:port` or `host:port` (TLS when `tls` is given). One
  channel per endpoint; a call goes to the endpoint that answered last, and on UNAVAILABLE (refused, reset,
  no quorum at that member) or a deadline the next endpoint is tried, each at most once per call. A member
  that comes back is reconnected within a second (gRPC's reconnect backoff is capped at 1 s here).
- Every unary call has a deadline (`timeout`). A call that no endpoint answers raises `EtcdUnavailable`,
  whose message names every endpoint and the reason each gave.
- A write retried on the next endpoint may have been applied by the first (etcd's own clients have the
  same rule): `put` and `delete` are idempotent; a `txn` whose compare then fails is reported as not
  succeeded, so callers that compare (allocations) re-read and decide again.
- `watch` is a stream that survives the loss of its member: it resumes on the next endpoint from the
  revision after the last event it delivered, so nothing is missed and nothing is delivered twice; if that
  revision was compacted away it raises `EtcdCompacted` (the caller reads the prefix again).
- A progress notice (asked for with `progress`) says the stream is alive; its revision is NOT a promise that
  every event up to it was delivered: etcd without the fix of etcd-io/etcd#15220 (2023; Debian's 3.4.23 here)
  answers a progress request with its current revision while a watch it has just created from an older
  revision (a resumed one) has not sent the events up to it yet (checked: 50 of 50 times), and later
  releases may not answer at all until such a watch has caught up (etcd-io/etcd#17507). So a notice never
  moves the point a watch resumes from, and freshness is proved by reads (appliance/store/etcd_store.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import grpc

from appliance.etcd.pb import etcd_pb2 as pb

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0

_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),  # a member that vanished without a FIN (a cut cable) is noticed
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
]

# status codes after which another endpoint may answer
_TRY_NEXT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.CANCELLED}


class EtcdError(Exception):
    """etcd refused or could not serve a call; the message says which endpoint(s) and why."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered (down, unreachable, no quorum, timed out)."""


class EtcdCompacted(EtcdError):
    """A watch asked for a revision etcd has compacted away: read the prefix again."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """TLS to etcd: the CA that signed the members' certificates; a client certificate and key when the
    cluster asks for one (--client-cert-auth)."""
    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        ca = self.ca.read_bytes()
        cert = self.cert.read_bytes() if self.cert is not None else None
        key = self.key.read_bytes() if self.key is not None else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def of(cls, kv: pb.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(frozen=True, slots=True)
class RangeResult:
    revision: int  # the store's revision when this was read
    kvs: tuple[KeyValue, ...]
    more: bool = False
    count: int = 0


class EventType(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    kv: KeyValue  # for a DELETE: the key and the revision of the deletion (mod_revision), value empty


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events; `revision` is the last event's, or for a progress notice (no events) the store's revision when
    etcd answered: a sign of life only, events at or below it may still come (see the module's notes)."""
    revision: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[RangeResult | int | None, ...]  # per op: a Get's RangeResult, a Put's None, a Delete's count


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int


# --- transactions ------------------------------------------------------------------------------------

class CompareOp(Enum):
    EQUAL = pb.Compare.EQUAL
    NOT_EQUAL = pb.Compare.NOT_EQUAL
    GREATER = pb.Compare.GREATER
    LESS = pb.Compare.LESS


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a txn: Compare.version(key, 0) reads "the key does not exist"."""
    key: bytes
    target: str  # version | create | mod | value | lease
    op: CompareOp
    operand: int | bytes

    @classmethod
    def version(cls, key: bytes, version: int, op: CompareOp = CompareOp.EQUAL) -> Compare:
        return cls(key, "version", op, version)

    @classmethod
    def mod_revision(cls, key: bytes, revision: int, op: CompareOp = CompareOp.EQUAL) -> Compare:
        return cls(key, "mod", op, revision)

    @classmethod
    def create_revision(cls, key: bytes, revision: int, op: CompareOp = CompareOp.EQUAL) -> Compare:
        return cls(key, "create", op, revision)

    @classmethod
    def value(cls, key: bytes, value: bytes, op: CompareOp = CompareOp.EQUAL) -> Compare:
        return cls(key, "value", op, value)

    @classmethod
    def lease(cls, key: bytes, lease_id: int, op: CompareOp = CompareOp.EQUAL) -> Compare:
        return cls(key, "lease", op, lease_id)

    def message(self) -> pb.Compare:
        targets = {"version": (pb.Compare.VERSION, "version"), "create": (pb.Compare.CREATE, "create_revision"),
                   "mod": (pb.Compare.MOD, "mod_revision"), "value": (pb.Compare.VALUE, "value"),
                   "lease": (pb.Compare.LEASE, "lease")}
        target, name = targets[self.target]
        return pb.Compare(result=self.op.value, target=target, key=self.key, **{name: self.operand})


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes
    prefix: bool = False


TxnOp = Put | Delete | Get


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) every key starting with `prefix` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # every key


def _op_message(op: TxnOp) -> pb.RequestOp:
    if isinstance(op, Put):
        return pb.RequestOp(request_put=pb.PutRequest(key=op.key, value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
            key=op.key, range_end=prefix_end(op.key) if op.prefix else b""))
    return pb.RequestOp(request_range=pb.RangeRequest(key=op.key, range_end=prefix_end(op.key) if op.prefix else b""))


def _op_result(response: pb.ResponseOp) -> RangeResult | int | None:
    kind = response.WhichOneof("response")
    if kind == "response_range":
        r = response.response_range
        return RangeResult(r.header.revision, tuple(KeyValue.of(kv) for kv in r.kvs), r.more, r.count)
    if kind == "response_delete_range":
        return response.response_delete_range.deleted
    return None


def _key(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else key


# --- the client ------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Endpoint:
    url: str
    target: str
    secure: bool
    channel: grpc.aio.Channel | None = None


def _parse_endpoint(url: str, tls: EtcdTls | None) -> _Endpoint:
    if url.startswith("http://"):
        return _Endpoint(url, url[len("http://"):].rstrip("/"), False)
    if url.startswith("https://"):
        if tls is None:
            raise ValueError(f"{url}: an https endpoint needs tls (ca, and cert and key if the cluster asks)")
        return _Endpoint(url, url[len("https://"):].rstrip("/"), True)
    return _Endpoint(url, url.rstrip("/"), tls is not None)


@dataclass(slots=True)
class _Failures:
    reasons: list[str] = field(default_factory=list)

    def add(self, endpoint: _Endpoint, error: grpc.aio.AioRpcError) -> None:
        self.reasons.append(f"{endpoint.url}: {_reason(error)}")


def _reason(error: grpc.aio.AioRpcError) -> str:
    code = error.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time (down, unreachable or without quorum)"
    details = (error.details() or "").strip()
    if code is grpc.StatusCode.UNAVAILABLE:
        if "connect" in details.lower() or "refused" in details.lower():
            return f"cannot connect ({details[:160]})"
        return f"unavailable ({details[:160]})"
    return f"{code.name.lower()}: {details[:160]}"


class EtcdClient:
    """One client for a cluster: `await client.get(...)`; `await client.close()` when done."""

    def __init__(self, endpoints: Sequence[str], *, tls: EtcdTls | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.tls = tls
        self.timeout = timeout
        self._endpoints = [_parse_endpoint(url, tls) for url in endpoints]
        self._credentials = tls.credentials() if tls is not None and any(e.secure for e in self._endpoints) \
            else None
        self._current = 0
        self.last_answer = 0.0  # time.monotonic() of the last call any endpoint answered (0: none yet)

    @property
    def endpoints(self) -> list[str]:
        return [e.url for e in self._endpoints]

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call goes to first."""
        return self._endpoints[self._current].url

    def _channel(self, endpoint: _Endpoint) -> grpc.aio.Channel:
        if endpoint.channel is None:
            if endpoint.secure:
                assert self._credentials is not None
                endpoint.channel = grpc.aio.secure_channel(endpoint.target, self._credentials, _CHANNEL_OPTIONS)
            else:
                endpoint.channel = grpc.aio.insecure_channel(endpoint.target, _CHANNEL_OPTIONS)
        return endpoint.channel

    async def close(self) -> None:
        for endpoint in self._endpoints:
            if endpoint.channel is not None:
                await endpoint.channel.close()
                endpoint.channel = None

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: str, request, response_type, timeout: float | None = None):
        """Call `method` on the current endpoint, then each other one once, until one answers.

        A caller that gives up first (its own deadline, as the DHCP lease store's `store.timeout` for a whole
        call) cancels the attempt in flight: the next call then starts at the endpoint after that one. Else a
        member that hangs without closing its connections (stopped, starved, a dead link not yet noticed) would
        be asked first by every call, each spending the caller's whole budget on it, and the other members,
        still a quorum, would never be tried (measured: a lease store saw "no quorum" for as long as one of
        three members was stopped)."""
        failures = _Failures()
        n = len(self._endpoints)
        first = self._current
        for step in range(n):
            index = (first + step) % n
            endpoint = self._endpoints[index]
            call = self._channel(endpoint).unary_unary(method, request_serializer=type(request).SerializeToString,
                                                       response_deserializer=response_type.FromString)
            try:
                response = await call(request, timeout=timeout or self.timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _TRY_NEXT:
                    raise EtcdError(f"etcd {endpoint.url}: {_reason(exc)}") from None
                failures.add(endpoint, exc)
                continue
            except asyncio.CancelledError:
                if self._current == first:  # (no other call got an answer meanwhile)
                    self._current = (index + 1) % n
                raise
            self._current = index
            self.last_answer = time.monotonic()
            return response
        raise EtcdUnavailable("etcd unreachable: " + "; ".join(failures.reasons))

    # --- keys ---------------------------------------------------------------------------------------

    async def range(self, key: bytes | str, *, prefix: bool = False, range_end: bytes = b"", revision: int = 0,
                    serializable: bool = False, limit: int = 0, keys_only: bool = False,
                    count_only: bool = False, min_mod_revision: int = 0) -> RangeResult:
        """Keys in [key, range_end) (or starting with `key` when prefix), sorted by key; linearizable
        unless `serializable` (then any member answers from its own copy, without a quorum).
        `min_mod_revision`: only the keys modified at or after it, while `count` stays the number of every key
        in the range (etcd filters after counting)."""
        k = _key(key)
        request = pb.RangeRequest(key=k, range_end=prefix_end(k) if prefix else range_end, revision=revision,
                                  serializable=serializable, limit=limit, keys_only=keys_only,
                                  count_only=count_only, min_mod_revision=min_mod_revision)
        r = await self._unary("/etcdserverpb.KV/Range", request, pb.RangeResponse)
        return RangeResult(r.header.revision, tuple(KeyValue.of(kv) for kv in r.kvs), r.more, r.count)

    async def get(self, key: bytes | str) -> KeyValue | None:
        found = await self.range(key)
        return found.kvs[0] if found.kvs else None

    async def get_prefix(self, prefix: bytes | str, *, revision: int = 0) -> RangeResult:
        return await self.range(prefix, prefix=True, revision=revision)

    async def revision(self) -> int:
        """The cluster's current revision, read linearizably (a quorum round trip, no data)."""
        return (await self.range(b"\0", count_only=True)).revision

    async def put(self, key: bytes | str, value: bytes | str, *, lease: int = 0) -> int:
        """The revision of the write."""
        request = pb.PutRequest(key=_key(key), value=_key(value), lease=lease)
        return (await self._unary("/etcdserverpb.KV/Put", request, pb.PutResponse)).header.revision

    async def delete(self, key: bytes | str, *, prefix: bool = False) -> tuple[int, int]:
        """(revision, number of keys deleted)."""
        k = _key(key)
        request = pb.DeleteRangeRequest(key=k, range_end=prefix_end(k) if prefix else b"")
        r = await self._unary("/etcdserverpb.KV/DeleteRange", request, pb.DeleteRangeResponse)
        return r.header.revision, r.deleted

    async def txn(self, compare: Sequence[Compare], success: Sequence[TxnOp],
                  failure: Sequence[TxnOp] = ()) -> TxnResult:
        """If every compare holds, the success ops, else the failure ops: atomically, in one revision.
        etcd refuses more than --max-txn-ops (128 by default) ops in one txn."""
        request = pb.TxnRequest(compare=[c.message() for c in compare], success=[_op_message(o) for o in success],
                                failure=[_op_message(o) for o in failure])
        r = await self._unary("/etcdserverpb.KV/Txn", request, pb.TxnResponse)
        return TxnResult(r.succeeded, r.header.revision, tuple(_op_result(x) for x in r.responses))

    # --- leases -------------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> Lease:
        r = await self._unary("/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantRequest(TTL=ttl, ID=lease_id),
                              pb.LeaseGrantResponse)
        if r.error:
            raise EtcdError(f"lease grant refused: {r.error}")
        return Lease(r.ID, r.TTL)

    async def lease_revoke(self, lease_id: int) -> None:
        await self._unary("/etcdserverpb.Lease/LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id),
                          pb.LeaseRevokeResponse)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; its TTL again, or 0 when it has already expired (its keys are gone)."""
        n = len(self._endpoints)
        failures = _Failures()
        for step in range(n):
            index = (self._current + step) % n
            endpoint = self._endpoints[index]
            call = self._channel(endpoint).stream_stream(
                "/etcdserverpb.Lease/LeaseKeepAlive", request_serializer=pb.LeaseKeepAliveRequest.SerializeToString,
                response_deserializer=pb.LeaseKeepAliveResponse.FromString)
            stream = call(iter([pb.LeaseKeepAliveRequest(ID=lease_id)]), timeout=self.timeout)
            try:
                async for response in stream:
                    self._current = index
                    self.last_answer = time.monotonic()
                    return response.TTL
                return 0
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _TRY_NEXT:
                    raise EtcdError(f"etcd {endpoint.url}: {_reason(exc)}") from None
                failures.add(endpoint, exc)
            finally:
                stream.cancel()
        raise EtcdUnavailable("etcd unreachable: " + "; ".join(failures.reasons))

    async def keep_alive(self, lease_id: int, ttl: int, on_lost: asyncio.Event | None = None) -> None:
        """Refresh the lease every ttl/3 s until cancelled (run it as a task). Returns when the lease has
        expired (then `on_lost` is set); an unreachable cluster is retried until the TTL would have run out."""
        interval = max(ttl / 3, 0.2)
        while True:
            try:
                if await self.lease_keepalive(lease_id) <= 0:
                    if on_lost is not None:
                        on_lost.set()
                    return
            except EtcdUnavailable as exc:
                logger.warning("etcd: lease %x not refreshed: %s", lease_id, exc)
            await asyncio.sleep(interval)

    async def lease_ttl(self, lease_id: int) -> int:
        """Seconds left (-1: expired or unknown)."""
        r = await self._unary("/etcdserverpb.Lease/LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=lease_id),
                              pb.LeaseTimeToLiveResponse)
        return r.TTL

    # --- cluster ------------------------------------------------------------------------------------

    async def status(self, endpoint: str) -> pb.StatusResponse:
        """One member's status (version, leader, raft index); EtcdUnavailable if it does not answer."""
        target = next(e for e in self._endpoints if e.url == endpoint)
        call = self._channel(target).unary_unary("/etcdserverpb.Maintenance/Status",
                                                 request_serializer=pb.StatusRequest.SerializeToString,
                                                 response_deserializer=pb.StatusResponse.FromString)
        try:
            return await call(pb.StatusRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise EtcdUnavailable(f"etcd {endpoint}: {_reason(exc)}") from None

    # --- watches ------------------------------------------------------------------------------------

    async def watch(self, key: bytes | str, *, prefix: bool = True, start_revision: int = 0,
                    progress: asyncio.Event | None = None) -> AsyncIterator[WatchBatch]:
        """Every change under `key` from `start_revision` on (0: from now), in revision order, as batches.
        Setting `progress` asks etcd for a progress notice (a batch without events carrying etcd's current
        revision: the stream is alive, but events up to that revision may still follow, see the module's
        notes); the iterator clears it. The stream moves to another endpoint when its member is lost, from the
        revision after the last event delivered (never after a notice's revision)."""
        k = _key(key)
        next_revision = start_revision
        lost_since: str | None = None
        step = 0
        while True:
            endpoint = self._endpoints[(self._current + step) % len(self._endpoints)]
            try:
                async for batch in self._watch_stream(endpoint, k, prefix, next_revision, progress):
                    if lost_since is not None:
                        logger.info("etcd: watch on %s resumed through %s at revision %d", k.decode(errors="replace"),
                                    endpoint.url, batch.revision)
                        lost_since = None
                    step = 0
                    self.last_answer = time.monotonic()
                    if batch.events:  # a notice may run ahead of events etcd has yet to send (etcd#15220)
                        next_revision = max(next_revision, batch.revision + 1)
                    yield batch
                reason = f"{endpoint.url}: the stream ended"  # closed by the member (shutting down)
            except grpc.aio.AioRpcError as exc:
                reason = f"{endpoint.url}: {_reason(exc)}"
            # the stream is gone, by an error or an end: resume on the next endpoint
            if lost_since is None:
                logger.warning("etcd: watch on %s lost (%s); resuming from revision %d on the next endpoint",
                               k.decode(errors="replace"), reason, next_revision)
                lost_since = reason
            step += 1
            if step % len(self._endpoints) == 0:
                await asyncio.sleep(0.5)  # every endpoint tried: wait before the next round

    async def _watch_stream(self, endpoint: _Endpoint, key: bytes, prefix: bool, start_revision: int,
                            progress: asyncio.Event | None) -> AsyncIterator[WatchBatch]:
        requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        create = pb.WatchCreateRequest(key=key, range_end=prefix_end(key) if prefix else b"",
                                       start_revision=start_revision)
        requests.put_nowait(pb.WatchRequest(create_request=create))

        async def request_iterator():
            while (request := await requests.get()) is not None:
                yield request

        async def forward_progress() -> None:
            assert progress is not None
            while True:
                await progress.wait()
                progress.clear()
                requests.put_nowait(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

        call = self._channel(endpoint).stream_stream(
            "/etcdserverpb.Watch/Watch", request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.WatchResponse.FromString)
        # hasleader: a member cut off from the leader ends the stream (etcd's WithRequireLeader), so the watch
        # moves to a member that still receives the cluster's writes instead of waiting on one that does not
        stream = call(request_iterator(), metadata=(("hasleader", "true"),))
        forwarder = asyncio.ensure_future(forward_progress()) if progress is not None else None
        events: list[WatchEvent] = []
        try:
            async for response in stream:
                if response.compact_revision:
                    raise EtcdCompacted(f"etcd {endpoint.url}: revision {start_revision} was compacted (now "
                                        f"{response.compact_revision})", response.compact_revision)
                if response.canceled:
                    raise EtcdError(f"etcd {endpoint.url}: watch cancelled: {response.cancel_reason}")
                if response.created:
                    continue
                for event in response.events:
                    kind = EventType.DELETE if event.type == pb.Event.DELETE else EventType.PUT
                    events.append(WatchEvent(kind, KeyValue.of(event.kv)))
                if response.fragment:
                    continue
                # Events: up to the last one's revision. etcd's header can be ahead of them (a watcher catching
                # up gets its events 1,000 revisions at a time, each with the current revision), so only a
                # notice without events says "everything up to the header's revision was delivered".
                revision = events[-1].kv.mod_revision if events else response.header.revision
                yield WatchBatch(revision, tuple(events))
                events = []
        finally:
            if forwarder is not None:
                forwarder.cancel()
            requests.put_nowait(None)
            stream.cancel()
