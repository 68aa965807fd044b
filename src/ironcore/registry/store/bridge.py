"""What the bridges write, batched, beside every request: events (the event log's group
commit), the devices' `last*` times, a device's last error and config acknowledgements."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import bindparam, case, update

from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import device_configs, devices
from ironcore.registry.store.sqlite_append import APPEND_ONE


class BridgeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def append_events(self, rows: Sequence[tuple[str, bytes, str, int]]) -> None:
        """Append events (topic, data, attributes as JSON text, publish time in µs) in one
        transaction.

        Through the driver's own executemany: at tens of thousands of events a second,
        SQLAlchemy's per-row parameter processing cost more than SQLite's insert itself.
        """
        if self.db.appender is not None:
            # Shielded: this process's writers wait for the append's thread even if the caller
            # stops waiting, since the thread goes on holding the lock.
            await asyncio.shield(self.db.append_sqlite(rows))
            return
        async with self.db.write() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            if self.db.is_sqlite:
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
        async with self.db.write() as conn:
            for names, rows in by_fields.items():
                statement = (
                    update(devices)
                    .where(devices.c.num_id == bindparam("_num_id"))
                    .values({name: bindparam(name) for name in names})
                )
                await conn.execute(statement, rows)

    async def ack_configs(self, acks: Sequence[tuple[int, int, int]]) -> None:
        """Record config acknowledgements (num_id, version, time in µs) in one transaction.

        The version's `device_ack_time`, the device's `config_ack_time` when the version is
        still its current one, and its `last_config_ack_time` (the latest of the batch).
        """
        rows = [
            {"_num_id": num_id, "_version": version, "_at": at}
            for num_id, version, at in sorted(acks, key=lambda ack: ack[2])
        ]
        async with self.db.write() as conn:
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


# `events.xid` is the column's default, the transaction's id: readers go by it (pubsub.py).
_APPEND_POSTGRESQL = (
    "INSERT INTO events (topic, data, attributes, publish_time) VALUES ($1, $2, $3, $4)"
)
