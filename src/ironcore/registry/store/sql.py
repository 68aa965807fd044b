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
    BigInteger,
    Engine,
    Row,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcore.registry.resources import (
    DeviceConfig,
    DeviceState,
)
from ironcore.registry.store.database import Database
from ironcore.registry.store.devices import DeviceFilter, DeviceStore
from ironcore.registry.store.registries import RegistryStore
from ironcore.registry.store.schema import (
    admin_tokens,
    device_configs,
    device_states,
    devices,
    from_us,
    gateway_bindings,
    revoked_signers,
    to_us,
)
from ironcore.registry.store.sqlite_append import APPEND_ONE, SqliteAppender
from ironcore.registry.store.writer_lock import WriterLock


@dataclass(frozen=True)
class ConfigFanout:
    """What a bulk config update did: (num_id, device_id, new version) of each device it
    updated, and the ids of the chosen devices it left alone (updated less than the minimum
    interval ago)."""

    updated: list[tuple[int, str, int]]
    too_soon: list[str]


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

    # Configs and states

    async def modify_config(
        self, num_id: int, expected_version: int, data: bytes, now: datetime, keep: int
    ) -> DeviceConfig | None:
        """Write config version `expected_version + 1`; None if the current one has moved on."""
        version = expected_version + 1
        now_us = to_us(now)
        async with self.write() as conn:
            result = await conn.execute(
                update(devices)
                .where(devices.c.num_id == num_id, devices.c.config_version == expected_version)
                .values(
                    config_version=version,
                    config_data=data,
                    config_update_time=now_us,
                    config_ack_time=0,
                )
            )
            if result.rowcount != 1:
                return None
            await conn.execute(
                insert(device_configs).values(
                    num_id=num_id,
                    version=version,
                    data=data,
                    cloud_update_time=now_us,
                    device_ack_time=0,
                )
            )
            await conn.execute(
                delete(device_configs).where(
                    device_configs.c.num_id == num_id, device_configs.c.version <= version - keep
                )
            )
        return DeviceConfig(version=version, cloud_update_time=now, binary_data=data)

    async def modify_configs(
        self,
        registry_pk: int,
        where: DeviceFilter,
        data: bytes,
        now: datetime,
        updated_before: datetime,
        keep: int,
    ) -> ConfigFanout:
        """Give every chosen device of a registry its next config version, `data`, in one
        transaction; a device whose config was updated after `updated_before` (other than at
        its creation) is left as it is. `where` chooses by device ids, by the gateway they are
        bound to, or (empty) the whole registry.
        """
        chosen = [devices.c.registry_pk == registry_pk, *_fanout_where(where)]
        now_us = to_us(now)
        async with self.write() as conn:
            # One statement: each row's version is bumped where it stands, so a concurrent
            # ModifyCloudToDeviceConfig is never overwritten by a stale read.
            updated = (
                await conn.execute(
                    update(devices)
                    .where(
                        *chosen,
                        or_(
                            devices.c.config_version <= 1,
                            devices.c.config_update_time <= to_us(updated_before),
                        ),
                    )
                    .values(
                        config_version=devices.c.config_version + 1,
                        config_data=data,
                        config_update_time=now_us,
                        config_ack_time=0,
                    )
                    .returning(devices.c.num_id, devices.c.device_id, devices.c.config_version)
                )
            ).all()
            for start in range(0, len(updated), _IN_LIST_MAX):
                chunk = [row.num_id for row in updated[start : start + _IN_LIST_MAX]]
                # Copied inside the database: the data is not sent once per device.
                await conn.execute(
                    insert(device_configs).from_select(
                        ["num_id", "version", "data", "cloud_update_time", "device_ack_time"],
                        select(
                            devices.c.num_id,
                            devices.c.config_version,
                            devices.c.config_data,
                            devices.c.config_update_time,
                            literal(0, BigInteger),
                        ).where(devices.c.num_id.in_(chunk)),
                    )
                )
                current = (
                    select(devices.c.config_version)
                    .where(devices.c.num_id == device_configs.c.num_id)
                    .scalar_subquery()
                )
                await conn.execute(
                    delete(device_configs).where(
                        device_configs.c.num_id.in_(chunk),
                        device_configs.c.version <= current - keep,
                    )
                )
            found = await conn.execute(select(devices.c.device_id).where(*chosen))
            done = {row.device_id for row in updated}
            waiting = sorted(row.device_id for row in found if row.device_id not in done)
        return ConfigFanout(
            [(row.num_id, row.device_id, row.config_version) for row in updated], waiting
        )

    async def list_configs(self, num_id: int, limit: int) -> list[DeviceConfig]:
        async with self.read() as conn:
            rows = await conn.execute(
                select(device_configs)
                .where(device_configs.c.num_id == num_id)
                .order_by(device_configs.c.version.desc())
                .limit(limit)
            )
            return [
                DeviceConfig(
                    version=row.version,
                    cloud_update_time=from_us(row.cloud_update_time),
                    device_ack_time=from_us(row.device_ack_time) if row.device_ack_time else None,
                    binary_data=row.data,
                )
                for row in rows
            ]

    async def add_state(self, num_id: int, data: bytes, now: datetime, keep: int) -> None:
        now_us = to_us(now)
        async with self.write() as conn:
            await conn.execute(
                insert(device_states).values(num_id=num_id, update_time=now_us, data=data)
            )
            await conn.execute(
                update(devices)
                .where(devices.c.num_id == num_id)
                .values(state_data=data, state_time=now_us, last_state_time=now_us)
            )
            stale = (
                select(device_states.c.pk)
                .where(device_states.c.num_id == num_id)
                .order_by(device_states.c.update_time.desc(), device_states.c.pk.desc())
                .offset(keep)
            )
            await conn.execute(delete(device_states).where(device_states.c.pk.in_(stale)))

    async def list_states(self, num_id: int, limit: int) -> list[DeviceState]:
        async with self.read() as conn:
            rows = await conn.execute(
                select(device_states.c.update_time, device_states.c.data)
                .where(device_states.c.num_id == num_id)
                .order_by(device_states.c.update_time.desc(), device_states.c.pk.desc())
                .limit(limit)
            )
            return [
                DeviceState(update_time=from_us(row.update_time), binary_data=row.data)
                for row in rows
            ]

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


# Ids in one IN (...) list at most: SQLite allows 32,766 parameters in a statement, asyncpg 32,767.
_IN_LIST_MAX = 5000


def _fanout_where(where: DeviceFilter) -> list[Any]:
    if where.device_ids:
        return [devices.c.device_id.in_(where.device_ids)]
    if where.bound_to_gateway is not None:
        bound = select(gateway_bindings.c.device_num_id).where(
            gateway_bindings.c.gateway_num_id == where.bound_to_gateway
        )
        return [devices.c.num_id.in_(bound)]
    return []


_APPEND_POSTGRESQL = (
    "INSERT INTO events (topic, data, attributes, publish_time) VALUES ($1, $2, $3, $4)"
)
