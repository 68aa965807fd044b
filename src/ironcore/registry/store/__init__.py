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
    store.audit        audit.py        the audit log

The stores of other features are made by their users over the database: pubsub.py (the embedded
Pub/Sub), firmware.py (images and rollouts), rotation.py (key rotations).
"""

from __future__ import annotations

from typing import Any

from ironcore.registry.store.audit import AuditStore
from ironcore.registry.store.bridge import BridgeStore
from ironcore.registry.store.configs import ConfigStore
from ironcore.registry.store.database import Database
from ironcore.registry.store.devices import DeviceStore
from ironcore.registry.store.registries import RegistryStore
from ironcore.registry.store.revocation import RevocationStore
from ironcore.registry.store.tokens import TokenStore


class Store(Database):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Made by `Store.open`, with the Database's arguments."""
        super().__init__(*args, **kwargs)
        self.registries = RegistryStore(self)
        self.devices = DeviceStore(self)
        self.configs = ConfigStore(self)
        self.tokens = TokenStore(self)
        self.bridge = BridgeStore(self)
        self.revocations = RevocationStore(self)
        self.audit = AuditStore(self)


__all__ = ["Store"]
