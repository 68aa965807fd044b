"""SQL of firmware images and rollouts (docs/firmware.md, Rollouts).

The image bytes are files in the data directory; these tables say what each file is and
which rollouts send it where. A rollout's stage moves forward by compare and set, so several
ironcore processes evaluating the same rollout advance it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from ironcore.errors import AlreadyExists
from ironcore.registry.names import LocationName, RegistryName
from ironcore.registry.store import audit
from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import (
    devices,
    firmware_images,
    from_us,
    registries,
    rollouts,
    to_us,
)


@dataclass(frozen=True)
class ImageRecord:
    project: str
    sha256: str
    model: str
    version: int
    size: int
    manifest: str
    created_at: datetime


@dataclass(frozen=True)
class RolloutRecord:
    id: int
    registry_pk: int
    sha256: str
    spec: dict[str, Any]
    stage: int
    state: str
    reason: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TargetDevice:
    """What a rollout needs of a device: its config (to tell it) and last state (to judge)."""

    num_id: int
    device_id: str
    config_version: int
    config_data: bytes
    state_data: bytes | None


class FirmwareStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_image(self, image: ImageRecord) -> ImageRecord:
        """Insert the image row; the same bytes uploaded again return the first row."""
        async with self.db.write() as conn:
            existing = (
                await conn.execute(
                    select(firmware_images).where(
                        firmware_images.c.project == image.project,
                        firmware_images.c.sha256 == image.sha256,
                    )
                )
            ).first()
            audit.created_id(image.sha256)
            if existing is not None:
                return _image(existing)
            try:
                await conn.execute(
                    insert(firmware_images).values(
                        project=image.project,
                        sha256=image.sha256,
                        model=image.model,
                        version=image.version,
                        size=image.size,
                        manifest=image.manifest,
                        created_at=to_us(image.created_at),
                    )
                )
            except IntegrityError:
                raise AlreadyExists(
                    f"project {image.project} already has an image of model {image.model} "
                    f"version {image.version} with other bytes; sign a new version"
                ) from None
        return image

    async def get_image(
        self,
        project: str,
        sha256: str | None = None,
        model: str | None = None,
        version: int | None = None,
    ) -> ImageRecord | None:
        """The image by its SHA-256, or by model and version."""
        query = select(firmware_images).where(firmware_images.c.project == project)
        if sha256 is not None:
            query = query.where(firmware_images.c.sha256 == sha256)
        else:
            query = query.where(
                firmware_images.c.model == model, firmware_images.c.version == version
            )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return _image(row) if row is not None else None

    async def list_images(self, project: str) -> list[ImageRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(firmware_images)
                .where(firmware_images.c.project == project)
                .order_by(firmware_images.c.model, firmware_images.c.version)
            )
            return [_image(row) for row in rows]

    async def add_rollout(
        self, registry_pk: int, sha256: str, spec: dict[str, Any], now: datetime
    ) -> RolloutRecord | None:
        """A new running rollout; None if the registry already has one running (two rollouts
        would overwrite each other's `firmware` config key)."""
        now_us = to_us(now)
        async with self.db.write() as conn:
            query = select(rollouts.c.pk).where(
                rollouts.c.registry_pk == registry_pk, rollouts.c.state == RUNNING
            )
            if not self.db.is_sqlite:
                # Serializes concurrent starts on PostgreSQL; SQLite has one writer anyway.
                query = query.with_for_update()
            if (await conn.execute(query)).first() is not None:
                audit.unchanged(conn)
                return None
            pk = await conn.scalar(
                insert(rollouts)
                .values(
                    registry_pk=registry_pk,
                    sha256=sha256,
                    spec=spec,
                    stage=0,
                    state=RUNNING,
                    reason="",
                    created_at=now_us,
                    updated_at=now_us,
                )
                .returning(rollouts.c.pk)
            )
            audit.created_id(str(pk))
        assert pk is not None
        return RolloutRecord(pk, registry_pk, sha256, spec, 0, RUNNING, "", now, now)

    async def get_rollout(self, registry_pk: int, rollout_id: int) -> RolloutRecord | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(rollouts).where(
                        rollouts.c.registry_pk == registry_pk, rollouts.c.pk == rollout_id
                    )
                )
            ).first()
        return _rollout(row) if row is not None else None

    async def list_rollouts(self, registry_pk: int) -> list[RolloutRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(rollouts)
                .where(rollouts.c.registry_pk == registry_pk)
                .order_by(rollouts.c.pk)
            )
            return [_rollout(row) for row in rows]

    async def running_rollouts(self) -> list[tuple[RegistryName, RolloutRecord]]:
        """Every running rollout in the database, with its registry's name."""
        query = (
            select(rollouts, registries.c.project, registries.c.location, registries.c.registry_id)
            .join(registries, registries.c.pk == rollouts.c.registry_pk)
            .where(rollouts.c.state == RUNNING)
            .order_by(rollouts.c.pk)
        )
        async with self.db.read() as conn:
            return [
                (
                    RegistryName(LocationName(row.project, row.location), row.registry_id),
                    _rollout(row),
                )
                for row in await conn.execute(query)
            ]

    async def move_rollout(
        self, rollout_id: int, from_stage: int, stage: int, state: str, reason: str, now: datetime
    ) -> bool:
        """Set stage, state and reason if the rollout is still running at `from_stage`."""
        async with self.db.write() as conn:
            result = await conn.execute(
                update(rollouts)
                .where(
                    rollouts.c.pk == rollout_id,
                    rollouts.c.stage == from_stage,
                    rollouts.c.state == RUNNING,
                )
                .values(stage=stage, state=state, reason=reason, updated_at=to_us(now))
            )
            if result.rowcount != 1:
                audit.unchanged(conn)
        return result.rowcount == 1

    async def target_devices(
        self, registry_pk: int, device_ids: list[str] | None
    ) -> list[TargetDevice]:
        """The registry's devices (or those of `device_ids` in it), config and last state."""
        query = select(
            devices.c.num_id,
            devices.c.device_id,
            devices.c.config_version,
            devices.c.config_data,
            devices.c.state_data,
        ).where(devices.c.registry_pk == registry_pk)
        if device_ids is not None:
            query = query.where(devices.c.device_id.in_(device_ids))
        async with self.db.read() as conn:
            rows = await conn.execute(query.order_by(devices.c.num_id))
            return [
                TargetDevice(
                    row.num_id, row.device_id, row.config_version, row.config_data, row.state_data
                )
                for row in rows
            ]


RUNNING = "RUNNING"


def _image(row: Row[Any]) -> ImageRecord:
    return ImageRecord(
        row.project,
        row.sha256,
        row.model,
        row.version,
        row.size,
        row.manifest,
        from_us(row.created_at),
    )


def _rollout(row: Row[Any]) -> RolloutRecord:
    return RolloutRecord(
        row.pk,
        row.registry_pk,
        row.sha256,
        row.spec,
        row.stage,
        row.state,
        row.reason,
        from_us(row.created_at),
        from_us(row.updated_at),
    )
