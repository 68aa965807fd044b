"""Who is calling: the bearer token of an `Authorization` value (an HTTP header, gRPC
metadata), looked up and cached, as a `Caller`; or, on the Pub/Sub emulator port, whose
clients send no credentials, one fixed caller.

Every adapter authenticates here, so a credential means the same on every wire. Roles and
permissions are `access.roles`; admin tokens `access.tokens`; service accounts, their access
tokens and JWTs `access.service_accounts` and `access.assertions`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Protocol

from ironcore.access.assertions import LEEWAY_SECONDS, looks_like_jwt, verify
from ironcore.access.policies import PolicyIndex
from ironcore.access.roles import Caller
from ironcore.access.service_accounts import (
    ACCESS_TOKEN_PREFIX,
    ServiceAccounts,
    service_account_caller,
)
from ironcore.access.tokens import TOKEN_PREFIX, AdminTokens, hash_token
from ironcore.errors import Unauthenticated

log = logging.getLogger(__name__)
# A revoked token stops working everywhere within this many seconds.
_CACHE_SECONDS = 2.0


# The caller of every call on the Pub/Sub emulator port: it may publish, read topics and
# subscriptions, create subscriptions and consume from them, and nothing else, unless
# `--pubsub-emulator-as SERVICE_ACCOUNT` names a service account to act as instead.
PUBSUB_EMULATOR = Caller("ironcore:pubsub-emulator", frozenset({"pubsub-client"}))


class Authenticator(Protocol):
    async def caller(self, authorization: str) -> Caller:
        """The caller a call's `Authorization` value stands for; Unauthenticated if none."""
        ...


class FixedCaller:
    """Every call is `caller`'s, whatever its `Authorization` value: for a port whose clients
    send no credentials (Google's Pub/Sub emulator protocol)."""

    def __init__(self, caller: Caller) -> None:
        self._caller = caller

    async def caller(self, authorization: str) -> Caller:
        return self._caller


def admin_caller(token: str, role: str) -> Caller:
    """The caller of a valid admin token: global, named by the token's id (`ic_<id>_...`)."""
    token_id = token.removeprefix(TOKEN_PREFIX).partition("_")[0]
    return Caller(f"adminToken:{token_id}", frozenset({role}))


class TokenAuthenticator:
    """Every bearer credential ironcore accepts, told apart by its form: a self-signed JWT of
    a service-account key (`access.assertions`), an access token from the token endpoint
    (`ACCESS_TOKEN_PREFIX`), or an admin token. Answers, refusals included, are cached for a
    moment, so a deleted key or revoked token stops working within `_CACHE_SECONDS`. Every
    caller is also granted what the IAM policies bind to it (`access.policies`)."""

    def __init__(
        self,
        tokens: AdminTokens,
        accounts: ServiceAccounts | None = None,
        audiences: frozenset[str] = frozenset(),
    ) -> None:
        self.tokens = tokens
        self.accounts = accounts
        self.audiences = audiences
        self._cache: dict[str, tuple[Caller | Unauthenticated, float]] = {}
        self.policies = PolicyIndex(tokens.store)

    async def caller(self, authorization: str) -> Caller:
        """The caller an `Authorization` value (`Bearer <token>`) names; Unauthenticated if
        it is missing, malformed, unknown, revoked or expired."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("Request is missing an 'Authorization: Bearer <token>' header")
        await self.policies.fresh()
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached[1] < now:
            if len(self._cache) > 10_000:
                self._cache.clear()
            found: Caller | Unauthenticated
            try:
                resolved, seconds = await self._resolve(token)
                found = replace(resolved, bound=self.policies.roles)
            except Unauthenticated as refused:
                found, seconds = refused, _CACHE_SECONDS
            cached = (found, now + seconds)
            self._cache[digest] = cached
        if isinstance(cached[0], Unauthenticated):
            raise cached[0]
        return cached[0]

    async def _resolve(self, token: str) -> tuple[Caller, float]:
        """The caller of a token, and for how long that answer may be cached."""
        if self.accounts is not None and looks_like_jwt(token):
            try:
                verified = await verify(
                    self.accounts, token, self.audiences, scope_instead_of_aud=True
                )
            except Unauthenticated as refused:
                log.warning("refused a service-account JWT: %s", refused.message)
                raise Unauthenticated(
                    f"The service-account JWT is not valid: {refused.message}"
                ) from None
            left = verified.expires_at + LEEWAY_SECONDS - time.time()
            return service_account_caller(verified.account), min(_CACHE_SECONDS, left)
        if self.accounts is not None and token.startswith(ACCESS_TOKEN_PREFIX):
            account = await self.accounts.access_token_account(token)
            if account is None:
                log.warning(
                    "refused an access token: unknown, expired, or its key or account deleted"
                )
                raise Unauthenticated(
                    "The access token is not valid (unknown or expired, or its key or service "
                    "account was deleted)"
                )
            return service_account_caller(account), _CACHE_SECONDS
        role = await self.tokens.role_of(hash_token(token))
        if role is None:
            raise Unauthenticated("The bearer token is not valid (unknown or revoked)")
        return admin_caller(token, role), _CACHE_SECONDS

    def forget(self) -> None:
        self._cache.clear()
