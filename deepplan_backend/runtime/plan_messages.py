"""The protobuf message classes of `plan.proto`, built at import time without generated code.

`protoc`-generated `_pb2.py` modules of recent grpcio-tools refuse to import under older protobuf runtimes (they
embed a runtime version check), and the GPU machines' protobuf version is not ours to choose. So this module
describes the schema as a `FileDescriptorProto` and asks the runtime for the classes, which works from protobuf
4.25 through 7.x. `plan.proto` stays the documented schema; a unit test compiles it with `grpc_tools.protoc`
and asserts its descriptor equals `FILE_DESCRIPTOR`, so the two cannot drift apart.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "deepplan.plan"
PROTO_FILE = "plan.proto"

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# message name -> fields as (name, number, type, repeated, message type name or "")
_SCHEMA: tuple[tuple[str, tuple[tuple[str, int, int, bool, str], ...]], ...] = (
    (
        "PlanKey",
        (
            ("model", 1, _F.TYPE_STRING, False, ""),
            ("batch_size", 2, _F.TYPE_UINT32, False, ""),
            ("seq_len", 3, _F.TYPE_UINT32, False, ""),
            ("dtype", 4, _F.TYPE_STRING, False, ""),
            ("gpu_name", 5, _F.TYPE_STRING, False, ""),
            ("execution", 6, _F.TYPE_STRING, False, ""),
        ),
    ),
    (
        "Layer",
        (
            ("index", 1, _F.TYPE_UINT32, False, ""),
            ("name", 2, _F.TYPE_STRING, False, ""),
            ("nbytes", 3, _F.TYPE_UINT64, False, ""),
            ("load_ms", 4, _F.TYPE_DOUBLE, False, ""),
            ("exec_ms", 5, _F.TYPE_DOUBLE, False, ""),
            ("dha_exec_ms", 6, _F.TYPE_DOUBLE, False, ""),
        ),
    ),
    (
        "ConcurrentBandwidth",
        (
            ("num_devices", 1, _F.TYPE_UINT32, False, ""),
            ("gbps", 2, _F.TYPE_DOUBLE, False, ""),
        ),
    ),
    (
        "Links",
        (
            ("h2d_gbps", 1, _F.TYPE_DOUBLE, False, ""),
            ("p2p_gbps", 2, _F.TYPE_DOUBLE, False, ""),
            ("concurrent_h2d", 3, _F.TYPE_MESSAGE, True, "ConcurrentBandwidth"),
            ("setup_ms", 4, _F.TYPE_DOUBLE, False, ""),
            ("copy_start_ms", 5, _F.TYPE_DOUBLE, False, ""),
            ("tail_ms", 6, _F.TYPE_DOUBLE, False, ""),
            ("copy_efficiency", 7, _F.TYPE_DOUBLE, False, ""),
            ("peer_chunk_ms", 8, _F.TYPE_DOUBLE, False, ""),
        ),
    ),
    (
        "Variant",
        (
            ("engine", 1, _F.TYPE_STRING, False, ""),
            ("num_devices", 2, _F.TYPE_UINT32, False, ""),
            ("sources", 3, _F.TYPE_SINT32, True, ""),
            ("predicted_ms", 4, _F.TYPE_DOUBLE, False, ""),
        ),
    ),
    (
        "PlanFile",
        (
            ("schema_version", 1, _F.TYPE_UINT32, False, ""),
            ("key", 2, _F.TYPE_MESSAGE, False, "PlanKey"),
            ("fingerprint", 3, _F.TYPE_STRING, False, ""),
            ("created_at", 4, _F.TYPE_STRING, False, ""),
            ("layers", 5, _F.TYPE_MESSAGE, True, "Layer"),
            ("links", 6, _F.TYPE_MESSAGE, False, "Links"),
            ("warm_ms", 7, _F.TYPE_DOUBLE, False, ""),
            ("variants", 8, _F.TYPE_MESSAGE, True, "Variant"),
        ),
    ),
)


def _json_name(name: str) -> str:
    """Protoc's JSON name for a field: snake_case to lowerCamelCase."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def build_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The `FileDescriptorProto` that `protoc` makes from plan.proto (field for field)."""
    file = descriptor_pb2.FileDescriptorProto(name=PROTO_FILE, package=PACKAGE, syntax="proto3")
    for message_name, fields in _SCHEMA:
        message = file.message_type.add(name=message_name)
        for name, number, ftype, repeated, type_name in fields:
            field = message.field.add(
                name=name,
                number=number,
                label=_REPEATED if repeated else _OPTIONAL,
                type=ftype,
                json_name=_json_name(name),
            )
            if type_name:
                field.type_name = f".{PACKAGE}.{type_name}"
    return file


FILE_DESCRIPTOR = build_file_descriptor()

# A private pool: the classes never clash with another module registering a file named plan.proto.
_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(FILE_DESCRIPTOR.SerializeToString())


def _message_class(name: str) -> type:
    """The runtime's message class for `deepplan.plan.<name>`, on old and new protobuf alike."""
    descriptor = _POOL.FindMessageTypeByName(f"{PACKAGE}.{name}")
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is not None:  # protobuf >= 4.22
        return get_class(descriptor)
    return message_factory.MessageFactory(_POOL).GetPrototype(descriptor)  # older runtimes


PlanKeyMessage = _message_class("PlanKey")
LayerMessage = _message_class("Layer")
ConcurrentBandwidthMessage = _message_class("ConcurrentBandwidth")
LinksMessage = _message_class("Links")
VariantMessage = _message_class("Variant")
PlanFileMessage = _message_class("PlanFile")
