"""SQL of IAM policies kept by resource name (`schema.resource_policies`): projects', Pub/Sub
topics' and subscriptions'. A registry's policy is kept with the registry (registries.py);
`all_policies` reads both, for the policy index every server keeps (`access.policies`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Delete, Table, delete, insert, select, update

from ironcore.errors import NotFound
from ironcore.registry.store import audit
from ironcore.registry.store.database import Database
from ironcore.registry.store.schema import (
    iam_policies,
    registries,
    resource_policies,
    subscriptions,
    topics,
)

# The tables of the resources whose policies are kept here, by kind. A project has no row of
# its own: it exists as far as its policy goes.
OWNERS: dict[str, Table | None] = {
    "topics": topics,
    "subscriptions": subscriptions,
    "projects": None,
}


@dataclass(frozen=True)
class StoredPolicy:
    policy: dict[str, Any]
    version: int
    etag: str


def bindings(policy: Any) -> dict[str, Any]:
    """A stored policy's bindings, as the audit log shows them before and after a change."""
    return {"bindings": (policy or {}).get("bindings", [])}


def delete_policy(name: str) -> Delete:
    """The statement that deletes a resource's policy, for the transaction deleting it."""
    return delete(resource_policies).where(resource_policies.c.name == name)


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, name: str) -> StoredPolicy | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        resource_policies.c.policy,
                        resource_policies.c.version,
                        resource_policies.c.etag,
                    ).where(resource_policies.c.name == name)
                )
            ).first()
        return StoredPolicy(dict(row.policy), row.version, row.etag) if row else None

    async def set(
        self, kind: str, name: str, stored: StoredPolicy, expected_etag: str | None
    ) -> bool:
        """Store the policy of the `kind` resource `name`; with `expected_etag`, only if the
        stored one still has it ("" when there is none yet). NotFound without the resource:
        its row is read (and on PostgreSQL share-locked) in the same transaction, so that a
        delete of the resource cannot slip in between and leave the policy behind."""
        values = {"policy": stored.policy, "version": stored.version, "etag": stored.etag}
        owner = OWNERS[kind]
        async with self.db.write() as conn:
            if owner is not None:
                query = select(owner.c.name).where(owner.c.name == name)
                if not self.db.is_sqlite:
                    query = query.with_for_update(read=True)
                if await conn.scalar(query) is None:
                    raise NotFound(f"{kind.removesuffix('s').capitalize()} {name} not found")
            row = (
                await conn.execute(
                    select(resource_policies.c.etag, resource_policies.c.policy).where(
                        resource_policies.c.name == name
                    )
                )
            ).first()
            current = None if row is None else row.etag
            if expected_etag is not None and expected_etag != (current or ""):
                audit.unchanged(conn)
                return False
            audit.changed(bindings(None if row is None else row.policy), bindings(stored.policy))
            if current is None:
                await conn.execute(insert(resource_policies).values(name=name, **values))
            else:
                await conn.execute(
                    update(resource_policies)
                    .where(resource_policies.c.name == name)
                    .values(**values)
                )
        self.db.policies_changed()
        return True

    async def all_policies(self) -> list[tuple[str, dict[str, Any]]]:
        """Every stored policy, registries' included, by resource name."""
        async with self.db.read() as conn:
            named = (
                await conn.execute(select(resource_policies.c.name, resource_policies.c.policy))
            ).all()
            registry_rows = (
                await conn.execute(
                    select(
                        registries.c.project,
                        registries.c.location,
                        registries.c.registry_id,
                        iam_policies.c.policy,
                    ).join(iam_policies, iam_policies.c.registry_pk == registries.c.pk)
                )
            ).all()
        found = [(row.name, dict(row.policy)) for row in named]
        found += [
            (
                f"projects/{row.project}/locations/{row.location}/registries/{row.registry_id}",
                dict(row.policy),
            )
            for row in registry_rows
        ]
        return found
