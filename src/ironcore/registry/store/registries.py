"""SQL of registries and their IAM policies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ironcore.errors import AlreadyExists, FailedPrecondition, ResourceExhausted
from ironcore.registry.names import LocationName, RegistryName
from ironcore.registry.resources import DeviceRegistry
from ironcore.registry.store import audit
from ironcore.registry.store.database import Database
from ironcore.registry.store.policies import bindings
from ironcore.registry.store.schema import devices, iam_policies, registries, to_us
from ironcore.registry.wire import STORED


@dataclass(frozen=True)
class RegistryRecord:
    pk: int
    registry: DeviceRegistry


class RegistryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_registry(
        self, name: RegistryName, registry: DeviceRegistry, now: datetime, max_per_location: int
    ) -> RegistryRecord:
        async with self.db.write() as conn:
            count = await conn.scalar(
                select(func.count()).where(
                    registries.c.project == name.project,
                    registries.c.location == name.location.location,
                )
            )
            if (count or 0) >= max_per_location:
                raise ResourceExhausted(
                    f"{name.location} already has {max_per_location} registries, the limit"
                )
            try:
                pk = await conn.scalar(
                    insert(registries)
                    .values(
                        project=name.project,
                        location=name.location.location,
                        registry_id=name.registry,
                        body=_registry_body(registry),
                        created_at=to_us(now),
                    )
                    .returning(registries.c.pk)
                )
            except IntegrityError:
                raise AlreadyExists(f"Registry {name} already exists") from None
        assert pk is not None
        return RegistryRecord(pk, _registry(name, _registry_body(registry)))

    async def get_registry(self, name: RegistryName) -> RegistryRecord | None:
        async with self.db.read() as conn:
            row = (await conn.execute(_REGISTRY, registry_params(name))).first()
        return RegistryRecord(row.pk, _registry(name, row.body)) if row else None

    async def update_registry(self, pk: int, name: RegistryName, registry: DeviceRegistry) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(registries)
                .where(registries.c.pk == pk)
                .values(body=_registry_body(registry))
            )

    async def delete_registry(self, name: RegistryName) -> bool:
        """Delete an empty registry; False if there is no such registry."""
        async with self.db.write() as conn:
            pk = await conn.scalar(select(registries.c.pk).where(*_registry_where(name)))
            if pk is None:
                audit.unchanged(conn)
                return False
            if await conn.scalar(
                select(devices.c.num_id).where(devices.c.registry_pk == pk).limit(1)
            ):
                raise FailedPrecondition(f"Registry {name} is not empty; delete its devices first")
            await conn.execute(delete(iam_policies).where(iam_policies.c.registry_pk == pk))
            await conn.execute(delete(registries).where(registries.c.pk == pk))
        self.db.policies_changed()
        return True

    async def list_registries(
        self, location: LocationName, after: int, limit: int
    ) -> list[RegistryRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(registries.c.pk, registries.c.registry_id, registries.c.body)
                .where(
                    registries.c.project == location.project,
                    registries.c.location == location.location,
                    registries.c.pk > after,
                )
                .order_by(registries.c.pk)
                .limit(limit)
            )
            return [
                RegistryRecord(row.pk, _registry(RegistryName(location, row.registry_id), row.body))
                for row in rows
            ]

    async def all_registry_names(self) -> list[RegistryName]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(registries.c.project, registries.c.location, registries.c.registry_id)
            )
            return [
                RegistryName(LocationName(row.project, row.location), row.registry_id)
                for row in rows
            ]

    # IAM policies

    async def get_policy(self, registry_pk: int) -> tuple[dict[str, Any], str] | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(iam_policies.c.policy, iam_policies.c.etag).where(
                        iam_policies.c.registry_pk == registry_pk
                    )
                )
            ).first()
        return (dict(row.policy), row.etag) if row else None

    async def set_policy(
        self, registry_pk: int, policy: dict[str, Any], etag: str, expected_etag: str | None
    ) -> bool:
        """Store a policy; with `expected_etag`, only if the stored one still has it."""
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(iam_policies.c.etag, iam_policies.c.policy).where(
                        iam_policies.c.registry_pk == registry_pk
                    )
                )
            ).first()
            current = None if row is None else row.etag
            if expected_etag is not None and expected_etag != (current or ""):
                audit.unchanged(conn)
                return False
            audit.changed(bindings(None if row is None else row.policy), bindings(policy))
            if current is None:
                await conn.execute(
                    insert(iam_policies).values(registry_pk=registry_pk, policy=policy, etag=etag)
                )
            else:
                await conn.execute(
                    update(iam_policies)
                    .where(iam_policies.c.registry_pk == registry_pk)
                    .values(policy=policy, etag=etag)
                )
        self.db.policies_changed()
        return True


# The hottest reads (every device connection and HTTP request), built once: building a
# statement costs SQLAlchemy more than running it on SQLite.
REGISTRY_WHERE = (
    registries.c.project == bindparam("project"),
    registries.c.location == bindparam("location"),
    registries.c.registry_id == bindparam("registry_id"),
)
_REGISTRY = select(registries.c.pk, registries.c.body).where(*REGISTRY_WHERE)


def registry_params(name: RegistryName) -> dict[str, Any]:
    return {
        "project": name.project,
        "location": name.location.location,
        "registry_id": name.registry,
    }


def _registry_where(name: RegistryName) -> list[Any]:
    return [
        registries.c.project == name.project,
        registries.c.location == name.location.location,
        registries.c.registry_id == name.registry,
    ]


def _registry_body(registry: DeviceRegistry) -> dict[str, Any]:
    body = registry.to_wire()
    body.pop("id", None)
    body.pop("name", None)
    return body


def _registry(name: RegistryName, body: dict[str, Any] | str) -> DeviceRegistry:
    data = json.loads(body) if isinstance(body, str) else dict(body)
    return DeviceRegistry.model_validate(
        {**data, "id": name.registry, "name": str(name)}, context=STORED
    )
