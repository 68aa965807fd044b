"""The Store: the database (database.py) with the SQL of registries, devices, admin tokens,
the bridges' writes and revoked signers. Each method is one transaction.
"""

from __future__ import annotations

import asyncio
import json
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
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcore.errors import AlreadyExists, FailedPrecondition
from ironcore.registry.names import RegistryName, device_name
from ironcore.registry.resources import (
    Device,
    DeviceConfig,
    DeviceState,
    GatewayType,
    Status,
)
from ironcore.registry.store.database import Database
from ironcore.registry.store.registries import REGISTRY_WHERE, RegistryStore, registry_params
from ironcore.registry.store.rotation import ACTIVE as ROTATION_ACTIVE
from ironcore.registry.store.schema import (
    admin_tokens,
    device_configs,
    device_states,
    devices,
    from_us,
    gateway_bindings,
    registries,
    revoked_signers,
    to_us,
)
from ironcore.registry.store.sqlite_append import APPEND_ONE, SqliteAppender
from ironcore.registry.store.writer_lock import WriterLock
from ironcore.registry.wire import STORED


@dataclass(frozen=True)
class DeviceRecord:
    registry_pk: int
    device: Device
    config_update_time: datetime
    # A key rotation under way (docs/rotation.md): a connecting device may complete it.
    rotating: bool = False


