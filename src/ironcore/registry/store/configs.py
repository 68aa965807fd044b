"""SQL of device configs and states: the versions of each device's config (the current one
is also in the device row) and the states it reported."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, delete, insert, literal, or_, select, update

from ironcore.registry.resources import DeviceConfig, DeviceState
from ironcore.registry.store import audit
from ironcore.registry.store.database import Database
from ironcore.registry.store.devices import DeviceFilter
from ironcore.registry.store.schema import (
    device_configs,
    device_states,
    devices,
    from_us,
    gateway_bindings,
    to_us,
)


@dataclass(frozen=True)
class ConfigFanout:
    """What a bulk config update did: (num_id, device_id, new version) of each device it
    updated, and the ids of the chosen devices it left alone (updated less than the minimum
    interval ago)."""

    updated: list[tuple[int, str, int]]
    too_soon: list[str]


class ConfigStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def modify_config(
        self, num_id: int, expected_version: int, data: bytes, now: datetime, keep: int
    ) -> DeviceConfig | None:
        """Write config version `expected_version + 1`; None if the current one has moved on."""
        version = expected_version + 1
        now_us = to_us(now)
        async with self.db.write() as conn:
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
                audit.unchanged(conn)
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
        async with self.db.write() as conn:
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
        async with self.db.read() as conn:
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
        async with self.db.write() as conn:
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
        async with self.db.read() as conn:
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
