"""Persistence of the device manager (SQLAlchemy Core; SQLite or PostgreSQL)."""

from ironcore.registry.store.registries import RegistryRecord
from ironcore.registry.store.sql import DeviceFilter, DeviceRecord, Store

__all__ = ["DeviceFilter", "DeviceRecord", "RegistryRecord", "Store"]
