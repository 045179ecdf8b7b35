"""A matchbox gRPC client generated at run time from the unmodified upstream .proto files in
tests/reference/matchbox-protos (not from bootd's copy), making the calls terraform-provider-matchbox makes.
It runs in its own process: bootd's generated modules register the same proto file names.

    python -m tests.reference.matchbox_client --endpoint H:P --ca CA [--cert C --key K] calls < calls.json
    python -m tests.reference.matchbox_client ... stream --count N --names K

`calls`: stdin is a JSON list of [service, method, request-as-JSON]; stdout a JSON list of
{"ok": response-as-JSON} or {"code": "UNKNOWN", "details": ...}.
`stream`: N writes (IgnitionPut of JSON `{"name": ..., "version": i}` and ProfilePut with `ignition_id`
`v<i>`), cycling over K names, each retried until it succeeds (the server may be killed and restarted
meanwhile); stdout: one JSON line per acknowledged write.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

PROTOS = Path(__file__).parent / "matchbox-protos"
FILES = ("matchbox/storage/storagepb/storage.proto", "matchbox/server/serverpb/messages.proto",
         "matchbox/rpc/rpcpb/rpc.proto")


def generated() -> tuple:
    """(messages module, rpc grpc module), generated into a cache directory keyed by the protos' hash."""
    from grpc_tools import protoc

    digest = hashlib.sha256(b"".join((PROTOS / f).read_bytes() for f in FILES)).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"bootd-matchbox-client-{digest}"
    if not (out / "matchbox/rpc/rpcpb/rpc_pb2_grpc.py").is_file():
        out.mkdir(exist_ok=True)
        if protoc.main(["protoc", f"-I{PROTOS}", f"--python_out={out}", f"--grpc_python_out={out}",
                        *(str(PROTOS / f) for f in FILES)]) != 0:
            raise SystemExit("protoc failed")
        for directory in ("matchbox", "matchbox/rpc", "matchbox/server", "matchbox/storage"):
            (out / directory / "__init__.py").touch()
    sys.path.insert(0, str(out))
    return (importlib.import_module("matchbox.server.serverpb.messages_pb2"),
            importlib.import_module("matchbox.rpc.rpcpb.rpc_pb2_grpc"))


def channel(args):
    import grpc

    ca = Path(args.ca).read_bytes()
    key = Path(args.key).read_bytes() if args.key else None
    cert = Path(args.cert).read_bytes() if args.cert else None
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(args.endpoint, credentials)


def run_calls(args) -> int:
    import grpc
    from google.protobuf import json_format

    messages, rpc = generated()
    chan = channel(args)
    results = []
    for service, method, request in json.load(sys.stdin):
        stub = getattr(rpc, f"{service}Stub")(chan)
        message = getattr(messages, f"{method}Request")()
        json_format.ParseDict(request, message)
        try:
            reply = getattr(stub, method)(message, timeout=25)
            results.append({"ok": json_format.MessageToDict(reply, preserving_proto_field_name=True)})
        except grpc.RpcError as exc:
            results.append({"code": exc.code().name, "details": exc.details()})
    json.dump(results, sys.stdout)
    return 0


def run_stream(args) -> int:
    import grpc

    messages, rpc = generated()
    ignition = rpc.IgnitionStub(channel(args))
    profiles = rpc.ProfilesStub(channel(args))
    for i in range(args.count):
        name = f"node{i % args.names}"
        config = json.dumps({"ignition": {"version": "3.4.0"}, "name": name, "version": i, "pad": "x" * (i % 700)})
        calls = ((ignition.IgnitionPut, messages.IgnitionPutRequest(name=f"{name}.ign", config=config.encode())),
                 (profiles.ProfilePut, messages.ProfilePutRequest(profile={"id": name, "ignition_id": f"v{i}"})))
        for call, request in calls:
            deadline = time.monotonic() + 60
            while True:
                try:
                    call(request, timeout=5, wait_for_ready=True)
                    break
                except grpc.RpcError as exc:
                    if time.monotonic() > deadline:
                        print(json.dumps({"gave_up": i, "code": exc.code().name}), flush=True)
                        return 1
                    time.sleep(0.05)
        print(json.dumps({"acked": i, "name": name}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("calls")
    stream = commands.add_parser("stream")
    stream.add_argument("--count", type=int, default=1000)
    stream.add_argument("--names", type=int, default=5)
    args = parser.parse_args()
    return run_calls(args) if args.command == "calls" else run_stream(args)


if __name__ == "__main__":
    raise SystemExit(main())