@dataclass(frozen=True)
class DeviceFilter:
    device_ids: Sequence[str] = ()
    num_ids: Sequence[int] = ()
    gateway_type: GatewayType | None = None
    bound_to_gateway: int | None = None
    gateways_of_device: int | None = None


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

    # Devices

    async def create_device(
        self, registry_pk: int, registry: RegistryName, device: Device, now: datetime
    ) -> Device:
        """Insert a device with its first config version (1)."""
        config = device.config or DeviceConfig()
        now_us = to_us(now)
        async with self.write() as conn:
            try:
                await conn.execute(
                    insert(devices).values(
                        num_id=device.num_id,
                        registry_pk=registry_pk,
                        device_id=device.id,
                        blocked=device.blocked,
                        gateway_type=int(device.gateway_config.gateway_type),
                        body=_device_body(device),
                        config_version=1,
                        config_data=config.binary_data,
                        config_update_time=now_us,
                        config_ack_time=0,
                        state_data=None,
                        state_time=0,
                        last_heartbeat_time=0,
                        last_event_time=0,
                        last_state_time=0,
                        last_config_ack_time=0,
                        last_config_send_time=0,
                        last_error_time=0,
                        last_error_code=0,
                        last_error_message="",
                        last_gateway_id="",
                        last_gateway_time=0,
                    )
                )
            except IntegrityError as exc:
                if "num_id" in str(exc.orig) and "device_id" not in str(exc.orig):
                    raise NumIdTaken() from None
                raise AlreadyExists(
                    f"Device {registry}/devices/{device.id} already exists"
                ) from None
            await conn.execute(
                insert(device_configs).values(
                    num_id=device.num_id,
                    version=1,
                    data=config.binary_data,
                    cloud_update_time=now_us,
                    device_ack_time=0,
                )
            )
            row = (
                await conn.execute(select(devices).where(devices.c.num_id == device.num_id))
            ).one()
        return _device(registry, row)

    async def get_device(
        self,
        registry: RegistryName,
        device_id: str | None,
        num_id: int | None,
        *,
        bridge_view: bool = False,
    ) -> DeviceRecord | None:
        """The device; with `bridge_view`, only what a bridge keeps for a connection (identity,
        credentials, blocked, gateway settings), which is also cheaper to build."""
        if bridge_view and self.device_reads is not None:
            return self._bridge_device_record(registry, device_id, num_id)
        params: dict[str, Any] = registry_params(registry)
        if num_id is not None:
            query, params["num_id"] = _DEVICE_BY_NUM_ID, num_id
        else:
            query, params["device_id"] = _DEVICE_BY_ID, device_id
        async with self.read() as conn:
            row = (await conn.execute(query, params)).first()
        if row is None:
            return None
        body = json.loads(row.body) if isinstance(row.body, str) else row.body
        return DeviceRecord(
            row.pk,
            _bridge_device(registry, row.num_id, row.device_id, row.blocked, row.gateway_type, body)
            if bridge_view
            else _device(registry, row),
            from_us(row.config_update_time),
            rotating=_rotating(body),
        )

    def _bridge_device_record(
        self, registry: RegistryName, device_id: str | None, num_id: int | None
    ) -> DeviceRecord | None:
        assert self.device_reads is not None
        key = (registry.project, registry.location.location, registry.registry)
        if num_id is not None:
            found = self.device_reads.execute(_BRIDGE_DEVICE_BY_NUM_ID, (*key, num_id))
        else:
            found = self.device_reads.execute(_BRIDGE_DEVICE_BY_ID, (*key, device_id))
        row = found.fetchone()
        if row is None:
            return None
        num, device, blocked, gateway_type, text, config_update_time, registry_pk = row
        body = json.loads(text)
        return DeviceRecord(
            registry_pk,
            _bridge_device(registry, num, device, bool(blocked), gateway_type, body),
            from_us(config_update_time),
            rotating=_rotating(body),
        )

    async def update_device(self, device: Device) -> None:
        async with self.write() as conn:
            # The body also holds what is not part of the resource (a key rotation); keep it.
            current = await conn.scalar(
                select(devices.c.body).where(devices.c.num_id == device.num_id)
            )
            body = {**(current or {}), **_device_body(device)}
            await conn.execute(
                update(devices)
                .where(devices.c.num_id == device.num_id)
                .values(
                    blocked=device.blocked,
                    gateway_type=int(device.gateway_config.gateway_type),
                    body=body,
                )
            )

    async def delete_device(self, registry: RegistryName, num_id: int) -> None:
        async with self.write() as conn:
            bound = await conn.scalar(
                select(func.count()).where(
                    (gateway_bindings.c.device_num_id == num_id)
                    | (gateway_bindings.c.gateway_num_id == num_id)
                )
            )
            if bound:
                raise FailedPrecondition(
                    f"Device {registry}/devices/{num_id} has {bound} gateway binding(s); "
                    "unbind them before deleting it"
                )
            await conn.execute(delete(device_configs).where(device_configs.c.num_id == num_id))
            await conn.execute(delete(device_states).where(device_states.c.num_id == num_id))
            await conn.execute(delete(devices).where(devices.c.num_id == num_id))

    async def list_devices(
        self,
        registry_pk: int,
        registry: RegistryName,
        where: DeviceFilter,
        after: int,
        limit: int,
    ) -> list[Device]:
        query = select(devices).where(
            devices.c.registry_pk == registry_pk, devices.c.num_id > after
        )
        if where.device_ids or where.num_ids:
            query = query.where(
                devices.c.device_id.in_(where.device_ids) | devices.c.num_id.in_(where.num_ids)
            )
        if where.gateway_type is GatewayType.GATEWAY:
            query = query.where(devices.c.gateway_type == int(GatewayType.GATEWAY))
        elif where.gateway_type is GatewayType.NON_GATEWAY:
            query = query.where(devices.c.gateway_type != int(GatewayType.GATEWAY))
        if where.bound_to_gateway is not None:
            query = query.where(
                devices.c.num_id.in_(
                    select(gateway_bindings.c.device_num_id).where(
                        gateway_bindings.c.gateway_num_id == where.bound_to_gateway
                    )
                )
            )
        if where.gateways_of_device is not None:
            query = query.where(
                devices.c.num_id.in_(
                    select(gateway_bindings.c.gateway_num_id).where(
                        gateway_bindings.c.device_num_id == where.gateways_of_device
                    )
                )
            )
        async with self.read() as conn:
            rows = await conn.execute(query.order_by(devices.c.num_id).limit(limit))
            return [_device(registry, row) for row in rows]

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

    # Gateway bindings

    async def bind(self, gateway: int, device: int, max_devices: int, max_gateways: int) -> None:
        """Bind; binding twice is not an error (Cloud IoT Core answered {} again)."""
        async with self.write() as conn:
            if await conn.scalar(
                select(func.count()).where(
                    gateway_bindings.c.gateway_num_id == gateway,
                    gateway_bindings.c.device_num_id == device,
                )
            ):
                return
            bound = await conn.scalar(
                select(func.count()).where(gateway_bindings.c.gateway_num_id == gateway)
            )
            if (bound or 0) >= max_devices:
                raise FailedPrecondition(f"The gateway already has {max_devices} bound devices")
            gateways = await conn.scalar(
                select(func.count()).where(gateway_bindings.c.device_num_id == device)
            )
            if (gateways or 0) >= max_gateways:
                raise FailedPrecondition(f"The device is already bound to {max_gateways} gateways")
            await conn.execute(
                insert(gateway_bindings).values(gateway_num_id=gateway, device_num_id=device)
            )

    async def unbind(self, gateway: int, device: int) -> bool:
        async with self.write() as conn:
            result = await conn.execute(
                delete(gateway_bindings).where(
                    gateway_bindings.c.gateway_num_id == gateway,
                    gateway_bindings.c.device_num_id == device,
                )
            )
            return bool(result.rowcount)

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

    async def is_bound(self, gateway: int, device: int) -> bool:
        async with self.read() as conn:
            found = await conn.scalar(
                select(gateway_bindings.c.device_num_id).where(
                    gateway_bindings.c.gateway_num_id == gateway,
                    gateway_bindings.c.device_num_id == device,
                )
            )
        return found is not None

    # Manifest import and signer revocation

    async def create_devices(
        self, registry_pk: int, registry: RegistryName, batch: Sequence[Device], now: datetime
    ) -> None:
        """Insert devices, each with config version 1, all in one transaction: all or none.

        NumIdTaken or AlreadyExists when a numeric or string id is in use; nothing is written.
        """
        now_us = to_us(now)
        rows = [_new_device_row(registry_pk, device, now_us) for device in batch]
        configs = [
            {
                "num_id": device.num_id,
                "version": 1,
                "data": device.config.binary_data if device.config else b"",
                "cloud_update_time": now_us,
                "device_ack_time": 0,
            }
            for device in batch
        ]
        async with self.write() as conn:
            try:
                await conn.execute(insert(devices), rows)
            except IntegrityError as exc:
                if "num_id" in str(exc.orig) and "device_id" not in str(exc.orig):
                    raise NumIdTaken() from None
                raise AlreadyExists(
                    f"a device of this batch already exists in {registry}"
                ) from None
            await conn.execute(insert(device_configs), configs)

    async def device_credentials(
        self, registry_pk: int
    ) -> list[tuple[str, list[Any], dict[str, str]]]:
        """Every device of a registry as (id, credentials in wire form, metadata)."""
        async with self.read() as conn:
            rows = await conn.execute(
                select(devices.c.device_id, devices.c.body).where(
                    devices.c.registry_pk == registry_pk
                )
            )
            out = []
            for row in rows:
                body = json.loads(row.body) if isinstance(row.body, str) else row.body
                out.append((row.device_id, body["credentials"], body["metadata"]))
            return out

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


