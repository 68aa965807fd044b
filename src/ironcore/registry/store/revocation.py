"""SQL of revoked batch signers (the rules are ironcore.registry.revocation)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, insert, select

from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import from_us, revoked_signers, to_us


@dataclass(frozen=True)
class RevokedSignerRecord:
    key_id: str
    fingerprint: str
    subject: str
    certificate: str
    reason: str
    revoked_at: datetime


class RevocationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_revoked_signer(self, signer: RevokedSignerRecord) -> bool:
        """Record a revoked signer; False when it was already revoked (nothing changes)."""
        async with self.db.write() as conn:
            if await conn.scalar(
                select(func.count()).where(revoked_signers.c.key_id == signer.key_id)
            ):
                return False
            await conn.execute(
                insert(revoked_signers).values(
                    key_id=signer.key_id,
                    fingerprint=signer.fingerprint,
                    subject=signer.subject,
                    certificate=signer.certificate,
                    reason=signer.reason,
                    revoked_at=to_us(signer.revoked_at),
                )
            )
        return True

    async def revoked_signers(self) -> list[RevokedSignerRecord]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(revoked_signers).order_by(revoked_signers.c.revoked_at)
            )
            return [_revoked(row) for row in rows]

    async def revoked_signer(self, key_id_or_fingerprint: str) -> RevokedSignerRecord | None:
        """The revoked signer with this key id (SKI hex) or SHA-256 fingerprint (hex)."""
        value = key_id_or_fingerprint.lower()
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(revoked_signers).where(
                        (revoked_signers.c.key_id == value)
                        | (revoked_signers.c.fingerprint == value)
                    )
                )
            ).first()
        return _revoked(row) if row else None


def _revoked(row: Row[Any]) -> RevokedSignerRecord:
    return RevokedSignerRecord(
        row.key_id,
        row.fingerprint,
        row.subject,
        row.certificate,
        row.reason,
        from_us(row.revoked_at),
    )
