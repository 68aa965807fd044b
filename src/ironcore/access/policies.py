"""IAM policies that decide: the index of every binding each server keeps in memory, and the
project policies (`projects/P:getIamPolicy|setIamPolicy`).

A caller's permissions on a resource are its own roles' and those of the roles bound to its
member by the policy of the resource and of each ancestor: `projects/P` holds for all of
P, `projects/P/locations/L/registries/R` for the registry and its devices, a topic's or a
subscription's for itself (`access.roles.Caller`). Registries keep their policies with the
registry (`registry.service`), the rest are kept by name (`store.policies`).

Evaluation reads memory only: `PolicyIndex` holds every binding, read in one query. It reads
them again at once after this process wrote a policy, and at most `POLL_SECONDS` after the
last read when a call comes, so a policy written on another server of a cluster (one shared
database) takes effect everywhere within that time, as revoked credentials do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ironcore.access.roles import GOOGLE_ROLES
from ironcore.errors import InvalidArgument
from ironcore.registry.iam import empty_policy, policy_write, stale
from ironcore.registry.names import is_valid_project
from ironcore.registry.resources import Policy
from ironcore.registry.store.database import Database
from ironcore.registry.store.policies import PolicyStore, StoredPolicy

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
_NONE: frozenset[str] = frozenset()


def bindable(policy: Policy) -> Policy:
    """`policy`, if every binding names a role ironcore has (InvalidArgument naming the
    binding otherwise): a role it does not know would be stored and grant nothing."""
    for i, binding in enumerate(policy.bindings):
        if binding.role and binding.role not in GOOGLE_ROLES:
            raise InvalidArgument.field(
                f"policy.bindings[{i}].role",
                f"unknown role {binding.role[:80]!r}; roles are {', '.join(GOOGLE_ROLES)}",
            )
    return policy


def _by_member(policy: dict[str, Any]) -> dict[str, frozenset[str]]:
    roles: dict[str, set[str]] = {}
    for binding in policy.get("bindings", ()):
        role = binding.get("role", "")
        if role not in GOOGLE_ROLES or binding.get("condition"):
            continue
        for member in binding.get("members", ()):
            # An email address names a person whatever its case; tokens keep theirs in lower.
            if member.startswith("user:"):
                member = member.lower()
            roles.setdefault(member, set()).add(role)
    return {member: frozenset(r) for member, r in roles.items()}


class PolicyIndex:
    """Every binding in force, by resource name and member."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.store = PolicyStore(db)
        self._bindings: dict[str, dict[str, frozenset[str]]] = {}
        self._read_at = -POLL_SECONDS
        self._writes_read = -1
        self._reading: asyncio.Task[None] | None = None

    async def fresh(self) -> None:
        """Read the bindings again if this process wrote a policy since the last read, or if
        that read is older than `POLL_SECONDS`. One read at a time. A call after a write of
        this process waits for a read that began after the write; other calls decide by the
        bindings read before, except the very first."""
        if self.db.policy_writes != self._writes_read:
            if self._reading is not None:
                await asyncio.shield(self._reading)
            if self.db.policy_writes != self._writes_read:
                await asyncio.shield(self._start())
            return
        if time.monotonic() - self._read_at < POLL_SECONDS:
            return
        reading = self._start()
        if self._writes_read < 0:
            await asyncio.shield(reading)

    def _start(self) -> asyncio.Future[None]:
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        return self._reading

    async def _read(self) -> None:
        writes = self.db.policy_writes
        try:
            policies = await self.store.all_policies()
            self._bindings = {
                name: by_member for name, p in policies if (by_member := _by_member(p))
            }
            self._writes_read = writes
        except Exception as error:
            # The bindings read before stay in force; the next call tries again. The database
            # out of reach is logged by the calls that need it; one line here is enough.
            log.warning(
                "could not read the IAM policies (%s); deciding by the last ones read", error
            )
        finally:
            self._read_at = time.monotonic()
            self._reading = None

    def roles(self, member: str, resource: str) -> frozenset[str]:
        """The roles bound to `member` on `resource` and its ancestors."""
        if not self._bindings:
            return _NONE
        parts = resource.split("/")
        found = _NONE
        for end in range(2, len(parts) + 1, 2):
            on = self._bindings.get("/".join(parts[:end]))
            if on is not None and member in on:
                found = found | on[member]
        return found


class ProjectPolicies:
    """The IAM policy of a project, kept by name (`projects/P`)."""

    def __init__(self, db: Database) -> None:
        self.store = PolicyStore(db)

    async def get_iam_policy(self, project: str) -> Policy:
        stored = await self.store.get(project_name(project))
        if stored is None:
            return empty_policy()
        return Policy.model_validate(
            {**stored.policy, "version": stored.version, "etag": stored.etag}
        )

    async def set_iam_policy(self, project: str, policy: Policy) -> Policy:
        write = policy_write(bindable(policy))
        body = dict(write.body)
        version = int(body.pop("version", 0))
        stored = StoredPolicy(body, version, write.etag)
        if not await self.store.set("projects", project_name(project), stored, write.expected):
            raise stale()
        return write.policy


def project_name(project: str) -> str:
    if not is_valid_project(project):
        raise InvalidArgument.field("resource", f"{project[:100]!r} is not a valid project id")
    return f"projects/{project}"
