"""The services' proto3 JSON (what `registry.wire` writes) as protobuf messages.

`json_format.ParseDict` does this for any JSON, checking every value on the way, and costs
about 150 µs for one device (eight timestamps through `strptime`): as much as reading the
device from SQLite. This reads only what `registry.wire` writes: camelCase names, 64-bit
integers as strings, bytes as standard base64, enums by name, RFC 3339 timestamps. Per message
type the field table is built once; the message is built in one constructor call. Well-known
types other than Timestamp go through json_format, and names the message does not have are
left out (as the client libraries' REST transports leave them out).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from functools import cache
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ironcore.registry.wire import EPOCH, parse_timestamp

Convert = Callable[[Any], Any]
_INTEGERS = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
}


def to_message(message_type: type[Message], wire: dict[str, Any]) -> Message:
    return message_type(**arguments(message_type.DESCRIPTOR, wire))


def arguments(descriptor: Descriptor, wire: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of a message of type `descriptor` for its proto3 JSON form:
    what a message that holds one takes for it, without building it on its own first."""
    fields = _fields(descriptor)
    out = {}
    for key, value in wire.items():
        found = fields.get(key)
        if found is not None and value is not None:
            name, convert = found
            out[name] = convert(value)
    return out


@cache
def _fields(descriptor: Descriptor) -> dict[str, tuple[str, Convert]]:
    fields: dict[str, tuple[str, Convert]] = {}
    for field in descriptor.fields:
        fields[field.json_name] = fields[field.name] = (field.name, _converter(field))
    return fields


def _converter(field: FieldDescriptor) -> Convert:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key, value = (_single(entry.fields_by_name[n]) for n in ("key", "value"))
        return lambda mapping: {key(k): value(v) for k, v in mapping.items()}
    single = _single(field)
    if field.label == FieldDescriptor.LABEL_REPEATED:
        return lambda values: [single(v) for v in values]
    return single


def _single(field: FieldDescriptor) -> Convert:
    nested = field.message_type
    if nested is not None:
        if nested.full_name == "google.protobuf.Timestamp":
            return _timestamp
        if nested.full_name.startswith("google.protobuf."):
            well_known = message_factory.GetMessageClass(nested)
            return lambda value: json_format.ParseDict(value, well_known())
        return lambda value: arguments(nested, value)
    if field.type in _INTEGERS:
        return int
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64decode
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float
    # Strings, booleans, and enums, which the constructor takes by name.
    return _same


def _same(value: Any) -> Any:
    return value


def _timestamp(value: str) -> dict[str, int]:
    delta = parse_timestamp(value) - EPOCH
    return {"seconds": delta.days * 86400 + delta.seconds, "nanos": delta.microseconds * 1000}
