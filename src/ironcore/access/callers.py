"""Who is calling: the bearer token of an `Authorization` value (an HTTP header, gRPC
metadata), looked up and cached, as a `Caller`.

Every adapter authenticates here, so a credential means the same on every wire. Roles and
permissions are `access.roles`; the tokens themselves `access.tokens`.
"""

from __future__ import annotations

import time

from ironcore.access.roles import Caller
from ironcore.access.tokens import AdminTokens, hash_token
from ironcore.errors import Unauthenticated

# A revoked token stops working everywhere within this many seconds.
_CACHE_SECONDS = 2.0


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
        return Caller(role)

    def forget(self) -> None:
        self._cache.clear()
