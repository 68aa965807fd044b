"""Persistence of the device manager (SQLAlchemy Core; SQLite or PostgreSQL)."""

from ironcore.registry.store.sql import DeviceFilter, DeviceRecord, RegistryRecord, Store

__all__ = ["DeviceFilter", "DeviceRecord", "RegistryRecord", "Store"]
