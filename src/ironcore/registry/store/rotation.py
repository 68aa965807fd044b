"""SQL of key rotations. A rotation lives in the device row's JSON body, beside the
credentials it changes, so that adding a key and moving the rotation on are one atomic update
guarded by the state it expects (compare and set)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select, update

from ironcore.registry import provenance
from ironcore.registry.provenance import Provenance
from ironcore.registry.store import audit
from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import devices, registries

# States in which a key rotation is under way (another cannot start).
ACTIVE = ("requested", "key_added")


class RotationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def read(self, num_id: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]] | None:
        """The device's rotation (or None) and its credentials in wire form; None if no device."""
        found = await self.read_with_provenance(num_id)
        return None if found is None else found[:2]

    async def read_with_provenance(
        self, num_id: int
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], dict[str, Provenance]] | None:
        """`read`, and the credentials' provenance by fingerprint."""
        async with self.db.read() as conn:
            body = await conn.scalar(_BODY, {"num_id": num_id})
        if body is None:
            return None
        return body.get("keyRotation"), list(body["credentials"]), provenance.read(body)

    async def registry_has_cas(self, num_id: int) -> bool:
        """Whether the device's registry holds CA certificates (then only X.509 credentials)."""
        async with self.db.read() as conn:
            body = await conn.scalar(
                select(registries.c.body)
                .join(devices, devices.c.registry_pk == registries.c.pk)
                .where(devices.c.num_id == num_id)
            )
        return bool(body and body.get("credentials"))

    async def write(
        self,
        num_id: int,
        expected_id: str | None,
        rotation: dict[str, Any],
        credentials: list[dict[str, Any]] | None = None,
        added: dict[str, Provenance] | None = None,
    ) -> bool:
        """Store `rotation` (and new `credentials`, those named in `added` with that
        provenance) if the device's current rotation still has id `expected_id` (None: no
        rotation, or a finished one); False when someone moved first."""
        async with self.db.write() as conn:
            query = select(devices.c.body).where(devices.c.num_id == num_id)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            body = await conn.scalar(query)
            current = body.get("keyRotation") if body is not None else None
            current_id = current["id"] if current and current["state"] in ACTIVE else None
            if body is None or current_id != expected_id:
                audit.unchanged(conn)
                return False
            body = {**body, "keyRotation": rotation}
            if credentials is not None:
                body["credentials"] = credentials
                body[provenance.BODY_KEY] = provenance.carried(
                    body.get(provenance.BODY_KEY), credentials, added=added
                )
            await conn.execute(update(devices).where(devices.c.num_id == num_id).values(body=body))
        return True


# Read at every device connection: built once (see store.devices._DEVICE).
_BODY = select(devices.c.body).where(devices.c.num_id == bindparam("num_id"))
