"""SQL of service accounts: accounts, their public keys and the access tokens issued for them
(hashes only). The rules are ironcore.access.service_accounts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ironcore.errors import AlreadyExists
from ironcore.registry.store import audit
from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import (
    from_us,
    service_account_keys,
    service_account_tokens,
    service_accounts,
    to_us,
)


@dataclass(frozen=True)
class AccountRecord:
    email: str
    project: str
    account_id: str
    unique_id: str
    display_name: str
    roles: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    email: str
    public_key: str
    created_at: datetime


def _account(row: Any) -> AccountRecord:
    return AccountRecord(
        row.email,
        row.project,
        row.account_id,
        row.unique_id,
        row.display_name,
        tuple(row.roles),
        from_us(row.created_at),
    )


_keys = service_account_keys.c
# A key that verifies: not deleted, of an account that exists.
_LIVE_KEYS = select(service_accounts, _keys.public_key).join(
    service_account_keys, _keys.email == service_accounts.c.email
)


class ServiceAccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_account(self, account: AccountRecord) -> None:
        audit.created_id(account.email)
        async with self.db.write() as conn:
            try:
                await conn.execute(
                    insert(service_accounts).values(
                        email=account.email,
                        project=account.project,
                        account_id=account.account_id,
                        unique_id=account.unique_id,
                        display_name=account.display_name,
                        roles=list(account.roles),
                        created_at=to_us(account.created_at),
                    )
                )
            except IntegrityError:
                raise AlreadyExists(f"Service account {account.email} already exists") from None

    async def get_account(self, email: str) -> AccountRecord | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(service_accounts).where(service_accounts.c.email == email)
                )
            ).first()
        return None if row is None else _account(row)

    async def find_accounts(self, account_id: str) -> list[AccountRecord]:
        """The accounts of every project with this account id."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(service_accounts)
                .where(service_accounts.c.account_id == account_id)
                .order_by(service_accounts.c.email)
            )
            return [_account(row) for row in rows]

    async def list_accounts(self, project: str) -> list[AccountRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(service_accounts)
                .where(service_accounts.c.project == project)
                .order_by(service_accounts.c.email)
            )
            return [_account(row) for row in rows]

    async def delete_account(self, email: str) -> bool:
        """Delete the account, its keys and every access token issued for them."""
        async with self.db.write() as conn:
            keys = select(_keys.key_id).where(_keys.email == email).scalar_subquery()
            await conn.execute(
                delete(service_account_tokens).where(service_account_tokens.c.key_id.in_(keys))
            )
            await conn.execute(delete(service_account_keys).where(_keys.email == email))
            result = await conn.execute(
                delete(service_accounts).where(service_accounts.c.email == email)
            )
            if not result.rowcount:
                audit.unchanged(conn)
            return bool(result.rowcount)

    async def add_key(self, key_id: str, email: str, public_key: str, now: datetime) -> None:
        audit.created_id(key_id)
        async with self.db.write() as conn:
            await conn.execute(
                insert(service_account_keys).values(
                    key_id=key_id,
                    email=email,
                    public_key=public_key,
                    created_at=to_us(now),
                    deleted_at=0,
                )
            )

    async def list_keys(self, email: str) -> list[KeyRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(service_account_keys)
                .where(_keys.email == email, _keys.deleted_at == 0)
                .order_by(_keys.created_at)
            )
            return [
                KeyRecord(row.key_id, row.email, row.public_key, from_us(row.created_at))
                for row in rows
            ]

    async def delete_key(self, email: str, key_id: str, now: datetime) -> bool:
        """Mark the key deleted and drop the access tokens issued for it."""
        async with self.db.write() as conn:
            result = await conn.execute(
                update(service_account_keys)
                .where(_keys.key_id == key_id, _keys.email == email, _keys.deleted_at == 0)
                .values(deleted_at=to_us(now))
            )
            await conn.execute(
                delete(service_account_tokens).where(service_account_tokens.c.key_id == key_id)
            )
            if not result.rowcount:
                audit.unchanged(conn)
            return bool(result.rowcount)

    async def signing_key(self, key_id: str) -> tuple[AccountRecord, str] | None:
        """The account and public key PEM of a live key (not deleted, its account exists)."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(_LIVE_KEYS.where(_keys.key_id == key_id, _keys.deleted_at == 0))
            ).first()
        return None if row is None else (_account(row), row.public_key)

    async def add_access_token(
        self, token_hash: str, key_id: str, expires_at: datetime, now: datetime
    ) -> None:
        """Keep an issued token's hash; tokens expired by `now` are dropped on the way."""
        tokens = service_account_tokens.c
        async with self.db.write() as conn:
            await conn.execute(
                delete(service_account_tokens).where(tokens.expires_at <= to_us(now))
            )
            await conn.execute(
                insert(service_account_tokens).values(
                    token_hash=token_hash, key_id=key_id, expires_at=to_us(expires_at)
                )
            )

    async def access_token(self, token_hash: str, now: datetime) -> AccountRecord | None:
        """The account of an unexpired access token whose key and account still exist."""
        tokens = service_account_tokens.c
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    _LIVE_KEYS.join(service_account_tokens, tokens.key_id == _keys.key_id).where(
                        tokens.token_hash == token_hash,
                        tokens.expires_at > to_us(now),
                        _keys.deleted_at == 0,
                    )
                )
            ).first()
        return None if row is None else _account(row)
