"""Plays the StateFun cluster's side of the wire for tests/statefun.rs, with Python's protobuf
runtime (an implementation independent of the invoker's prost types).

    statefun_driver.py GENERATED encode   < batch.json  > ToFunction bytes
    statefun_driver.py GENERATED decode   < FromFunction bytes > JSON

GENERATED is the directory `grpc_tools.protoc` compiled the invoker's proto/statefun/*.proto
into. In the JSON a typed value may be written {"typename": T, "string"|"int"|"long"|"float"|
"double"|"bool"|"json"|"raw": V}, encoded here as StateFun's wrapper message (or JSON text, or
the bytes of V's UTF-8); a decoded TypedValue gains "decoded": its value read back the same
way (and a Kafka producer record's fields).
"""

import base64
import json
import sys

sys.path.insert(0, sys.argv[1])

from google.protobuf import json_format  # noqa: E402

import kafka_egress_pb2  # noqa: E402
import request_reply_pb2  # noqa: E402
import types_pb2  # noqa: E402

WRAPPERS = {
    "string": ("io.statefun.types/string", types_pb2.StringWrapper),
    "int": ("io.statefun.types/int", types_pb2.IntWrapper),
    "long": ("io.statefun.types/long", types_pb2.LongWrapper),
    "float": ("io.statefun.types/float", types_pb2.FloatWrapper),
    "double": ("io.statefun.types/double", types_pb2.DoubleWrapper),
    "bool": ("io.statefun.types/bool", types_pb2.BooleanWrapper),
}
BY_TYPENAME = {typename: wrapper for typename, wrapper in WRAPPERS.values()}
KAFKA = "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord"


def encode_values(node):
    if isinstance(node, list):
        return [encode_values(n) for n in node]
    if not isinstance(node, dict):
        return node
    for kind, (_, wrapper) in WRAPPERS.items():
        if kind in node and "typename" in node:
            raw = wrapper(value=node[kind]).SerializeToString()
            return {"typename": node["typename"], "has_value": True,
                    "value": base64.b64encode(raw).decode()}
    if "json" in node and "typename" in node:
        raw = json.dumps(node["json"]).encode()
        return {"typename": node["typename"], "has_value": True,
                "value": base64.b64encode(raw).decode()}
    if "raw" in node and "typename" in node:
        return {"typename": node["typename"], "has_value": True,
                "value": base64.b64encode(node["raw"].encode()).decode()}
    return {k: encode_values(v) for k, v in node.items()}


def decode_value(typename, raw):
    if typename in BY_TYPENAME:
        message = BY_TYPENAME[typename]()
        message.ParseFromString(raw)
        return message.value
    if typename == KAFKA:
        record = kafka_egress_pb2.KafkaProducerRecord()
        record.ParseFromString(raw)
        value = types_pb2.StringWrapper()
        value.ParseFromString(record.value_bytes)
        return {"topic": record.topic, "key": record.key, "value_as_string": value.value}
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def decode_values(node):
    if isinstance(node, list):
        return [decode_values(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: decode_values(v) for k, v in node.items()}
    if "typename" in node and "value" in node:
        out["decoded"] = decode_value(node["typename"], base64.b64decode(node["value"]))
    return out


def main():
    command = sys.argv[2]
    if command == "encode":
        batch = encode_values(json.load(sys.stdin))
        message = json_format.ParseDict(batch, request_reply_pb2.ToFunction())
        sys.stdout.buffer.write(message.SerializeToString())
    elif command == "decode":
        message = request_reply_pb2.FromFunction()
        message.ParseFromString(sys.stdin.buffer.read())
        as_dict = json_format.MessageToDict(
            message, preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True)
        json.dump(decode_values(as_dict), sys.stdout)
    elif command == "wrap":
        # wrap KIND VALUE: the wrapper message's bytes, base64 (for the tests' own checks).
        kind, value = sys.argv[3], json.loads(sys.argv[4])
        raw = WRAPPERS[kind][1](value=value).SerializeToString()
        sys.stdout.write(base64.b64encode(raw).decode())
    else:
        sys.exit(f"unknown command {command}")


main()
