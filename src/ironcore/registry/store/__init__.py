"""Persistence of the device manager (SQLAlchemy Core; SQLite or PostgreSQL)."""

from ironcore.registry.store.devices import DeviceFilter, DeviceRecord
from ironcore.registry.store.registries import RegistryRecord
from ironcore.registry.store.sql import Store

__all__ = ["DeviceFilter", "DeviceRecord", "RegistryRecord", "Store"]
