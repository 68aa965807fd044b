"""Persistence: every SQL statement of ironcore is in this package (SQLAlchemy Core, one schema
for SQLite and PostgreSQL, schema.py; migrations/).

`Store` is the database (database.py: connections, transactions, migrations) with the stores of
the device manager's aggregates, so that one object is passed around and each aggregate's SQL is
a small module of its own:

    store.registries   registries.py   registries and their IAM policies
    store.devices      devices.py      devices and gateway bindings
    store.configs      configs.py      config versions and reported states
    store.tokens       tokens.py       admin tokens
    store.bridge       bridge.py       what the bridges write: events, `last*` times, errors, acks
    store.revocations  revocation.py   revoked batch signers

The stores of other features are made by their users over the database: pubsub.py (the embedded
Pub/Sub), firmware.py (images and rollouts), rotation.py (key rotations).
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcore.registry.store.bridge import BridgeStore
from ironcore.registry.store.configs import ConfigStore
from ironcore.registry.store.database import Database
from ironcore.registry.store.devices import DeviceStore
from ironcore.registry.store.registries import RegistryStore
from ironcore.registry.store.revocation import RevocationStore
from ironcore.registry.store.sqlite_append import SqliteAppender
from ironcore.registry.store.tokens import TokenStore
from ironcore.registry.store.writer_lock import WriterLock


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
        self.tokens = TokenStore(self)
        self.bridge = BridgeStore(self)
        self.revocations = RevocationStore(self)


__all__ = ["Store"]
