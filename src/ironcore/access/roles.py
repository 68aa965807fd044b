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
    "pubsub.topics.getIamPolicy",
    "pubsub.subscriptions.getIamPolicy",
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
_OWN = {
    "cloudiot.registries.setIamPolicy",
    "pubsub.topics.setIamPolicy",
    "pubsub.subscriptions.setIamPolicy",
    "ironcore.tokens.manage",
    "ironcore.revocations.manage",
}
# What the Pub/Sub emulator port's calls may do (`access.callers.PUBSUB_EMULATOR`): publish,
# read topics and subscriptions, create subscriptions and consume from them.
_PUBSUB_CLIENT = {
    "pubsub.topics.get",
    "pubsub.topics.list",
    "pubsub.topics.publish",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.list",
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.consume",
}
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset(_READ),
    "editor": frozenset(_READ | _WRITE),
    "owner": frozenset(_READ | _WRITE | _OWN),
    "pubsub-client": frozenset(_PUBSUB_CLIENT),
}
# The roles an admin token may have; each may do what the one before it may, and more.
ROLES = ("viewer", "editor", "owner")


@dataclass(frozen=True)
class Caller:
    """A principal: the holder of an admin token with this role, or the fixed caller of the
    Pub/Sub emulator port (`access.callers.PUBSUB_EMULATOR`)."""

    role: str

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]


def require(caller: Caller, permission: str) -> None:
    if not caller.may(permission):
        raise PermissionDenied(
            f"Permission '{permission}' denied: the caller's role is {caller.role}"
        )
