"""SQL of admin tokens: only a token's SHA-256 hash is kept, with its role (the rules are
ironcore.access.tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update

from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import admin_tokens, from_us, to_us


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: str
    created_at: datetime
    revoked: bool


class TokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_token(
        self, token_id: str, name: str, role: str, token_hash: str, now: datetime
    ) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                insert(admin_tokens).values(
                    id=token_id,
                    name=name,
                    role=role,
                    token_hash=token_hash,
                    created_at=to_us(now),
                    revoked_at=0,
                )
            )

    async def token_role(self, token_hash: str) -> str | None:
        async with self.db.read() as conn:
            return await conn.scalar(
                select(admin_tokens.c.role).where(
                    admin_tokens.c.token_hash == token_hash, admin_tokens.c.revoked_at == 0
                )
            )

    async def list_tokens(self) -> list[TokenRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(admin_tokens).order_by(admin_tokens.c.created_at))
            return [
                TokenRecord(
                    row.id, row.name, row.role, from_us(row.created_at), bool(row.revoked_at)
                )
                for row in rows
            ]

    async def revoke_token(self, token_id: str, now: datetime) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(
                update(admin_tokens)
                .where(admin_tokens.c.id == token_id, admin_tokens.c.revoked_at == 0)
                .values(revoked_at=to_us(now))
            )
            return bool(result.rowcount)

    async def count_tokens(self) -> int:
        async with self.db.read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(admin_tokens)) or 0)
