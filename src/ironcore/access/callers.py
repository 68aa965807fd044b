"""Who is calling: the bearer token of an `Authorization` value (an HTTP header, gRPC
metadata), looked up and cached, as a `Caller`; or, on the Pub/Sub emulator port, whose
clients send no credentials, one fixed caller.

Every adapter authenticates here, so a credential means the same on every wire. Roles and
permissions are `access.roles`; the tokens themselves `access.tokens`.
"""

from __future__ import annotations

import time
from typing import Protocol

from ironcore.access.roles import Caller
from ironcore.access.tokens import TOKEN_PREFIX, AdminTokens, hash_token
from ironcore.errors import Unauthenticated

# A revoked token stops working everywhere within this many seconds.
_CACHE_SECONDS = 2.0


# The caller of every call on the Pub/Sub emulator port: it may publish, read topics and
# subscriptions, create subscriptions and consume from them, and nothing else. Once service
# accounts exist, `--pubsub-emulator-as SERVICE_ACCOUNT` replaces it by the account named.
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
    def __init__(self, tokens: AdminTokens) -> None:
        self.tokens = tokens
        self._cache: dict[str, tuple[str | None, float]] = {}

    async def caller(self, authorization: str) -> Caller:
        """The caller an `Authorization` value (`Bearer <token>`) names; Unauthenticated if
        it is missing, malformed, unknown or revoked."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Request is missing an 'Authorization: Bearer <token>' header")
        digest = hash_token(token.strip())
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached[1] < now:
            if len(self._cache) > 10_000:
                self._cache.clear()
            cached = (await self.tokens.role_of(digest), now + _CACHE_SECONDS)
            self._cache[digest] = cached
        role = cached[0]
        if role is None:
            raise Unauthenticated("The bearer token is not valid (unknown or revoked)")
        return admin_caller(token.strip(), role)

    def forget(self) -> None:
        self._cache.clear()
