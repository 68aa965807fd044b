"""What every unary method shares: the caller from its `authorization` metadata, the request
parsed from its bytes, ironcore's errors as gRPC statuses, and conversions between protobuf
messages and the services' proto3 JSON form."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.iam.v1 import policy_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from pydantic import BaseModel, ValidationError

from ironcore.access.backoff import Slowed, current_client_address
from ironcore.access.callers import Authenticator, credential_kind
from ironcore.access.roles import Caller
from ironcore.errors import InvalidArgument, IronCoreError, PermissionDenied, Unauthenticated
from ironcore.registry.resources import Policy
from ironcore.registry.store import audit
from ironcore.registry.store.audit import AuditStore
from ironcore.registry.wire import invalid_argument
from ironcore.rpc.protojson import to_message

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

# A method as the services see it: the parsed request and who asks; a message to answer.
Method = Callable[[Any, Caller], Awaitable[Message]]


def unary(
    rpc: str,
    method: Method,
    request_type: type[Message],
    authenticator: Authenticator,
    audit_log: AuditStore | None = None,
) -> grpc.RpcMethodHandler[bytes, bytes]:
    """A unary method that takes and returns bytes itself: grpcio answers INTERNAL when a
    deserializer raises, and a request that does not parse is the caller's INVALID_ARGUMENT.
    Authentication comes first, as on REST: without a valid token nothing else is said.

    The call's writes carry its audit entry (`actor`, method `rpc`); with `audit_log`, a call
    refused for its credential or its permissions is recorded there (rate-limited)."""
    name = request_type.DESCRIPTOR.full_name

    async def call(raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        credential = authorization(context)
        found = audit.Actor("grpc", "", credential_kind(credential), "", rpc, "")
        try:
            found.address = current_client_address()
            try:
                caller = await authenticator.caller(credential)
            except IronCoreError:
                # What the refused call was after, if its request parses at all.
                with contextlib.suppress(DecodeError):
                    found = actor(request_type.FromString(raw), None, credential, rpc)
                raise
            try:
                request = request_type.FromString(raw)
            except DecodeError as error:
                raise InvalidArgument(f"The request is not a valid {name}: {error}") from None
            found = actor(request, caller, credential, rpc)
            token = audit.acting(found)
            try:
                answer: bytes = (await method(request, caller)).SerializeToString()
            finally:
                audit.done(token)
            return answer
        except IronCoreError as error:
            if audit_log is not None and isinstance(error, DENIALS):
                await audit_log.denied(found, error.code.name, error.message)
            await context.abort_with_status(status(error))
        except Exception:
            log.exception("unexpected error in gRPC %s", name)
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error; see the server log")
        raise AssertionError("abort returns only by raising")

    return grpc.unary_unary_rpc_method_handler(call)


# Refusals recorded in the audit log: a bad credential, a client address backing off, a
# permission the caller lacks.
DENIALS = (Unauthenticated, Slowed, PermissionDenied)
# Methods whose writes are the data plane, not changes to audit: Pub/Sub message traffic.
_UNAUDITED = frozenset({"Publish", "Pull", "Acknowledge", "ModifyAckDeadline"})


def actor(request: Message, caller: Caller | None, credential: str, method: str) -> audit.Actor:
    """Who acts in a call of `method` (`CreateDevice`, as on REST), for the audit entry its
    writes carry (registry/store/audit.py): the resource is the request's `name`, `resource`,
    `parent`, `subscription`, `topic` or `project`, or that of the resource it carries (an
    update's `device.name`)."""
    fields = json_format.MessageToDict(request)
    named = [fields, *(v for v in fields.values() if isinstance(v, dict))]
    resource = next(
        (
            str(found[k])
            for found in named
            for k in ("name", "resource", "parent", "subscription", "topic", "project")
            if found.get(k)
        ),
        "",
    )
    return audit.Actor(
        wire="grpc",
        principal=caller.principal if caller is not None else "",
        authentication=credential_kind(credential),
        address=current_client_address(),
        method=method,
        resource=resource,
        fields={"body": fields},
        records=method not in _UNAUDITED,
    )


def authorization(context: grpc.aio.ServicerContext[bytes, bytes]) -> str:
    """The call's `authorization` metadata, or "" without one."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return ""


def status(error: IronCoreError) -> grpc.Status:
    """The gRPC status of an error: its code, its message, and its field violations as a
    google.rpc.BadRequest detail, as the REST envelope carries them."""
    rich = status_pb2.Status(code=int(error.code), message=error.message)
    if error.violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
        rich.details.append(detail)
    converted: grpc.Status = rpc_status.to_status(rich)
    return converted


def model(model_type: type[M], message: Message) -> M:
    """A protobuf message as the service's model of it, checked by the same rules as REST
    bodies (the proto3 JSON form in between)."""
    try:
        return model_type.model_validate(json_format.MessageToDict(message))
    except ValidationError as error:
        raise invalid_argument(error.errors()) from None


def message(message_type: type[Message], wire: dict[str, Any]) -> Message:
    """The service's proto3 JSON form as a protobuf message (`rpc.protojson`)."""
    return to_message(message_type, wire)


def policy_message(policy: Policy) -> Message:
    """An IAM policy as google.iam.v1.Policy, its etag always set (clients send it back on
    their read-modify-write)."""
    found = message(policy_pb2.Policy, policy.to_wire())
    found.etag = policy.etag
    return found


def mask(paths: Any) -> str:
    """A google.protobuf.FieldMask as the comma list the services take."""
    return ",".join(paths.paths)
