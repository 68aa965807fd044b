"""Admin token routes (ironcore's own, outside the Cloud IoT Core surface)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ironcore.access.tokens import parse_duration, token_principal
from ironcore.api.deps import CallerDep, Tokens, allowed, ok
from ironcore.errors import InvalidArgument
from ironcore.registry.store.tokens import TokenRecord
from ironcore.registry.wire import Message, format_timestamp, parse_timestamp

router = APIRouter()
TOKENS = "/ironcore/v1/tokens"


class CreateTokenRequest(Message):
    role: str
    name: str = ""
    # The person the token is for (an email address): it then acts as `user:<email>`.
    user: str = ""
    # When the token stops working: a time (RFC 3339), or a lifetime from now (`30d`, `3600s`).
    expire_time: str | None = None
    ttl: str | None = None


def _expiry(body: CreateTokenRequest, now: datetime) -> datetime | None:
    if body.expire_time is not None and body.ttl is not None:
        raise InvalidArgument("Give expireTime or ttl, not both")
    try:
        if body.expire_time is not None:
            return parse_timestamp(body.expire_time)
        if body.ttl is not None:
            return now + parse_duration(body.ttl)
    except ValueError as error:
        raise InvalidArgument.field(
            "expireTime" if body.ttl is None else "ttl", str(error)
        ) from None
    return None


def _listed(t: TokenRecord) -> dict[str, object]:
    return {
        "id": t.id,
        "principal": t.principal,
        "name": t.name,
        "role": t.role,
        "createTime": format_timestamp(t.created_at),
        "expireTime": None if t.expires_at is None else format_timestamp(t.expires_at),
        "lastUseTime": None if t.last_used_at is None else format_timestamp(t.last_used_at),
        "revoked": t.revoked,
    }


@router.post(TOKENS, name="CreateToken")
async def create_token(tokens: Tokens, caller: CallerDep, body: CreateTokenRequest) -> JSONResponse:
    allowed(caller, "ironcore.tokens.manage", "tokens")
    expires_at = _expiry(body, tokens.clock())
    token = await tokens.create(body.role, body.name, expires_at, body.user)
    created: dict[str, object] = {
        "token": token,
        "principal": token_principal(token, body.user),
        "role": body.role,
        "name": body.name,
    }
    if expires_at is not None:
        created["expireTime"] = format_timestamp(expires_at)
    return ok(created)


@router.get(TOKENS, name="ListTokens")
async def list_tokens(tokens: Tokens, caller: CallerDep) -> JSONResponse:
    allowed(caller, "ironcore.tokens.manage", "tokens")
    return ok({"tokens": [_listed(t) for t in await tokens.list_tokens()]})


@router.post(TOKENS + "/{token_id}:rotate", name="RotateToken")
async def rotate_token(
    token_id: str, request: Request, tokens: Tokens, caller: CallerDep
) -> JSONResponse:
    allowed(caller, "ironcore.tokens.manage", "tokens")
    token, record = await tokens.rotate(token_id)
    await request.app.state.auth.invalidated()
    return ok({"token": token, **_listed(record)})


@router.delete(TOKENS + "/{token_id}", name="RevokeToken")
async def revoke_token(
    token_id: str, request: Request, tokens: Tokens, caller: CallerDep
) -> JSONResponse:
    allowed(caller, "ironcore.tokens.manage", "tokens")
    await tokens.revoke(token_id)
    await request.app.state.auth.invalidated()
    return ok()
