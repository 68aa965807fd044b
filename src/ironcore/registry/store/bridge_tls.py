"""SQL of the device bridges' TLS material shared by the servers of one database: the local CA
and server certificate ironcore generated (keys arrive here encrypted and leave encrypted), and
the CA each live server presents.

Two servers starting at once each make a CA; `add` keeps the first one committed and hands the
other server that one, so a cluster ends with one CA whatever the timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import bridge_tls, bridge_tls_servers


@dataclass(frozen=True)
class Material:
    certificate: str  # PEM; a chain for the server certificate
    encrypted_key: bytes  # PKCS#8 PEM, encrypted


@dataclass(frozen=True)
class Presence:
    server_id: str
    anchor: str
    seen_at: int  # microseconds since the epoch


class BridgeTlsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _insert(self, table: Any) -> Any:
        return (sqlite.insert if self.db.is_sqlite else postgresql.insert)(table)

    async def get(self, name: str) -> Material | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(bridge_tls).where(bridge_tls.c.name == name))).first()
        return Material(row.certificate, bytes(row.encrypted_key)) if row else None

    async def add(self, name: str, material: Material, now: int) -> Material:
        """Store `material` as `name` unless another server stored one first; what is stored."""
        async with self.db.write() as conn:
            await conn.execute(
                self._insert(bridge_tls)
                .values(
                    name=name,
                    certificate=material.certificate,
                    encrypted_key=material.encrypted_key,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["name"])
            )
        stored = await self.get(name)
        assert stored is not None
        return stored

    async def replace(self, name: str, old: Material, new: Material, now: int) -> Material:
        """`new` in place of `old`, unless another server replaced `old` first; what is stored."""
        async with self.db.write() as conn:
            await conn.execute(
                update(bridge_tls)
                .where(bridge_tls.c.name == name, bridge_tls.c.certificate == old.certificate)
                .values(
                    certificate=new.certificate, encrypted_key=new.encrypted_key, updated_at=now
                )
            )
        stored = await self.get(name)
        assert stored is not None
        return stored

    async def present(self, server_id: str, anchor: str, now: int) -> None:
        """Record (or renew) that `server_id` presents a chain leading to `anchor`."""
        statement = self._insert(bridge_tls_servers).values(
            server_id=server_id, anchor=anchor, seen_at=now
        )
        async with self.db.write() as conn:
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["server_id"],
                    set_={"anchor": statement.excluded.anchor, "seen_at": now},
                )
            )

    async def seen_since(self, since: int) -> list[Presence]:
        """The servers that renewed their presence at or after `since`."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(bridge_tls_servers)
                .where(bridge_tls_servers.c.seen_at >= since)
                .order_by(bridge_tls_servers.c.seen_at)
            )
            return [Presence(r.server_id, r.anchor, r.seen_at) for r in rows]

    async def withdraw(self, server_id: str, before: int) -> None:
        """Forget `server_id`, and every server not seen since `before`."""
        async with self.db.write() as conn:
            await conn.execute(
                delete(bridge_tls_servers).where(
                    (bridge_tls_servers.c.server_id == server_id)
                    | (bridge_tls_servers.c.seen_at < before)
                )
            )
