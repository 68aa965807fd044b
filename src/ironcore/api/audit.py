"""The audit log on REST: who acts in each API request (`audited`, called by the
authentication middleware), and the read-only list of a project's entries.

The request's principal, how it authenticated, its client address (the TCP peer, or the
client a trusted proxy's X-Forwarded-For names, as uvicorn gives it), its resource (the path)
and its fields (query and JSON body, read as the route reads them) become the call's
`audit.Actor`; the route's name becomes its method once routing has picked it
(`deps.name_method`). Every write transaction of the request then carries an entry
(registry/store/audit.py). A request answered 401 or 403 changed nothing: it is recorded
apart, rate-limited per client address. The list is GET only; no route changes or deletes an
entry (any other method on it is 405).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ironcore.access.callers import credential_kind
from ironcore.access.roles import Caller
from ironcore.api.deps import CallerDep, allowed, ok
from ironcore.api.ops import ASGIApp, Scope
from ironcore.registry.store import Store, audit

router = APIRouter()
AUDIT_LOGS = "/ironcore/v1/projects/{project}/auditLogs"
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A body larger than this is recorded by its top-level keys alone (manifests, firmware).
_MAX_FIELDS = 16 * 1024
_DENIALS = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}


@router.get(AUDIT_LOGS, name="ListAuditLogs")
async def list_audit_logs(
    project: str,
    request: Request,
    caller: CallerDep,
    filter: str = "",
    pageSize: int = 0,
    pageToken: str = "",
) -> JSONResponse:
    """A project's entries, newest first (`projects/-`: every project's, and the global
    ones: tokens, revocations)."""
    allowed(caller, "ironcore.auditLogs.list", f"projects/{project}")
    store: Store = request.app.state.manager.store
    entries, next_token = await store.audit.list(
        None if project == "-" else project, filter, pageSize, pageToken
    )
    body: dict[str, Any] = {"auditLogs": [e.to_wire() for e in entries]}
    if next_token:
        body["nextPageToken"] = next_token
    return ok(body)


def _resource(path: str) -> str:
    for prefix in ("/ironcore/v1/", "/v1/"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
            break
    return path.partition(":")[0].strip("/")


def actor(scope: Scope, caller: Caller | None, authorization: str) -> audit.Actor:
    """Who acts in an API request, before its body is read."""
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    client = scope.get("client")
    return audit.Actor(
        wire="rest",
        principal=caller.principal if caller is not None else "",
        authentication=credential_kind(authorization),
        address=client[0] if client else "",
        method=f"{scope['method']} {scope['path']}",
        resource=_resource(scope["path"]),
        fields={"query": query} if query else {},
    )


def _body_fields(found: audit.Actor, body: bytes) -> None:
    if not body:
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return
    if len(body) > _MAX_FIELDS and isinstance(parsed, dict):
        parsed = {key: "…" for key in parsed}
    found.fields = {**found.fields, "body": parsed}


async def audited(
    app: ASGIApp,
    scope: Scope,
    receive: Callable[[], Awaitable[Any]],
    send: Callable[[Any], Awaitable[None]],
    caller: Caller,
    authorization: str,
) -> None:
    """Serve an authenticated request with its actor set: a change's write transactions
    record it; a 403 is recorded apart."""
    found = actor(scope, caller, authorization)
    if scope["method"] not in _CHANGES:
        found.records = False
    chunks: list[bytes] = []
    status = 0

    async def receive_body() -> Any:
        message = await receive()
        if message["type"] == "http.request" and found.records:
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                _body_fields(found, b"".join(chunks))
        return message

    answer: list[bytes] = []

    async def send_status(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and status in _DENIALS:
            answer.append(message.get("body", b""))  # the error envelope: a few hundred bytes
        await send(message)

    token = audit.acting(found)
    try:
        await app(scope, receive_body, send_status)
    finally:
        audit.done(token)
    if status in _DENIALS:
        store: Store = scope["app"].state.manager.store
        await store.audit.denied(found, _DENIALS[status], _error_message(b"".join(answer)))


def _error_message(envelope: bytes) -> str:
    """The message of a JSON error envelope (`{"error": {"message": …}}`), or ""."""
    try:
        message = json.loads(envelope)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return str(message)


async def refused(scope: Scope, authorization: str, status: str, message: str) -> None:
    """Record a request refused before it was authenticated (401, or 429 while backing off)."""
    store: Store = scope["app"].state.manager.store
    await store.audit.denied(actor(scope, None, authorization), status, message)
