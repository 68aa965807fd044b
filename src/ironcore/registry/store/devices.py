"""SQL of devices and their gateway bindings.

A device row holds the resource (its credentials and metadata as JSON), its current config and
state, and the `last*` times the bridges write (bridge.py); config versions and reported
states are configs.py's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ironcore.errors import AlreadyExists, FailedPrecondition
from ironcore.registry import provenance
from ironcore.registry.names import RegistryName, device_name
from ironcore.registry.provenance import Provenance
from ironcore.registry.resources import Device, DeviceConfig, DeviceState, GatewayType, Status
from ironcore.registry.store import audit
from ironcore.registry.store.database import Database
from ironcore.registry.store.registries import REGISTRY_WHERE, registry_params
from ironcore.registry.store.rotation import ACTIVE as ROTATION_ACTIVE
from ironcore.registry.store.schema import (
    device_configs,
    device_states,
    devices,
    from_us,
    gateway_bindings,
    registries,
    to_us,
)
from ironcore.registry.wire import STORED


@dataclass(frozen=True)
class DeviceRecord:
    registry_pk: int
    device: Device
    config_update_time: datetime
    # A key rotation under way (docs/rotation.md): a connecting device may complete it.
    rotating: bool = False
    # Where each credential came from, by fingerprint (registry.provenance).
    provenance: dict[str, Provenance] = field(default_factory=dict)


class DeviceRow(NamedTuple):
    """A device's row as stored, with its registry's key: times in microseconds since the
    epoch (0: never), the resource's other fields in `body`. What `_device` builds the resource
    from, and what gRPC's GetDevice builds its message from (`rpc.device_message`)."""

    registry_pk: int
    num_id: int
    device_id: str
    blocked: bool
    gateway_type: int
    body: dict[str, Any]
    config_version: int
    config_data: bytes
    config_update_time: int
    config_ack_time: int
    state_data: bytes | None
    state_time: int
    last_heartbeat_time: int
    last_event_time: int
    last_state_time: int
    last_config_ack_time: int
    last_config_send_time: int
    last_error_time: int
    last_error_code: int
    last_error_message: str
    last_gateway_id: str
    last_gateway_time: int


@dataclass(frozen=True)
class DeviceFilter:
    device_ids: Sequence[str] = ()
    num_ids: Sequence[int] = ()
    gateway_type: GatewayType | None = None
    bound_to_gateway: int | None = None
    gateways_of_device: int | None = None


class NumIdTaken(Exception):
    """The randomly drawn numeric id is in use; the caller draws another."""


class DeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_device(
        self,
        registry_pk: int,
        registry: RegistryName,
        device: Device,
        now: datetime,
        origin: str = provenance.ADMIN,
    ) -> Device:
        """Insert a device with its first config version (1); its plain keys have provenance
        `origin` (certificates name their signer)."""
        now_us = to_us(now)
        values = _new_device_row(registry_pk, device, now_us, origin)
        config = _first_config_row(device, now_us)

        def create(conn: Connection) -> Row[Any]:
            try:
                row = conn.execute(_INSERT_DEVICE, values).one()
            except IntegrityError as exc:
                raise _id_taken(
                    exc, f"Device {registry}/devices/{device.id} already exists"
                ) from None
            conn.execute(_INSERT_CONFIG, config)
            return row

        return _device(registry, await self.db.write_sync(create))

    async def create_devices(
        self,
        registry_pk: int,
        registry: RegistryName,
        batch: Sequence[Device],
        now: datetime,
        origin: str = provenance.ADMIN,
    ) -> None:
        """Insert devices, each with config version 1, all in one transaction: all or none.

        NumIdTaken or AlreadyExists when a numeric or string id is in use; nothing is written.
        """
        now_us = to_us(now)
        rows = [_new_device_row(registry_pk, device, now_us, origin) for device in batch]
        configs = [_first_config_row(device, now_us) for device in batch]
        async with self.db.write() as conn:
            try:
                await conn.execute(insert(devices), rows)
            except IntegrityError as exc:
                raise _id_taken(
                    exc, f"a device of this batch already exists in {registry}"
                ) from None
            await conn.execute(insert(device_configs), configs)

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
        if bridge_view and self.db.device_reads is not None:
            return self._bridge_device_record(registry, device_id, num_id)
        row = await self.get_device_row(registry, device_id, num_id)
        if row is None:
            return None
        return DeviceRecord(
            row.registry_pk,
            _bridge_device(
                registry, row.num_id, row.device_id, row.blocked, row.gateway_type, row.body
            )
            if bridge_view
            else _device(registry, row),
            from_us(row.config_update_time),
            rotating=_rotating(row.body),
            provenance=provenance.read(row.body),
        )

    async def get_device_row(
        self, registry: RegistryName, device_id: str | None, num_id: int | None
    ) -> DeviceRow | None:
        """The device's row. On a SQLite file, straight from the driver connection the bridges'
        lookups use: through SQLAlchemy's Core the read cost several times SQLite's work."""
        found: Any
        if self.db.device_reads is not None:
            key = (registry.project, registry.location.location, registry.registry)
            with self.db.faults():
                if num_id is not None:
                    cursor = self.db.device_reads.execute(_ROW_BY_NUM_ID, (*key, num_id))
                else:
                    cursor = self.db.device_reads.execute(_ROW_BY_ID, (*key, device_id))
                found = cursor.fetchone()
        else:
            params: dict[str, Any] = registry_params(registry)
            if num_id is not None:
                query, params["num_id"] = _DEVICE_BY_NUM_ID, num_id
            else:
                query, params["device_id"] = _DEVICE_BY_ID, device_id
            async with self.db.read() as conn:
                found = (await conn.execute(query, params)).first()
        if found is None:
            return None
        pk, num, device, blocked, gateway_type, body, *rest = found
        # SQLite gives the flag as an integer and, to the driver connection, the body as text.
        body = json.loads(body) if isinstance(body, str) else body
        return DeviceRow(pk, num, device, bool(blocked), gateway_type, body, *rest)

    def _bridge_device_record(
        self, registry: RegistryName, device_id: str | None, num_id: int | None
    ) -> DeviceRecord | None:
        assert self.db.device_reads is not None
        key = (registry.project, registry.location.location, registry.registry)
        with self.db.faults():
            if num_id is not None:
                found = self.db.device_reads.execute(_BRIDGE_DEVICE_BY_NUM_ID, (*key, num_id))
            else:
                found = self.db.device_reads.execute(_BRIDGE_DEVICE_BY_ID, (*key, device_id))
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
            provenance=provenance.read(body),
        )

    async def update_device(self, device: Device) -> None:
        async with self.db.write() as conn:
            # The body also holds what is not part of the resource (a key rotation, the
            # credentials' provenance); keep it, for the credentials that stay.
            current = await conn.scalar(
                select(devices.c.body).where(devices.c.num_id == device.num_id)
            )
            body = {**(current or {}), **_device_body(device)}
            body[provenance.BODY_KEY] = provenance.carried(
                (current or {}).get(provenance.BODY_KEY), body["credentials"]
            )
            await conn.execute(
                update(devices)
                .where(devices.c.num_id == device.num_id)
                .values(
                    blocked=device.blocked,
                    gateway_type=int(device.gateway_config.gateway_type),
                    body=body,
                )
            )

    async def change_provenance(
        self,
        num_id: int,
        change: Callable[[list[dict[str, Any]], dict[str, Provenance]], dict[str, Provenance]],
    ) -> tuple[list[dict[str, Any]], dict[str, Provenance]] | None:
        """Replace the device's credential provenance by `change(credentials in wire form,
        provenance now)`, in one transaction; what it became (None if there is no device)."""
        async with self.db.write() as conn:
            query = select(devices.c.body).where(devices.c.num_id == num_id)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            body = await conn.scalar(query)
            if body is None:
                audit.unchanged(conn)
                return None
            credentials = list(body["credentials"])
            changed = change(credentials, provenance.read(body))
            body = {**body, provenance.BODY_KEY: {f: p.to_body() for f, p in changed.items()}}
            await conn.execute(update(devices).where(devices.c.num_id == num_id).values(body=body))
        return credentials, changed

    async def delete_device(self, registry: RegistryName, num_id: int) -> None:
        async with self.db.write() as conn:
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
        async with self.db.read() as conn:
            rows = await conn.execute(query.order_by(devices.c.num_id).limit(limit))
            return [_device(registry, row) for row in rows]

    async def device_credentials(
        self, registry_pk: int
    ) -> list[tuple[str, list[Any], dict[str, str]]]:
        """Every device of a registry as (id, credentials in wire form, metadata)."""
        async with self.db.read() as conn:
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

    # Gateway bindings

    async def bind(self, gateway: int, device: int, max_devices: int, max_gateways: int) -> None:
        """Bind; binding twice is not an error (Cloud IoT Core answered {} again)."""
        async with self.db.write() as conn:
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
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(gateway_bindings).where(
                    gateway_bindings.c.gateway_num_id == gateway,
                    gateway_bindings.c.device_num_id == device,
                )
            )
            if not result.rowcount:
                audit.unchanged(conn)
            return bool(result.rowcount)

    async def is_bound(self, gateway: int, device: int) -> bool:
        async with self.db.read() as conn:
            found = await conn.scalar(
                select(gateway_bindings.c.device_num_id).where(
                    gateway_bindings.c.gateway_num_id == gateway,
                    gateway_bindings.c.device_num_id == device,
                )
            )
        return found is not None