def _new_device_row(registry_pk: int, device: Device, now_us: int) -> dict[str, Any]:
    return {
        "num_id": device.num_id,
        "registry_pk": registry_pk,
        "device_id": device.id,
        "blocked": device.blocked,
        "gateway_type": int(device.gateway_config.gateway_type),
        "body": _device_body(device),
        "config_version": 1,
        "config_data": device.config.binary_data if device.config else b"",
        "config_update_time": now_us,
        "config_ack_time": 0,
        "state_data": None,
        "state_time": 0,
        "last_heartbeat_time": 0,
        "last_event_time": 0,
        "last_state_time": 0,
        "last_config_ack_time": 0,
        "last_config_send_time": 0,
        "last_error_time": 0,
        "last_error_code": 0,
        "last_error_message": "",
        "last_gateway_id": "",
        "last_gateway_time": 0,
    }


class NumIdTaken(Exception):
    """The randomly drawn numeric id is in use; the caller draws another."""


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


_DEVICE = (
    select(devices, registries.c.pk)
    .join(registries, registries.c.pk == devices.c.registry_pk)
    .where(*REGISTRY_WHERE)
)
_DEVICE_BY_ID = _DEVICE.where(devices.c.device_id == bindparam("device_id"))
_DEVICE_BY_NUM_ID = _DEVICE.where(devices.c.num_id == bindparam("num_id"))

