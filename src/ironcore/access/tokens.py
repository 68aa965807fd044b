"""Admin tokens: bearer tokens, each with a role.

A token is created by `ironcore tokens create` (or the first `ironcore serve`), shown once and
kept only as a SHA-256 hash. It carries its id, which listings show and revocation takes.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from ironcore.access.roles import ROLES
from ironcore.errors import InvalidArgument, NotFound
from ironcore.registry.store import Store
from ironcore.registry.store.tokens import TokenRecord

# An admin token shows its id (to list and revoke it) and carries its secret after it.
TOKEN_PREFIX = "ic_"
TOKEN_NAME_MAX = 200


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AdminTokens:
    def __init__(
        self, store: Store, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.store = store
        self.clock = clock

    async def create(self, role: str, name: str) -> str:
        """Create an admin token and return it; only its hash is kept."""
        if role not in ROLES:
            raise InvalidArgument.field("role", f"must be one of {', '.join(ROLES)}")
        # Refused rather than cut, so the name shown at creation is the name listed later.
        if len(name) > TOKEN_NAME_MAX:
            raise InvalidArgument.field("name", f"at most {TOKEN_NAME_MAX} characters")
        token_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        await self.store.tokens.add_token(token_id, name, role, hash_token(token), self.clock())
        return token

    async def list_tokens(self) -> list[TokenRecord]:
        return await self.store.tokens.list_tokens()

    async def revoke(self, token_id: str) -> None:
        # Ids are hex (see create); anything else names no token and stays out of SQL.
        valid = token_id.isascii() and token_id.isalnum()
        if not valid or not await self.store.tokens.revoke_token(token_id, self.clock()):
            raise NotFound(f"No active admin token with id {token_id!r}")

    async def role_of(self, token_hash: str) -> str | None:
        """The role of the token with this hash (`hash_token`); None if unknown or revoked."""
        return await self.store.tokens.token_role(token_hash)

    async def count(self) -> int:
        """How many tokens were ever created (revoked ones too)."""
        return await self.store.tokens.count_tokens()
