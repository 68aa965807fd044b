"""The Store: the database (database.py) with the SQL of registries, devices, admin tokens,
the bridges' writes and revoked signers. Each method is one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    Row,
    bindparam,
    case,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcore.registry.store.configs import ConfigStore
from ironcore.registry.store.database import Database
from ironcore.registry.store.devices import DeviceStore
from ironcore.registry.store.registries import RegistryStore
from ironcore.registry.store.schema import (
    admin_tokens,
    device_configs,
    devices,
    from_us,
    revoked_signers,
    to_us,
)
from ironcore.registry.store.sqlite_append import APPEND_ONE, SqliteAppender
from ironcore.registry.store.writer_lock import WriterLock


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: str
    created_at: datetime
    revoked: bool


class Store(Database):
    def __init__(
        self,
        engine: AsyncEngine,
        loop_reads: Engine | None = None,
        writer_lock: WriterLock | None = None,
        appender: SqliteAppender | None = None,
    ) -> None:
        super().__init__(engine, loop_reads, writer_lock, appender)
        self.registries = RegistryStore(self)
        self.devices = DeviceStore(self)
        self.configs = ConfigStore(self)

    # Admin tokens

    async def add_token(
        self, token_id: str, name: str, role: str, token_hash: str, now: datetime
    ) -> None:
        async with self.write() as conn:
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
        async with self.read() as conn:
            return await conn.scalar(
                select(admin_tokens.c.role).where(
                    admin_tokens.c.token_hash == token_hash, admin_tokens.c.revoked_at == 0
                )
            )

    async def list_tokens(self) -> list[TokenRecord]:
        async with self.read() as conn:
            rows = await conn.execute(select(admin_tokens).order_by(admin_tokens.c.created_at))
            return [
                TokenRecord(
                    row.id, row.name, row.role, from_us(row.created_at), bool(row.revoked_at)
                )
                for row in rows
            ]

    async def revoke_token(self, token_id: str, now: datetime) -> bool:
        async with self.write() as conn:
            result = await conn.execute(
                update(admin_tokens)
                .where(admin_tokens.c.id == token_id, admin_tokens.c.revoked_at == 0)
                .values(revoked_at=to_us(now))
            )
            return bool(result.rowcount)

    async def count_tokens(self) -> int:
        async with self.read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(admin_tokens)) or 0)

    # What the bridges write

    async def append_events(self, rows: Sequence[tuple[str, bytes, str, int]]) -> None:
        """Append events (topic, data, attributes as JSON text, publish time in µs) in one
        transaction.

        Through the driver's own executemany: at tens of thousands of events a second,
        SQLAlchemy's per-row parameter processing cost more than SQLite's insert itself.
        """
        if self.appender is not None:
            # Shielded: this process's writers wait for the append's thread even if the caller
            # stops waiting, since the thread goes on holding the lock.
            await asyncio.shield(self.append_sqlite(rows))
            return
        async with self.write() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            if self.is_sqlite:
                await driver.executemany(APPEND_ONE, rows)
            else:
                # SQLAlchemy has not begun a transaction on the driver connection yet.
                async with driver.transaction():
                    await driver.executemany(_APPEND_POSTGRESQL, rows)

    async def update_device_times(self, updates: dict[int, dict[str, int | str]]) -> None:
        """Write batched bookkeeping (`last*` times in microseconds) for many devices."""
        by_fields: dict[tuple[str, ...], list[dict[str, int | str]]] = {}
        for num_id, fields in updates.items():
            by_fields.setdefault(tuple(sorted(fields)), []).append({"_num_id": num_id, **fields})
        async with self.write() as conn:
            for names, rows in by_fields.items():
                statement = (
                    update(devices)
                    .where(devices.c.num_id == bindparam("_num_id"))
                    .values({name: bindparam(name) for name in names})
                )
                await conn.execute(statement, rows)

    async def set_last_error(self, num_id: int, code: int, message: str, now: datetime) -> None:
        async with self.write() as conn:
            await conn.execute(
                update(devices)
                .where(devices.c.num_id == num_id)
                .values(
                    last_error_code=code,
                    last_error_message=message[:1000],
                    last_error_time=to_us(now),
                )
            )

    async def ack_configs(self, acks: Sequence[tuple[int, int, int]]) -> None:
        """Record config acknowledgements (num_id, version, time in µs) in one transaction.

        The version's `device_ack_time`, the device's `config_ack_time` when the version is
        still its current one, and its `last_config_ack_time` (the latest of the batch).
        """
        rows = [
            {"_num_id": num_id, "_version": version, "_at": at}
            for num_id, version, at in sorted(acks, key=lambda ack: ack[2])
        ]
        async with self.write() as conn:
            await conn.execute(
                update(device_configs)
                .where(
                    device_configs.c.num_id == bindparam("_num_id"),
                    device_configs.c.version == bindparam("_version"),
                )
                .values(device_ack_time=bindparam("_at")),
                rows,
            )
            # In time order, so a device acknowledging twice in one batch keeps the later time.
            await conn.execute(
                update(devices)
                .where(devices.c.num_id == bindparam("_num_id"))
                .values(
                    last_config_ack_time=bindparam("_at"),
                    config_ack_time=case(
                        (devices.c.config_version == bindparam("_version"), bindparam("_at")),
                        else_=devices.c.config_ack_time,
                    ),
                ),
                rows,
            )

    # Manifest import and signer revocation

    async def add_revoked_signer(self, signer: RevokedSignerRecord) -> bool:
        """Record a revoked signer; False when it was already revoked (nothing changes)."""
        async with self.write() as conn:
            if await conn.scalar(
                select(func.count()).where(revoked_signers.c.key_id == signer.key_id)
            ):
                return False
            await conn.execute(
                insert(revoked_signers).values(
                    key_id=signer.key_id,
                    fingerprint=signer.fingerprint,
                    subject=signer.subject,
                    certificate=signer.certificate,
                    reason=signer.reason,
                    revoked_at=to_us(signer.revoked_at),
                )
            )
        return True

    async def revoked_signers(self) -> list[RevokedSignerRecord]:
        async with self.read() as conn:
            rows = await conn.execute(
                select(revoked_signers).order_by(revoked_signers.c.revoked_at)
            )
            return [_revoked(row) for row in rows]

    async def revoked_signer(self, key_id_or_fingerprint: str) -> RevokedSignerRecord | None:
        """The revoked signer with this key id (SKI hex) or SHA-256 fingerprint (hex)."""
        value = key_id_or_fingerprint.lower()
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(revoked_signers).where(
                        (revoked_signers.c.key_id == value)
                        | (revoked_signers.c.fingerprint == value)
                    )
                )
            ).first()
        return _revoked(row) if row else None


@dataclass(frozen=True)
class RevokedSignerRecord:
    key_id: str
    fingerprint: str
    subject: str
    certificate: str
    reason: str
    revoked_at: datetime


def _revoked(row: Row[Any]) -> RevokedSignerRecord:
    return RevokedSignerRecord(
        row.key_id,
        row.fingerprint,
        row.subject,
        row.certificate,
        row.reason,
        from_us(row.revoked_at),
    )


_APPEND_POSTGRESQL = (
    "INSERT INTO events (topic, data, attributes, publish_time) VALUES ($1, $2, $3, $4)"
)
