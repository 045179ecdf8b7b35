"""`bootd apply | get | delete`: a client of the read-write API for people without bootcmd or Terraform.

It speaks the same gRPC as they do (appliance/api/pb), with a client certificate. Files are recognised by
the directory they are in (`profiles/`, `groups/`, `ignition/`, `generic/`, as in a data dir) or else by
their content; `-f` on a data dir pushes all of it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from appliance.api.pb import messages_pb2 as messages
from appliance.api.pb import rpc_pb2_grpc as rpc
from appliance.api.service import group_from_proto, group_to_proto, profile_from_proto, profile_to_proto
from appliance.store import InvalidDocument, parse_group, parse_profile
from appliance.store.writes import Kind, group_json, profile_json

DEFAULT_ENDPOINT = "127.0.0.1:8081"  # bootcmd's defaults
DEFAULT_CA = Path("/etc/matchbox/ca.crt")
DEFAULT_CERT = Path("/etc/matchbox/client.crt")
DEFAULT_KEY = Path("/etc/matchbox/client.key")
TIMEOUT = 25.0  # seconds, terraform-provider-matchbox's dial timeout


class ClientError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Item:
    kind: Kind
    name: str
    data: bytes
    source: Path


def classify(path: Path) -> Item:
    """What a file is: by its directory, else by its content."""
    data = path.read_bytes()
    parent = path.parent.name
    for kind in Kind:
        if parent == kind.value:
            name = path.stem if kind.flat else path.name
            return Item(kind, name, data, path)
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if isinstance(obj, dict):
        keys = {k.lower() for k in obj}
        if isinstance(obj.get("ignition"), dict):
            return Item(Kind.IGNITION, path.name, data, path)
        if keys & {"selector", "metadata"} or ("profile" in keys and "boot" not in keys):
            return Item(Kind.GROUP, path.stem, data, path)
        if keys & {"boot", "ignition_id", "generic_id", "cloud_id"}:
            return Item(Kind.PROFILE, path.stem, data, path)
    if data.lstrip().startswith((b"variant:", b"---")) and b"variant:" in data[:4096]:
        return Item(Kind.IGNITION, path.name, data, path)  # Butane
    raise ClientError(f"{path}: cannot tell what this is; put it under profiles/, groups/, ignition/ or generic/")


def collect(paths: list[Path]) -> Iterator[Item]:
    for path in paths:
        if path.is_dir():
            found = False
            for kind in (Kind.PROFILE, Kind.IGNITION, Kind.GENERIC, Kind.GROUP):  # groups last: their profiles exist
                directory = path / kind.value
                if directory.is_dir():
                    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
                        found = True
                        name = file.stem if kind.flat else str(file.relative_to(directory))
                        yield Item(kind, name, file.read_bytes(), file)
            if not found:
                raise ClientError(f"{path}: no profiles/, groups/, ignition/ or generic/ inside")
        else:
            yield classify(path)


class ApiClient:
    def __init__(self, endpoint: str, ca_file: Path, cert_file: Path, key_file: Path) -> None:
        if "://" in endpoint:
            raise ClientError(f"--endpoint {endpoint!r}: give host:port, without a scheme")
        try:
            ca, cert, key = ca_file.read_bytes(), cert_file.read_bytes(), key_file.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read {exc.filename}: {exc.strerror}") from None
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        self.channel = grpc.secure_channel(endpoint, credentials)
        self.groups = rpc.GroupsStub(self.channel)
        self.profiles = rpc.ProfilesStub(self.channel)
        self.ignition = rpc.IgnitionStub(self.channel)
        self.generic = rpc.GenericStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def put(self, item: Item) -> None:
        if item.kind is Kind.PROFILE:
            try:
                profile = parse_profile(item.data)
            except InvalidDocument as exc:
                raise ClientError(f"{item.source}: {exc}") from None
            if not profile.id:  # a file without an id is named by its file name, as matchbox reads it
                profile = replace(profile, id=item.name)
            self.profiles.ProfilePut(messages.ProfilePutRequest(profile=profile_to_proto(profile)), timeout=TIMEOUT)
        elif item.kind is Kind.GROUP:
            try:
                group = parse_group(item.data)
            except InvalidDocument as exc:
                raise ClientError(f"{item.source}: {exc}") from None
            if not group.id:
                group = replace(group, id=item.name)
            self.groups.GroupPut(messages.GroupPutRequest(group=group_to_proto(group)), timeout=TIMEOUT)
        elif item.kind is Kind.IGNITION:
            self.ignition.IgnitionPut(messages.IgnitionPutRequest(name=item.name, config=item.data), timeout=TIMEOUT)
        else:
            self.generic.GenericPut(messages.GenericPutRequest(name=item.name, config=item.data), timeout=TIMEOUT)

    def get(self, kind: Kind, name: str | None) -> bytes:
        if kind is Kind.PROFILE:
            if name is None:
                found = self.profiles.ProfileList(messages.ProfileListRequest(), timeout=TIMEOUT).profiles
                return "".join(f"{p.id}\t{p.name}\t{p.ignition_id}\t{p.generic_id}\n" for p in found).encode()
            reply = self.profiles.ProfileGet(messages.ProfileGetRequest(id=name), timeout=TIMEOUT)
            return profile_json(profile_from_proto(reply.profile)) + b"\n"
        if kind is Kind.GROUP:
            if name is None:
                found = self.groups.GroupList(messages.GroupListRequest(), timeout=TIMEOUT).groups
                return "".join(f"{g.id}\t{g.profile}\t{','.join(f'{k}={v}' for k, v in sorted(g.selector.items()))}\n"
                               for g in found).encode()
            reply = self.groups.GroupGet(messages.GroupGetRequest(id=name), timeout=TIMEOUT)
            return group_json(group_from_proto(reply.group)) + b"\n"
        if name is None:
            raise ClientError(f"{kind.value}: give a name (the API has no list call for it)")
        if kind is Kind.IGNITION:
            return self.ignition.IgnitionGet(messages.IgnitionGetRequest(name=name), timeout=TIMEOUT).config
        return self.generic.GenericGet(messages.GenericGetRequest(name=name), timeout=TIMEOUT).config

    def delete(self, kind: Kind, name: str) -> None:
        if kind is Kind.PROFILE:
            self.profiles.ProfileDelete(messages.ProfileDeleteRequest(id=name), timeout=TIMEOUT)
        elif kind is Kind.GROUP:
            self.groups.GroupDelete(messages.GroupDeleteRequest(id=name), timeout=TIMEOUT)
        elif kind is Kind.IGNITION:
            self.ignition.IgnitionDelete(messages.IgnitionDeleteRequest(name=name), timeout=TIMEOUT)
        else:
            self.generic.GenericDelete(messages.GenericDeleteRequest(name=name), timeout=TIMEOUT)


KINDS = {"profile": Kind.PROFILE, "profiles": Kind.PROFILE, "group": Kind.GROUP, "groups": Kind.GROUP,
         "ignition": Kind.IGNITION, "generic": Kind.GENERIC}


def run(command: str, args, client_factory=ApiClient) -> int:
    """The CLI's three commands; errors to stderr, exit 1."""
    try:
        client = client_factory(args.endpoint, Path(args.ca_file), Path(args.cert_file), Path(args.key_file))
    except ClientError as exc:
        print(f"bootd {command}: {exc}", file=sys.stderr)
        return 2
    try:
        if command == "apply":
            for item in collect([Path(p) for p in args.file]):
                client.put(item)
                print(f"{item.kind.value}/{item.name}: applied ({item.source})")
        elif command == "get":
            sys.stdout.buffer.write(client.get(KINDS[args.kind], args.name))
            sys.stdout.flush()
        else:
            client.delete(KINDS[args.kind], args.name)
            print(f"{KINDS[args.kind].value}/{args.name}: deleted")
        return 0
    except ClientError as exc:
        print(f"bootd {command}: {exc}", file=sys.stderr)
    except OSError as exc:  # a file given to apply -f
        print(f"bootd {command}: {exc.filename}: cannot read: {exc.strerror}", file=sys.stderr)
    except grpc.RpcError as exc:
        print(f"bootd {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
    finally:
        client.close()
    return 1
