"""matchbox's read-write API (rpcpb.Groups, Profiles, Ignition, Generic, Select) on grpc.aio, over mutual TLS.

Wire compatibility: the messages and method paths are generated from matchbox's unmodified .proto files
(appliance/api/pb). Status codes are matchbox's, because bootcmd and terraform-provider-matchbox act on
them: NOT_FOUND only for "no matching group/profile" from Select, UNKNOWN for everything else (a missing
object on Get or Delete too: Terraform treats any Get error as "deleted, create it again"). Messages name
ids and reasons, never server paths (matchbox leaks `open /var/lib/matchbox/...`).

Who may call: a client whose certificate chains to the configured CA (the TLS handshake refuses anyone
else) and is meant for clients (extended key usage clientAuth, or none): a server certificate from the same
CA is refused with UNAUTHENTICATED before anything is read or written.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

import grpc

from appliance.api.pb import messages_pb2 as messages
from appliance.api.pb import rpc_pb2_grpc as rpc
from appliance.api.pb import storage_pb2 as storage
from appliance.config import ApiConfig
from appliance.events import Event, EventBus, EventKind
from appliance.store import DataDir, Group, NetBoot, Profile, labels_from_pairs, select_group
from appliance.store.writes import DataWriter, Kind, StoreUnavailable, WriteRefused, metadata_object

logger = logging.getLogger(__name__)

NO_MATCHING_GROUP = "matchbox: No matching Group"
NO_MATCHING_PROFILE = "matchbox: No matching Profile"


# --- proto <-> bootd's model ------------------------------------------------------------------------------

def profile_from_proto(message: storage.Profile) -> Profile:
    boot = None
    if message.HasField("boot"):
        boot = NetBoot(kernel=message.boot.kernel, initrd=tuple(message.boot.initrd), args=tuple(message.boot.args))
    return Profile(id=message.id, name=message.name, ignition_id=message.ignition_id, cloud_id=message.cloud_id,
                   generic_id=message.generic_id, boot=boot)


def profile_to_proto(profile: Profile) -> storage.Profile:
    message = storage.Profile(id=profile.id, name=profile.name, ignition_id=profile.ignition_id,
                              cloud_id=profile.cloud_id, generic_id=profile.generic_id)
    if profile.boot is not None:
        message.boot.CopyFrom(storage.NetBoot(kernel=profile.boot.kernel, initrd=profile.boot.initrd,
                                              args=profile.boot.args))
    return message


def group_from_proto(message: storage.Group) -> Group:
    return Group(id=message.id, name=message.name, profile=message.profile,
                 selector=MappingProxyType(dict(message.selector)),
                 metadata=MappingProxyType(metadata_object(message.metadata, message.id)))


def group_to_proto(group: Group) -> storage.Group:
    metadata = json.dumps(dict(group.metadata), separators=(",", ":")).encode() if group.metadata else b""
    return storage.Group(id=group.id, name=group.name, profile=group.profile, selector=dict(group.selector),
                         metadata=metadata)


# --- who is calling ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Caller:
    peer: str  # gRPC's form: ipv4:10.0.0.5:41234, ipv6:%5B::1%5D:41234
    name: str  # the certificate's common name, for logs and events

    @property
    def address(self) -> str:
        host = unquote(self.peer.split(":", 1)[-1]).rpartition(":")[0]
        return host.strip("[]") or self.peer


def caller_of(context: grpc.aio.ServicerContext) -> Caller | None:
    """The verified client, or None when its certificate is not one for clients."""
    auth = context.auth_context()
    pem = (auth.get("x509_pem_cert") or [b""])[0]
    peer = context.peer()
    if not pem:
        return None
    # cryptography's x509 is imported at the first call, not with the API: it holds 7-8 MB that an idle bootd
    # with the API on need not carry (issue 16's idle RSS); grpc's own TLS has verified the chain already
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certificate = x509.load_pem_x509_certificate(pem)
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            return None
    except x509.ExtensionNotFound:
        pass  # no EKU: any purpose, as TLS libraries read it
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return Caller(peer, str(names[0].value) if names else "(no common name)")


# --- the services ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class Backend:
    """What the services act on. `store` is the HTTP side's live view (swapped on reload); writes go to
    its data dir, and the HTTP side sees them at the next request."""

    store: Callable[[], DataDir]
    bus: EventBus

    @property
    def writer(self) -> DataWriter:
        store = self.store()
        if (etcd_writer := getattr(store, "writer", None)) is not None:  # store.backend etcd: EtcdStore
            return etcd_writer()
        return DataWriter(store.root)

    def changed(self, caller: Caller, what: str) -> None:
        self.bus.publish(Event(kind=EventKind.DATA, mac=None, peer=caller.address,
                               detail=f"{what} (client {caller.name!r})"))


Reply = tuple[Any, str | None]  # (the response, what changed: for the `data` event)
Handler = Callable[[Backend, Any, "Caller"], Reply]


def _call(name: str, handler: Handler):
    """A servicer method: authorise, run the handler in a worker thread (file I/O and fsync must not stall
    DHCP and TFTP on the loop), publish what changed, map errors to matchbox's status codes."""
    async def method(self: _Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = caller_of(context)
        if caller is None:
            logger.warning("api: %s refused: the client certificate is not for clients (%s)", name, context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate (clientAuth) is required")
        try:
            response, change = await asyncio.to_thread(handler, self.backend, request, caller)
        except _NoMatch as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except StoreUnavailable as exc:  # etcd lost: nothing was written; the client may retry
            logger.warning("api: %s from %r failed: %s", name, caller.name, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except WriteRefused as exc:
            logger.info("api: %s from %r refused: %s", name, caller.name, exc)
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))
        except OSError as exc:  # a full disk, a read-only data dir: say what, not where
            logger.error("api: %s from %r failed: %s", name, caller.name, exc)
            await context.abort(grpc.StatusCode.UNKNOWN, f"storage error: {exc.strerror or exc}")
        if change is not None:
            self.backend.changed(caller, change)
        return response
    method.__name__ = name
    return method


class _NoMatch(Exception):
    pass


class _Servicer:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend


def _group_put(b: Backend, r: messages.GroupPutRequest, c: Caller) -> Reply:
    group = group_from_proto(r.group)
    b.writer.put_group(group)
    return messages.GroupPutResponse(), f"group {group.id!r} written (profile {group.profile!r})"


def _group_get(b: Backend, r: messages.GroupGetRequest, c: Caller) -> Reply:
    return messages.GroupGetResponse(group=group_to_proto(b.writer.get_group(r.id))), None


def _group_delete(b: Backend, r: messages.GroupDeleteRequest, c: Caller) -> Reply:
    b.writer.delete(Kind.GROUP, r.id)
    return messages.GroupDeleteResponse(), f"group {r.id!r} deleted"


def _stored(b: Backend, kind: Kind, read: Callable[[str], Any], to_proto: Callable[[Any], Any]) -> list[Any]:
    """Every stored profile or group; one broken file does not hide the others (matchbox skips them too)."""
    items = []
    for name in b.writer.list(kind):
        try:
            items.append(to_proto(read(name)))
        except WriteRefused as exc:
            logger.info("api: listing %s skips %s", kind.value, exc)
    return items


def _group_list(b: Backend, r: messages.GroupListRequest, c: Caller) -> Reply:
    return messages.GroupListResponse(groups=_stored(b, Kind.GROUP, b.writer.get_group, group_to_proto)), None


def _profile_put(b: Backend, r: messages.ProfilePutRequest, c: Caller) -> Reply:
    profile = profile_from_proto(r.profile)
    b.writer.put_profile(profile)
    return messages.ProfilePutResponse(), f"profile {profile.id!r} written"


def _profile_get(b: Backend, r: messages.ProfileGetRequest, c: Caller) -> Reply:
    return messages.ProfileGetResponse(profile=profile_to_proto(b.writer.get_profile(r.id))), None


def _profile_delete(b: Backend, r: messages.ProfileDeleteRequest, c: Caller) -> Reply:
    b.writer.delete(Kind.PROFILE, r.id)
    return messages.ProfileDeleteResponse(), f"profile {r.id!r} deleted"


def _profile_list(b: Backend, r: messages.ProfileListRequest, c: Caller) -> Reply:
    return messages.ProfileListResponse(profiles=_stored(b, Kind.PROFILE, b.writer.get_profile, profile_to_proto)), None


def _file_calls(kind: Kind, put: type, get: type, delete: type) -> tuple[Callable, Callable, Callable]:
    label = "Ignition config" if kind is Kind.IGNITION else "generic config"

    def do_put(b: Backend, r: Any, c: Caller) -> Reply:
        b.writer.put(kind, r.name, r.config)
        return put(), f"{label} {r.name!r} written ({len(r.config)} bytes)"

    def do_get(b: Backend, r: Any, c: Caller) -> Reply:
        return get(config=b.writer.read(kind, r.name)), None

    def do_delete(b: Backend, r: Any, c: Caller) -> Reply:
        b.writer.delete(kind, r.name)
        return delete(), f"{label} {r.name!r} deleted"

    return do_put, do_get, do_delete


_ign_put, _ign_get, _ign_delete = _file_calls(Kind.IGNITION, messages.IgnitionPutResponse,
                                              messages.IgnitionGetResponse, messages.IgnitionDeleteResponse)
_gen_put, _gen_get, _gen_delete = _file_calls(Kind.GENERIC, messages.GenericPutResponse,
                                              messages.GenericGetResponse, messages.GenericDeleteResponse)


def _selected(b: Backend, labels: Any) -> Group:
    group = select_group(b.store().groups(), labels_from_pairs(labels).labels)  # as the HTTP side reads them
    if group is None:
        raise _NoMatch(NO_MATCHING_GROUP)
    return group


def _select_group(b: Backend, r: messages.SelectGroupRequest, c: Caller) -> Reply:
    return messages.SelectGroupResponse(group=group_to_proto(_selected(b, r.labels))), None


def _select_profile(b: Backend, r: messages.SelectProfileRequest, c: Caller) -> Reply:
    group = _selected(b, r.labels)
    profile = b.store().profile(group.profile) if group.profile else None
    if profile is None:
        raise _NoMatch(NO_MATCHING_PROFILE)
    return messages.SelectProfileResponse(profile=profile_to_proto(profile)), None


class GroupsServicer(_Servicer, rpc.GroupsServicer):
    GroupPut = _call("GroupPut", _group_put)
    GroupGet = _call("GroupGet", _group_get)
    GroupDelete = _call("GroupDelete", _group_delete)
    GroupList = _call("GroupList", _group_list)


class ProfilesServicer(_Servicer, rpc.ProfilesServicer):
    ProfilePut = _call("ProfilePut", _profile_put)
    ProfileGet = _call("ProfileGet", _profile_get)
    ProfileDelete = _call("ProfileDelete", _profile_delete)
    ProfileList = _call("ProfileList", _profile_list)


class IgnitionServicer(_Servicer, rpc.IgnitionServicer):
    IgnitionPut = _call("IgnitionPut", _ign_put)
    IgnitionGet = _call("IgnitionGet", _ign_get)
    IgnitionDelete = _call("IgnitionDelete", _ign_delete)


class GenericServicer(_Servicer, rpc.GenericServicer):
    GenericPut = _call("GenericPut", _gen_put)
    GenericGet = _call("GenericGet", _gen_get)
    GenericDelete = _call("GenericDelete", _gen_delete)


class SelectServicer(_Servicer, rpc.SelectServicer):
    SelectGroup = _call("SelectGroup", _select_group)
    SelectProfile = _call("SelectProfile", _select_profile)


# --- the server ------------------------------------------------------------------------------------

class ApiError(Exception):
    """The API cannot start (unreadable certificates, a port in use); the message says which file or port."""


def server_credentials(config: ApiConfig) -> grpc.ServerCredentials:
    try:
        key, cert, ca = (Path(p).read_bytes() for p in (config.key_file, config.cert_file, config.ca_file))
    except OSError as exc:
        raise ApiError(f"api: cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


async def start_api(config: ApiConfig, backend: Backend,
                    more: tuple[grpc.GenericRpcHandler, ...] = ()) -> tuple[grpc.aio.Server, int]:
    """The running server and the port it listens on; `more`: bootd's own services (bootd.Power)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", config.max_message_bytes),
                                      ("grpc.max_send_message_length", config.max_message_bytes),
                                      ("grpc.so_reuseport", 0)])
    rpc.add_GroupsServicer_to_server(GroupsServicer(backend), server)
    rpc.add_ProfilesServicer_to_server(ProfilesServicer(backend), server)
    rpc.add_IgnitionServicer_to_server(IgnitionServicer(backend), server)
    rpc.add_GenericServicer_to_server(GenericServicer(backend), server)
    rpc.add_SelectServicer_to_server(SelectServicer(backend), server)
    server.add_generic_rpc_handlers(more)
    for name in backend.writer.sweep_temp_files():
        logger.warning("api: removed %s, a partial write left by a crash (the old file is intact)", name)
    host = str(config.address) if config.address is not None else "[::]"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    try:
        port = server.add_secure_port(f"{host}:{config.port}", server_credentials(config))
    except RuntimeError as exc:
        raise ApiError(f"api: cannot listen on {host}:{config.port}: {exc}") from None
    if port == 0:
        raise ApiError(f"api: cannot listen on {host}:{config.port} (in use, or the certificates do not load)")
    await server.start()
    return server, port