_BRIDGE_DEVICE = (
    "SELECT d.num_id, d.device_id, d.blocked, d.gateway_type, d.body, d.config_update_time, r.pk"
    " FROM devices AS d JOIN registries AS r ON r.pk = d.registry_pk"
    " WHERE r.project = ? AND r.location = ? AND r.registry_id = ?"
)
_BRIDGE_DEVICE_BY_ID = _BRIDGE_DEVICE + " AND d.device_id = ?"
_BRIDGE_DEVICE_BY_NUM_ID = _BRIDGE_DEVICE + " AND d.num_id = ?"
_APPEND_POSTGRESQL = (
    "INSERT INTO events (topic, data, attributes, publish_time) VALUES ($1, $2, $3, $4)"
)


def _device_body(device: Device) -> dict[str, Any]:
    return {
        "credentials": [credential.to_wire() for credential in device.credentials],
        "metadata": device.metadata,
        "logLevel": int(device.log_level),
        "gatewayAuthMethod": int(device.gateway_config.gateway_auth_method),
    }


def _rotating(body: dict[str, Any]) -> bool:
    """Whether the device body holds a key rotation under way."""
    rotation = body.get("keyRotation")
    return bool(rotation and rotation.get("state") in ROTATION_ACTIVE)


def _bridge_device(
    registry: RegistryName,
    num_id: int,
    device_id: str,
    blocked: bool,
    gateway_type: int,
    body: dict[str, Any],
) -> Device:
    return Device.model_validate(
        {
            "id": device_id,
            "name": device_name(registry, num_id),
            "numId": num_id,
            "credentials": body["credentials"],
            "blocked": blocked,
            "gatewayConfig": {
                "gatewayType": gateway_type,
                "gatewayAuthMethod": body["gatewayAuthMethod"],
            },
        },
        context=STORED,
    )


def _device(registry: RegistryName, row: Row[Any]) -> Device:
    body = json.loads(row.body) if isinstance(row.body, str) else row.body
    device = Device.model_validate(
        {
            "id": row.device_id,
            "name": device_name(registry, row.num_id),
            "numId": row.num_id,
            "credentials": body["credentials"],
            "metadata": body["metadata"],
            "logLevel": body["logLevel"],
            "blocked": row.blocked,
            "gatewayConfig": {
                "gatewayType": row.gateway_type,
                "gatewayAuthMethod": body["gatewayAuthMethod"],
                "lastAccessedGatewayId": row.last_gateway_id,
                "lastAccessedGatewayTime": from_us(row.last_gateway_time)
                if row.last_gateway_time
                else None,
            },
        },
        context=STORED,
    )
    device.config = DeviceConfig(
        version=row.config_version,
        cloud_update_time=from_us(row.config_update_time),
        device_ack_time=from_us(row.config_ack_time) if row.config_ack_time else None,
        binary_data=row.config_data,
    )
    if row.state_time:
        device.state = DeviceState(update_time=from_us(row.state_time), binary_data=row.state_data)
    device.last_heartbeat_time = from_us(row.last_heartbeat_time)
    device.last_event_time = from_us(row.last_event_time)
    device.last_state_time = from_us(row.last_state_time)
    device.last_config_ack_time = from_us(row.last_config_ack_time)
    device.last_config_send_time = from_us(row.last_config_send_time)
    device.last_error_time = from_us(row.last_error_time)
    if row.last_error_code or row.last_error_message:
        device.last_error_status = Status(code=row.last_error_code, message=row.last_error_message)
    return device
