"""The proto3 JSON mapping that Cloud IoT Core spoke, as pydantic types.

Output is what Google's front end emitted: camelCase names, 64-bit integers as strings, bytes
as padded standard base64, enums by name, RFC 3339 timestamps with `Z`, and default scalar
values left out. Input is what real clients send: camelCase or snake_case names, integers as
numbers or strings, base64 in the standard or URL-safe alphabet with or without padding, enums
by name or by number, `null` meaning "unset".
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any, ClassVar, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ironcore.errors import FieldViolation, InvalidArgument

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _parse_int64(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,20}\s*", value)
    ):
        number = int(value)
    else:
        raise ValueError(f"expected a 64-bit integer, got {value!r:.40}")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise ValueError("integer out of the 64-bit range")
    return number


def _parse_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    text = value.strip().replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f'Base64 decoding failed for "{value:.40}"') from None


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def parse_timestamp(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 timestamp string")
    # Google emitted up to nine fractional digits; Python keeps six.
    text = _FRACTION.sub(lambda m: m.group(1), value.strip(), count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an RFC 3339 timestamp, got {value!r:.40}") from None
    if parsed.tzinfo is None:
        raise ValueError("timestamp needs a time zone ('Z' or an offset)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"timestamp out of range: {value!r:.40}") from None


def format_timestamp(value: datetime) -> str:
    value = value.astimezone(UTC)
    # Not strftime("%Y"): it does not pad years before 1000 to four digits.
    text = f"{value.year:04d}-{value:%m-%dT%H:%M:%S}"
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


Int64 = Annotated[
    int,
    PlainValidator(_parse_int64),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "format": "int64"}),
]
Bytes = Annotated[
    bytes,
    PlainValidator(_parse_bytes),
    PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str),
    WithJsonSchema({"type": "string", "format": "byte"}),
]
Timestamp = Annotated[
    datetime,
    PlainValidator(parse_timestamp),
    PlainSerializer(format_timestamp, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def enum_type(enum: type[IntEnum]) -> Any:
    """An enum read by name or number and written by name, as proto3 JSON does."""

    def parse(value: object) -> IntEnum:
        if isinstance(value, enum):
            return value
        if isinstance(value, str) and value in enum.__members__:
            return enum[value]
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return enum(value)
            except ValueError:
                pass
        raise ValueError(f"expected one of {', '.join(enum.__members__)}, got {value!r:.40}")

    names = list(enum.__members__)
    numbers = [member.value for member in enum]
    schema = {"anyOf": [{"type": "string", "enum": names}, {"type": "integer", "enum": numbers}]}
    return Annotated[
        enum,
        PlainValidator(parse),
        PlainSerializer(lambda e: e.name, return_type=str),
        WithJsonSchema(schema, mode="validation"),
        WithJsonSchema({"type": "string", "enum": names}, mode="serialization"),
    ]


# The validation context of resources read back from the store.
STORED: dict[str, bool] = {"stored": True}


class Message(BaseModel):
    """A proto3 message on the wire.

    `ALWAYS` names the fields (by their wire name) that are written even at their default,
    because Cloud IoT Core wrote them (unset `last*Time` fields as the epoch, for instance).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
    )
    ALWAYS: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse text the databases cannot keep: NUL (PostgreSQL text) and unpaired
        surrogates (not Unicode; JSON can escape them). Nested messages check their own.
        What the store reads back was checked on its way in (context `STORED`)."""
        if info.context is STORED:
            return value
        texts: list[object] = []
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, list):
            texts = value
        elif isinstance(value, dict) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if get_origin(annotation) is dict:
                texts = [*value, *value.values()]
        for text in texts:
            if isinstance(text, str) and not _storable(text):
                raise ValueError("text must be valid Unicode without NUL characters")
        return value

    @model_serializer(mode="wrap")
    def _leave_out_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for name, info in type(self).model_fields.items():
            key = info.alias or name
            if key in out and key not in self.ALWAYS and _is_default(getattr(self, name)):
                del out[key]
        return out

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_default(value: object) -> bool:
    if value is None or value is False or value == "" or value == b"":
        return True
    return isinstance(value, int | list | dict) and not value


def invalid_argument(errors: Iterable[Mapping[str, Any]]) -> InvalidArgument:
    """The INVALID_ARGUMENT for pydantic's errors about a request (`ValidationError.errors()`),
    one violation each, the message naming the first: what every adapter answers."""
    violations = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "json_invalid":
            field = "body"
            message = (
                f"Invalid JSON payload received ({message} at character {loc[-1] if loc else 0})"
            )
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        violations.append(FieldViolation(field, message))
    first = violations[0] if violations else FieldViolation("body", "invalid request")
    message = f"Invalid value at '{first.field}': {first.description}"
    if len(violations) > 1:
        message += f" (and {len(violations) - 1} more)"
    return InvalidArgument(message, violations)