# The hottest reads (every device connection and HTTP request), built once: building a
# statement costs SQLAlchemy more than running it on SQLite. Their columns are DeviceRow's.
_DEVICE = (
    select(registries.c.pk, *(devices.c[name] for name in DeviceRow._fields[1:]))
    .join(registries, registries.c.pk == devices.c.registry_pk)
    .where(*REGISTRY_WHERE)
)
_DEVICE_BY_ID = _DEVICE.where(devices.c.device_id == bindparam("device_id"))
_DEVICE_BY_NUM_ID = _DEVICE.where(devices.c.num_id == bindparam("num_id"))
# ...and for SQLite's driver connection.
_ROW = (
    f"SELECT r.pk, {', '.join(f'd.{name}' for name in DeviceRow._fields[1:])}"
    " FROM devices AS d JOIN registries AS r ON r.pk = d.registry_pk"
    " WHERE r.project = ? AND r.location = ? AND r.registry_id = ?"
)
_ROW_BY_ID = _ROW + " AND d.device_id = ?"
_ROW_BY_NUM_ID = _ROW + " AND d.num_id = ?"

_BRIDGE_DEVICE = (
    "SELECT d.num_id, d.device_id, d.blocked, d.gateway_type, d.body, d.config_update_time, r.pk"
    " FROM devices AS d JOIN registries AS r ON r.pk = d.registry_pk"
    " WHERE r.project = ? AND r.location = ? AND r.registry_id = ?"
)
_BRIDGE_DEVICE_BY_ID = _BRIDGE_DEVICE + " AND d.device_id = ?"
_BRIDGE_DEVICE_BY_NUM_ID = _BRIDGE_DEVICE + " AND d.num_id = ?"
# CreateDevice's statements: the new row comes back from its insert, not a select after it.
_INSERT_DEVICE = insert(devices).returning(*devices.c)
_INSERT_CONFIG = insert(device_configs)


def _new_device_row(registry_pk: int, device: Device, now_us: int, origin: str) -> dict[str, Any]:
    body = _device_body(device)
    body[provenance.BODY_KEY] = provenance.carried(None, body["credentials"], origin)
    return {
        "num_id": device.num_id,
        "registry_pk": registry_pk,
        "device_id": device.id,
        "blocked": device.blocked,
        "gateway_type": int(device.gateway_config.gateway_type),
        "body": body,
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


def _first_config_row(device: Device, now_us: int) -> dict[str, Any]:
    return {
        "num_id": device.num_id,
        "version": 1,
        "data": device.config.binary_data if device.config else b"",
        "cloud_update_time": now_us,
        "device_ack_time": 0,
    }


def _id_taken(exc: IntegrityError, message: str) -> Exception:
    """What a failed device insert means: NumIdTaken when the numeric id is in use (the caller
    draws another), otherwise AlreadyExists(message)."""
    if "num_id" in str(exc.orig) and "device_id" not in str(exc.orig):
        return NumIdTaken()
    return AlreadyExists(message)


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


def _device(registry: RegistryName, row: Row[Any] | DeviceRow) -> Device:
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
