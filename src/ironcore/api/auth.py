"""Admin authentication: bearer tokens with a role, and what each role may do.

Tokens are created by `ironcore tokens create`, shown once and stored only as a SHA-256 hash.
The permission names are Cloud IoT Core's IAM permissions, so `testIamPermissions` answers in
the vocabulary clients already use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import Request

from ironcore.errors import PermissionDenied, Unauthenticated
from ironcore.registry.service import DeviceManager, hash_token

_READ = {
    "pubsub.topics.get",
    "pubsub.topics.list",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.list",
    "cloudiot.registries.get",
    "cloudiot.registries.list",
    "cloudiot.registries.getIamPolicy",
    "cloudiot.devices.get",
    "cloudiot.devices.list",
}
_WRITE = {
    "pubsub.topics.create",
    "pubsub.topics.delete",
    "pubsub.topics.publish",
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.delete",
    "pubsub.subscriptions.consume",
    "cloudiot.registries.create",
    "cloudiot.registries.update",
    "cloudiot.registries.delete",
    "cloudiot.devices.create",
    "cloudiot.devices.update",
    "cloudiot.devices.delete",
    "cloudiot.devices.updateConfig",
    "cloudiot.devices.sendCommand",
    "cloudiot.devices.bindGateway",
    "cloudiot.devices.unbindGateway",
}
_OWN = {"cloudiot.registries.setIamPolicy", "ironcore.tokens.manage", "ironcore.revocations.manage"}
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset(_READ),
    "editor": frozenset(_READ | _WRITE),
    "owner": frozenset(_READ | _WRITE | _OWN),
}
# A revoked token stops working everywhere within this many seconds.
_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Caller:
    role: str

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]


class TokenAuthenticator:
    def __init__(self, manager: DeviceManager) -> None:
        self.manager = manager
        self._cache: dict[str, tuple[str | None, float]] = {}

    async def caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Request is missing an 'Authorization: Bearer <token>' header")
        digest = hash_token(token.strip())
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached[1] < now:
            if len(self._cache) > 10_000:
                self._cache.clear()
            cached = (await self.manager.store.tokens.token_role(digest), now + _CACHE_SECONDS)
            self._cache[digest] = cached
        role = cached[0]
        if role is None:
            raise Unauthenticated("The bearer token is not valid (unknown or revoked)")
        return Caller(role)

    def forget(self) -> None:
        self._cache.clear()


def require(caller: Caller, permission: str) -> None:
    if not caller.may(permission):
        raise PermissionDenied(
            f"Permission '{permission}' denied: the token's role is {caller.role}"
        )
