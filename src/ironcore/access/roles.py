"""Roles and what each may do.

The permission names are Cloud IoT Core's IAM permissions, plus ironcore's own `ironcore.*`,
so `testIamPermissions` answers in the vocabulary clients already use.
"""

from __future__ import annotations

from dataclasses import dataclass

from ironcore.errors import PermissionDenied

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
# Each role may do what the one before it may, and more.
ROLES = tuple(PERMISSIONS)


@dataclass(frozen=True)
class Caller:
    """An authenticated principal: for now, the holder of an admin token with this role."""

    role: str

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]


def require(caller: Caller, permission: str) -> None:
    if not caller.may(permission):
        raise PermissionDenied(
            f"Permission '{permission}' denied: the token's role is {caller.role}"
        )
