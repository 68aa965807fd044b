"""Roles, the permissions each grants, and the check every call makes.

The permission names are Cloud IoT Core's and Cloud Pub/Sub's IAM permissions, Resource
Manager's for a project's own policy, and ironcore's own `ironcore.*` for what Google did not
have (credential rotation, manifests, revocation, firmware, admin tokens, service accounts,
the audit log), so `testIamPermissions` answers in the vocabulary clients already use. The
predefined roles are Google's, as far as their permissions are ironcore's (Google's also hold
resourcemanager.*, pubsub.snapshots.*, ..., which ironcore does not have). docs/access.md
lists every role's permissions; tests/test_roles_doc.py keeps that table equal to
`PERMISSIONS`.

A caller's permissions on a resource are those of its own roles (an admin token's, a service
account's) and those of the roles bound to its member by the IAM policies of the resource
and of its ancestors (`access.policies`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from ironcore.errors import PermissionDenied

# Each permission once, grouped by what it acts on; the roles below are unions of these.
_REGISTRY_READ = {"cloudiot.registries.get", "cloudiot.registries.list"}
_DEVICE_READ = {"cloudiot.devices.get", "cloudiot.devices.list"}
_IRONCORE_READ = {"ironcore.firmware.get"}
_DEVICE_CONTROL = {
    "cloudiot.devices.update",
    "cloudiot.devices.updateConfig",
    "cloudiot.devices.sendCommand",
    "cloudiot.devices.bindGateway",
    "cloudiot.devices.unbindGateway",
}
_PROVISION = {"cloudiot.devices.create", "ironcore.manifests.import"}
_REGISTRY_WRITE = {
    "cloudiot.registries.create",
    "cloudiot.registries.update",
    "cloudiot.registries.delete",
    "cloudiot.devices.delete",
    "ironcore.devices.rotateCredentials",
    "ironcore.firmware.upload",
    "ironcore.firmware.rollout",
}
_REGISTRY_IAM = {"cloudiot.registries.getIamPolicy", "cloudiot.registries.setIamPolicy"}
_PUBSUB_READ = {
    "pubsub.topics.get",
    "pubsub.topics.list",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.list",
}
_PUBSUB_WRITE = {
    "pubsub.topics.create",
    "pubsub.topics.delete",
    "pubsub.topics.publish",
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.delete",
    "pubsub.subscriptions.consume",
}
_PUBSUB_IAM = {
    "pubsub.topics.getIamPolicy",
    "pubsub.topics.setIamPolicy",
    "pubsub.subscriptions.getIamPolicy",
    "pubsub.subscriptions.setIamPolicy",
}
_PROJECT_IAM = {"resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy"}
_IRONCORE_ADMIN = {
    "ironcore.revocations.manage",
    "ironcore.tokens.manage",
    "ironcore.serviceAccounts.manage",
    "ironcore.auditLogs.list",
}
# What the Pub/Sub emulator port's calls may do (`access.callers.PUBSUB_EMULATOR`): publish,
# read topics and subscriptions, create subscriptions and consume from them.
_PUBSUB_CLIENT = _PUBSUB_READ | {
    "pubsub.topics.publish",
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.consume",
}

_CLOUDIOT_VIEWER = _REGISTRY_READ | _DEVICE_READ | _IRONCORE_READ
_CLOUDIOT_EDITOR = _CLOUDIOT_VIEWER | _DEVICE_CONTROL | _PROVISION | _REGISTRY_WRITE
_VIEWER = (
    _CLOUDIOT_VIEWER
    | _PUBSUB_READ
    | {
        "cloudiot.registries.getIamPolicy",
        "pubsub.topics.getIamPolicy",
        "pubsub.subscriptions.getIamPolicy",
        "resourcemanager.projects.getIamPolicy",
        "ironcore.revocations.list",
    }
)
_EDITOR = _VIEWER | _CLOUDIOT_EDITOR | _PUBSUB_WRITE

PERMISSIONS: dict[str, frozenset[str]] = {
    "roles/cloudiot.viewer": frozenset(_CLOUDIOT_VIEWER),
    "roles/cloudiot.deviceController": frozenset(_CLOUDIOT_VIEWER | _DEVICE_CONTROL),
    "roles/cloudiot.provisioner": frozenset(_CLOUDIOT_VIEWER | _PROVISION),
    "roles/cloudiot.editor": frozenset(_CLOUDIOT_EDITOR),
    "roles/cloudiot.admin": frozenset(_CLOUDIOT_EDITOR | _REGISTRY_IAM),
    "roles/pubsub.viewer": frozenset(_PUBSUB_READ),
    "roles/pubsub.subscriber": frozenset({"pubsub.subscriptions.consume"}),
    "roles/pubsub.publisher": frozenset({"pubsub.topics.publish"}),
    "roles/pubsub.editor": frozenset(_PUBSUB_READ | _PUBSUB_WRITE),
    "roles/pubsub.admin": frozenset(_PUBSUB_READ | _PUBSUB_WRITE | _PUBSUB_IAM),
    "roles/viewer": frozenset(_VIEWER),
    "roles/editor": frozenset(_EDITOR),
    "roles/owner": frozenset(
        _EDITOR | _REGISTRY_IAM | _PUBSUB_IAM | _PROJECT_IAM | _IRONCORE_ADMIN
    ),
}
# The role names an admin token is created with, and the predefined role each stands for.
TOKEN_ROLES = {"viewer": "roles/viewer", "editor": "roles/editor", "owner": "roles/owner"}
# A token created with this role holds nothing of its own: only what IAM policies bind to its
# principal (a person's `user:` member, or its own `adminToken:` one).
NO_ROLE = "none"
ROLES = (*TOKEN_ROLES, NO_ROLE)
# The roles a service account may be given and an IAM policy may bind.
GOOGLE_ROLES = tuple(PERMISSIONS)
# ironcore's internal roles, never bound by a policy.
PERMISSIONS["pubsub-client"] = frozenset(_PUBSUB_CLIENT)
for _token_role, _role in TOKEN_ROLES.items():
    PERMISSIONS[_token_role] = PERMISSIONS[_role]
# Every permission some call checks.
ALL_PERMISSIONS = frozenset().union(*PERMISSIONS.values())

# The roles bound to a member on a resource and its ancestors, by the IAM policies in force.
Bound = Callable[[str, str], frozenset[str]]


def _unbound(member: str, resource: str) -> frozenset[str]:
    return frozenset()


@dataclass(frozen=True)
class Caller:
    """A principal, the roles it holds, the one project it is confined to, and the policies
    that may grant it more.

    `principal` is an IAM member string: `adminToken:<id>` for the holder of an admin token
    (ironcore's own member type; the id is the hex after `ic_`), or `user:<email>` for an
    admin token created for a person; `serviceAccount:<email>` for a service account,
    `ironcore:pubsub-emulator` for the Pub/Sub emulator port's fixed caller. `aliases` are the
    other members policies may grant it by: a person's token is still its own
    `adminToken:<id>` too. `project` is None for a caller whose own roles act everywhere
    (admin tokens, the emulator port); a service account's own roles act only on resources of
    its own project. What a policy binds to the caller's members acts where the policy is,
    whatever `project` says.
    """

    principal: str
    roles: frozenset[str]
    project: str | None = None
    bound: Bound = field(default=_unbound, compare=False, repr=False)
    aliases: tuple[str, ...] = ()

    @cached_property
    def permissions(self) -> frozenset[str]:
        """The permissions of the caller's own roles."""
        return frozenset().union(*(PERMISSIONS[r] for r in self.roles))

    def reaches(self, resource: str) -> bool:
        """Whether `resource` (`projects/P/...`, or ironcore's global `tokens`,
        `revocations`) lies where this caller's own roles act."""
        if self.project is None:
            return True
        own = f"projects/{self.project}"
        return resource == own or resource.startswith(own + "/")

    def bound_roles(self, resource: str) -> frozenset[str]:
        """The roles policies bind to any of the caller's members on `resource` and its
        ancestors."""
        bound = self.bound(self.principal, resource)
        for alias in self.aliases:
            bound = bound | self.bound(alias, resource)
        return bound

    def may(self, permission: str, resource: str) -> bool:
        if permission in self.permissions and self.reaches(resource):
            return True
        return any(permission in PERMISSIONS[r] for r in self.bound_roles(resource))


def require(caller: Caller, permission: str, resource: str) -> None:
    """PermissionDenied, naming the missing permission, unless `caller` holds `permission` on
    `resource`."""
    if caller.may(permission, resource):
        return
    if not caller.reaches(resource):
        raise PermissionDenied(
            f"Permission '{permission}' denied on '{resource[:200]}': {caller.principal} "
            f"acts only in projects/{caller.project} and no policy there grants it"
        )
    roles = ", ".join(sorted(caller.roles)) or "none"
    raise PermissionDenied(
        f"Permission '{permission}' denied on '{resource[:200]}': {caller.principal} "
        f"has roles {roles} and no policy on the resource or its ancestors grants it"
    )
