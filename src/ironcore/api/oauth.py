"""The OAuth 2.0 token endpoint of service-account key files (`token_uri`): RFC 7523's
JWT-bearer grant, as `google.oauth2.service_account.Credentials` performs it.

It is public (the assertion is the credential) and speaks OAuth's own error format, 400 with
`{"error": ..., "error_description": ...}`, which google-auth raises as RefreshError. The
body is form-encoded, whatever Content-Type NormalizeRequestMiddleware has since given it.
"""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ironcore.access.assertions import GOOGLE_TOKEN_URIS, JWT_BEARER, verify
from ironcore.access.service_accounts import ServiceAccounts
from ironcore.errors import Unauthenticated

log = logging.getLogger(__name__)
router = APIRouter()
TOKEN = "/token"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def _accounts(request: Request) -> ServiceAccounts:
    accounts: ServiceAccounts = request.app.state.service_accounts
    return accounts


def token_uri(request: Request) -> str:
    """This endpoint's URL, as key files name it: under the public URL, else the URL the
    request came to."""
    public: str = request.app.state.public_url or str(request.base_url)
    return public.rstrip("/") + TOKEN


def token_uris(request: Request) -> set[str]:
    """This endpoint's URLs: under the public URL, and as this request reached it."""
    return {token_uri(request), str(request.base_url).rstrip("/") + TOKEN}


@router.post(TOKEN, include_in_schema=False)
async def token(
    request: Request, accounts: Annotated[ServiceAccounts, Depends(_accounts)]
) -> JSONResponse:
    try:
        form = dict(parse_qsl((await request.body()).decode("ascii"), max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        return _error("invalid_request", "The body is not form-encoded ASCII")
    if form.get("grant_type") != JWT_BEARER:
        return _error(
            "unsupported_grant_type",
            f"grant_type {form.get('grant_type', '')[:80]!r} is not supported; use {JWT_BEARER}",
        )
    assertion = form.get("assertion", "")
    if not assertion:
        return _error("invalid_request", "The assertion parameter is missing")
    audiences = token_uris(request) | set(GOOGLE_TOKEN_URIS)
    try:
        verified = await verify(accounts, assertion, audiences, scope_instead_of_aud=False)
    except Unauthenticated as refused:
        log.warning("token endpoint refused an assertion: %s", refused.message)
        return _error("invalid_grant", refused.message)
    access_token, seconds = await accounts.issue_access_token(verified.key_id)
    return JSONResponse(
        {"access_token": access_token, "expires_in": seconds, "token_type": "Bearer"},
        headers=_NO_STORE,
    )


def _error(error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=400, headers=_NO_STORE
    )
