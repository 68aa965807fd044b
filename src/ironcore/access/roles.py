"""Roles and what each may do.

The permission names are Cloud IoT Core's IAM permissions, plus ironcore's own `ironcore.*`,
so `testIamPermissions` answers in the vocabulary clients already use.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

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
    "ironcore.serviceAccounts.manage",
    "ironcore.audit.list",
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
# Google's predefined roles, as far as their permissions are ironcore's (Google's also hold
# resourcemanager.*, pubsub.snapshots.*, pubsub.schemas.*, ..., which ironcore does not have).
_CLOUDIOT_VIEWER = {
    "cloudiot.registries.get",
    "cloudiot.registries.list",
    "cloudiot.devices.get",
    "cloudiot.devices.list",
}
_CLOUDIOT_EDITOR = _CLOUDIOT_VIEWER | {
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
_CLOUDIOT_ADMIN = _CLOUDIOT_EDITOR | {
    "cloudiot.registries.getIamPolicy",
    "cloudiot.registries.setIamPolicy",
}
_PUBSUB_EDITOR = {p for p in _READ | _WRITE if p.startswith("pubsub.")}
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset(_READ),
    "editor": frozenset(_READ | _WRITE),
    "owner": frozenset(_READ | _WRITE | _OWN),
    "pubsub-client": frozenset(_PUBSUB_CLIENT),
    "roles/cloudiot.viewer": frozenset(_CLOUDIOT_VIEWER),
    "roles/cloudiot.editor": frozenset(_CLOUDIOT_EDITOR),
    "roles/cloudiot.admin": frozenset(_CLOUDIOT_ADMIN),
    "roles/pubsub.subscriber": frozenset({"pubsub.subscriptions.consume"}),
    "roles/pubsub.publisher": frozenset({"pubsub.topics.publish"}),
    "roles/pubsub.editor": frozenset(_PUBSUB_EDITOR),
}
# The roles an admin token may have; each may do what the one before it may, and more.
ROLES = ("viewer", "editor", "owner")
# The roles a service account may be given: Google's names, so IAM code keeps its strings.
GOOGLE_ROLES = tuple(r for r in PERMISSIONS if r.startswith("roles/"))


@dataclass(frozen=True)
class Caller:
    """A principal, the roles it holds, and the one project it is confined to.

    `principal` is an IAM member string: `adminToken:<id>` for the holder of an admin token
    (ironcore's own member type; the id is the hex after `ic_`), `serviceAccount:<email>` for
    a service account, `ironcore:pubsub-emulator` for the Pub/Sub emulator port's fixed caller.
    `project` is None for a caller that acts everywhere (admin tokens, the emulator port); a
    service account acts only on resources of its own project.
    """

    principal: str
    roles: frozenset[str]
    project: str | None = None

    @cached_property
    def permissions(self) -> frozenset[str]:
        return frozenset().union(*(PERMISSIONS[r] for r in self.roles))

    def reaches(self, resource: str) -> bool:
        """Whether `resource` (`projects/P/...`, or ironcore's global `tokens`,
        `revocations`) lies where this caller may act."""
        if self.project is None:
            return True
        own = f"projects/{self.project}"
        return resource == own or resource.startswith(own + "/")

    def may(self, permission: str, resource: str) -> bool:
        return permission in self.permissions and self.reaches(resource)


def require(caller: Caller, permission: str, resource: str) -> None:
    """PermissionDenied unless `caller` holds `permission` on `resource`."""
    if not caller.reaches(resource):
        raise PermissionDenied(
            f"Permission '{permission}' denied on '{resource[:200]}': {caller.principal} "
            f"acts only in projects/{caller.project}"
        )
    if permission not in caller.permissions:
        roles = ", ".join(sorted(caller.roles)) or "none"
        raise PermissionDenied(
            f"Permission '{permission}' denied on '{resource[:200]}': {caller.principal} "
            f"has roles {roles}"
        )
