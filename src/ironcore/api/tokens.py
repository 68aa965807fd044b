"""Admin token routes (ironcore's own, outside the Cloud IoT Core surface)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ironcore.api.deps import CallerDep, Tokens, allowed, ok
from ironcore.registry.wire import Message, format_timestamp

router = APIRouter()
TOKENS = "/ironcore/v1/tokens"


class CreateTokenRequest(Message):
    role: str
    name: str = ""


@router.post(TOKENS, name="CreateToken")
async def create_token(tokens: Tokens, caller: CallerDep, body: CreateTokenRequest) -> JSONResponse:
    allowed(caller, "ironcore.tokens.manage", "tokens")
    token = await tokens.create(body.role, body.name)
    return ok({"token": token, "role": body.role, "name": body.name})


@router.get(TOKENS, name="ListTokens")
async def list_tokens(tokens: Tokens, caller: CallerDep) -> JSONResponse:
    allowed(caller, "ironcore.tokens.manage", "tokens")
    return ok(
        {
            "tokens": [
                {
                    "id": t.id,
                    "name": t.name,
                    "role": t.role,
                    "createTime": format_timestamp(t.created_at),
                    "revoked": t.revoked,
                }
                for t in await tokens.list_tokens()
            ]
        }
    )


@router.delete(TOKENS + "/{token_id}", name="RevokeToken")
async def revoke_token(
    token_id: str, request: Request, tokens: Tokens, caller: CallerDep
) -> JSONResponse:
    allowed(caller, "ironcore.tokens.manage", "tokens")
    await tokens.revoke(token_id)
    request.app.state.auth.forget()
    return ok()
