"""A gRPC client built on Python's grpcio, for the invoker's interop tests.

The Rust integration tests (tests/interop.rs) start the real `invoker` binary and run this
script against it, so that HTTP/2 and gRPC interoperability is proven with a stack other than
tonic. It compiles the project's .proto files at run time with grpcio-tools, reads one JSON
request on stdin, performs it, and prints one JSON result line on stdout.

Usage: client.py --target HOST:PORT [--proto-dir DIR] < request.json
       client.py --target unix:PATH ...   (the invoker's Unix socket, --socket; grpcio then
                                           sends the percent-encoded path as :authority)

Requests:
  {"rpc": "call", "messages": [{"payload": "text", "headers": {"Content-Type": ["text/plain"]}}]}
  {"rpc": "invoke", "start": {"expectedContentTypes": ["text/plain"]},
   "frames": [{"payload": "1", "contentType": "text/plain", "headers": {}, "argIndex": 0}]}
  {"rpc": "health", "service": ""}
Each may carry "timeout" (seconds, default 10), applied as the RPC deadline.

Result: {"code": "OK", "details": "", "messages": [...]} (or "status" for health), where
code is the grpc.StatusCode name the call ended with; messages received before an error are
listed too.
"""

import argparse
import base64
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

HEALTH_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def load_protos(proto_dir):
    """Compiles function.proto and riff.proto into a temporary package, imports the modules and
    removes the package (what is imported stays loaded); returns the modules."""
    with tempfile.TemporaryDirectory(prefix="invoker-interop-") as out:
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        for name in ("function.proto", "riff.proto"):
            code = protoc.main([
                "grpc_tools.protoc",
                f"-I{proto_dir}",
                f"-I{include}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                os.path.join(proto_dir, name),
            ])
            if code != 0:
                raise SystemExit(f"protoc failed on {name}")
        sys.path.insert(0, out)
        try:
            return {m: importlib.import_module(m) for m in
                    ("function_pb2", "function_pb2_grpc", "riff_pb2", "riff_pb2_grpc")}
        finally:
            sys.path.remove(out)


def payload_of(item):
    if "payload_b64" in item:
        return base64.b64decode(item["payload_b64"])
    return item.get("payload", "").encode("utf-8")


def describe_payload(data):
    return {
        "payload": data.decode("utf-8", errors="replace"),
        "payload_b64": base64.b64encode(data).decode("ascii"),
    }


def finish(messages, error=None, **extra):
    if error is None:
        result = {"code": "OK", "details": ""}
    else:
        result = {"code": error.code().name, "details": error.details() or ""}
    result["messages"] = messages
    result.update(extra)
    return result


def do_call(channel, modules, request, timeout):
    pb = modules["function_pb2"]
    stub = modules["function_pb2_grpc"].MessageFunctionStub(channel)

    def requests():
        for item in request.get("messages", []):
            message = pb.Message(payload=payload_of(item))
            for name, values in item.get("headers", {}).items():
                message.headers[name].values.extend(values)
            yield message

    received = []
    try:
        for reply in stub.Call(requests(), timeout=timeout):
            entry = describe_payload(reply.payload)
            entry["headers"] = {k: list(v.values) for k, v in reply.headers.items()}
            received.append(entry)
    except grpc.RpcError as error:
        return finish(received, error)
    return finish(received)


def do_invoke(channel, modules, request, timeout):
    pb = modules["riff_pb2"]
    stub = modules["riff_pb2_grpc"].RiffStub(channel)

    def signals():
        if "start" in request:
            start = request["start"]
            yield pb.InputSignal(start=pb.StartFrame(
                expectedContentTypes=start.get("expectedContentTypes", []),
                inputNames=start.get("inputNames", []),
                outputNames=start.get("outputNames", []),
            ))
        for frame in request.get("frames", []):
            yield pb.InputSignal(data=pb.InputFrame(
                payload=payload_of(frame),
                contentType=frame.get("contentType", ""),
                headers=frame.get("headers", {}),
                argIndex=frame.get("argIndex", 0),
            ))

    received = []
    try:
        for signal in stub.Invoke(signals(), timeout=timeout):
            frame = signal.data
            entry = describe_payload(frame.payload)
            entry.update({
                "contentType": frame.contentType,
                "headers": dict(frame.headers),
                "resultIndex": frame.resultIndex,
            })
            received.append(entry)
    except grpc.RpcError as error:
        return finish(received, error)
    return finish(received)


def do_health(channel, request, timeout):
    """grpc.health.v1.Health/Check, encoded by hand: field 1 is the service name / status."""
    service = request.get("service", "").encode("utf-8")
    body = (b"\x0a" + bytes([len(service)]) + service) if service else b""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        reply = check(body, timeout=timeout)
    except grpc.RpcError as error:
        return finish([], error)
    status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
    return finish([], None, status=HEALTH_STATUSES.get(status, str(status)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the invoker, or unix:PATH")
    default_protos = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
    parser.add_argument("--proto-dir", default=default_protos)
    args = parser.parse_args()

    request = json.load(sys.stdin)
    timeout = float(request.get("timeout", 10))
    modules = load_protos(os.path.abspath(args.proto_dir))
    with grpc.insecure_channel(args.target) as channel:
        rpc = request.get("rpc")
        if rpc == "call":
            result = do_call(channel, modules, request, timeout)
        elif rpc == "invoke":
            result = do_invoke(channel, modules, request, timeout)
        elif rpc == "health":
            result = do_health(channel, request, timeout)
        else:
            raise SystemExit(f"unknown rpc {rpc!r}: use call, invoke or health")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
