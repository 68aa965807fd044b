"""testIamPermissions: which of the permissions asked about a caller holds on a registry."""

from __future__ import annotations

from collections.abc import Iterable

from ironcore.access.roles import Caller
from ironcore.errors import NotFound
from ironcore.registry.iam import applicable
from ironcore.registry.names import RegistryName
from ironcore.registry.service import DeviceManager


async def granted_permissions(
    manager: DeviceManager, caller: Caller, registry: RegistryName, permissions: Iterable[str]
) -> list[str]:
    """Those of `permissions` that apply to a registry (`registry.iam.APPLICABLE`) and the
    caller holds there, in the order asked."""
    asked = applicable("registries", permissions)
    try:
        await manager.get_registry(registry)
    except NotFound:
        # Google answers an empty set, not NOT_FOUND, for a resource that does not exist.
        return []
    return [p for p in asked if caller.may(p, str(registry))]
