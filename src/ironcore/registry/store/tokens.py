"""SQL of admin tokens: only a token's SHA-256 hash is kept, with its role, its principal, its
optional expiry and when it was last used (the rules are ironcore.access.tokens)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, func, insert, or_, select, update

from ironcore.registry.store import audit
from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import admin_tokens, from_us, to_us


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: str
    created_at: datetime
    revoked: bool
    principal: str
    expires_at: datetime | None = None
    last_used_at: datetime | None = None


def _record(row: Row[tuple[object, ...]]) -> TokenRecord:
    m = row._mapping
    return TokenRecord(
        m["id"],
        m["name"],
        m["role"],
        from_us(m["created_at"]),
        bool(m["revoked_at"]),
        m["principal"],
        None if m["expires_at"] is None else from_us(m["expires_at"]),
        None if m["last_used_at"] is None else from_us(m["last_used_at"]),
    )


class TokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_token(
        self,
        token_id: str,
        name: str,
        role: str,
        token_hash: str,
        principal: str,
        now: datetime,
        expires_at: datetime | None = None,
    ) -> None:
        audit.created_id(token_id)
        async with self.db.write() as conn:
            await conn.execute(
                insert(admin_tokens).values(
                    id=token_id,
                    name=name,
                    role=role,
                    token_hash=token_hash,
                    principal=principal,
                    created_at=to_us(now),
                    revoked_at=0,
                    expires_at=None if expires_at is None else to_us(expires_at),
                )
            )

    async def active_token(self, token_hash: str) -> TokenRecord | None:
        """The unrevoked token with this hash (expired or not); None if there is none."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(admin_tokens).where(
                        admin_tokens.c.token_hash == token_hash, admin_tokens.c.revoked_at == 0
                    )
                )
            ).first()
            return None if row is None else _record(row)

    async def token(self, token_id: str) -> TokenRecord | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(admin_tokens).where(admin_tokens.c.id == token_id))
            ).first()
            return None if row is None else _record(row)

    async def list_tokens(self) -> list[TokenRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(admin_tokens).order_by(admin_tokens.c.created_at))
            return [_record(row) for row in rows]

    async def revoke_token(self, token_id: str, now: datetime) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(
                update(admin_tokens)
                .where(admin_tokens.c.id == token_id, admin_tokens.c.revoked_at == 0)
                .values(revoked_at=to_us(now))
            )
            if result.rowcount:
                audit.changed({"revoked": False}, {"revoked": True})
            else:
                audit.unchanged(conn)
            return bool(result.rowcount)

    async def rotate_token(self, token_id: str, token_hash: str, now: datetime) -> bool:
        """Give the unrevoked, unexpired token `token_id` a new hash; False if there is none."""
        async with self.db.write() as conn:
            result = await conn.execute(
                update(admin_tokens)
                .where(
                    admin_tokens.c.id == token_id,
                    admin_tokens.c.revoked_at == 0,
                    or_(
                        admin_tokens.c.expires_at.is_(None),
                        admin_tokens.c.expires_at > to_us(now),
                    ),
                )
                .values(token_hash=token_hash)
            )
            if not result.rowcount:
                audit.unchanged(conn)
            return bool(result.rowcount)

    async def mark_used(self, uses: Mapping[str, datetime]) -> None:
        """Record when tokens were last used; an earlier time never replaces a later one
        (another server may have written after this one saw its use)."""
        async with self.db.write() as conn:
            for token_id, when in uses.items():
                at = to_us(when)
                await conn.execute(
                    update(admin_tokens)
                    .where(
                        admin_tokens.c.id == token_id,
                        or_(
                            admin_tokens.c.last_used_at.is_(None),
                            admin_tokens.c.last_used_at < at,
                        ),
                    )
                    .values(last_used_at=at)
                )

    async def count_tokens(self) -> int:
        async with self.db.read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(admin_tokens)) or 0)
