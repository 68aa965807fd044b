"""Changes to devices and registries, told to everyone in the process who keeps them.

The hub passes a change on to the device's live connection (if any); the authenticator drops
the device contexts it cached, so the next request of a device that is not connected (every
HTTP device) sees the change too. `DeviceManager`, `Revocations` and firmware rollouts call
`Changes` through `DeviceLinks`; key rotations change credentials through their own store, so
`RotationStore` is wrapped as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ironcore.bridge.devices import DeviceAuthenticator
from ironcore.bridge.hub import Hub
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceConfig
from ironcore.registry.store import Store
from ironcore.registry.store.rotation import RotationStore


class Changes:
    """`DeviceLinks` for the device manager: the cache forgets first, then the hub acts, so a
    connection that re-reads the device on `device_changed` reads it from the database."""

    def __init__(self, hub: Hub, authenticator: DeviceAuthenticator) -> None:
        self.hub = hub
        self.authenticator = authenticator

    async def send_command(self, device: Device, data: bytes, subfolder: str) -> bool:
        return await self.hub.send_command(device, data, subfolder)

    async def config_changed(self, num_id: int, config: DeviceConfig) -> None:
        self.authenticator.forget_device(num_id)
        await self.hub.config_changed(num_id, config)

    async def device_changed(self, num_id: int) -> None:
        self.authenticator.forget_device(num_id)
        await self.hub.device_changed(num_id)

    async def registry_changed(self, name: RegistryName) -> None:
        self.authenticator.forget_all()
        await self.hub.registry_changed(name)

    async def rotation_changed(self, num_id: int) -> None:
        self.authenticator.forget_device(num_id)
        await self.hub.rotation_changed(num_id)

    async def key_in_use(self, num_id: int) -> str | None:
        return await self.hub.key_in_use(num_id)


class ForgettingRotationStore(RotationStore):
    """A rotation adds, expires and removes credentials: each write drops the device's cached
    context (whether or not the write won its compare-and-set, which costs one read at most).

    `forget` is the authenticator's `forget_device`, or in an MQTT worker process, that and a
    word to the primary, which tells the other processes."""

    def __init__(self, store: Store, forget: Callable[[int], None]) -> None:
        super().__init__(store)
        self.forget = forget

    async def write(
        self,
        num_id: int,
        expected_id: str | None,
        rotation: dict[str, Any],
        credentials: list[dict[str, Any]] | None = None,
    ) -> bool:
        try:
            return await super().write(num_id, expected_id, rotation, credentials)
        finally:
            self.forget(num_id)
