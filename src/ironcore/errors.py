"""One error hierarchy for ironcore.

Every error carries a google.rpc code. Adapters map the code to their wire: the REST API to
the `{"error": {code, message, status, details}}` envelope and an HTTP status, the MQTT bridge
to a CONNACK code or a disconnect plus the device's `lastErrorStatus`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar


class Code(IntEnum):
    """google.rpc.Code, with the HTTP status each maps to in Google's APIs."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]


_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as google.rpc.BadRequest.FieldViolation."""

    field: str
    description: str


@dataclass
class IronCoreError(Exception):
    """Base of every error ironcore raises on purpose."""

    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    code = Code.UNKNOWN
    # The HTTP status when it is not the code's usual one (413 for a body over its limit).
    http_status: ClassVar[int | None] = None

    def __str__(self) -> str:
        return self.message


class InvalidArgument(IronCoreError):
    code = Code.INVALID_ARGUMENT

    @classmethod
    def field(cls, name: str, description: str) -> InvalidArgument:
        """An error about one named field; the message names it too."""
        return cls(f"Invalid value at '{name}': {description}", [FieldViolation(name, description)])


class FailedPrecondition(IronCoreError):
    code = Code.FAILED_PRECONDITION


class OutOfRange(IronCoreError):
    code = Code.OUT_OF_RANGE


class NotFound(IronCoreError):
    code = Code.NOT_FOUND


class AlreadyExists(IronCoreError):
    code = Code.ALREADY_EXISTS


class Aborted(IronCoreError):
    code = Code.ABORTED


class ResourceExhausted(IronCoreError):
    code = Code.RESOURCE_EXHAUSTED


class Unauthenticated(IronCoreError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(IronCoreError):
    code = Code.PERMISSION_DENIED


class Unavailable(IronCoreError):
    code = Code.UNAVAILABLE


class Internal(IronCoreError):
    code = Code.INTERNAL
