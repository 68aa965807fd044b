"""The hub: which device is connected where, and how to reach it.

The device manager tells the hub what changed (a config, a device, a registry) and asks it to
deliver commands; the hub finds the connection that serves the device (directly or through a
gateway) and hands it over. The interface is narrow on purpose so that a NATS-backed hub can
replace this in-process one when ironcore runs as several processes.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceConfig

log = logging.getLogger(__name__)


class DeviceLink(Protocol):
    """A live connection that serves one or more devices (a gateway serves several)."""

    registry_name: RegistryName

    def deliver_config(self, num_id: int, config: DeviceConfig) -> None: ...

    def deliver_command(self, num_id: int, subfolder: str, data: bytes) -> bool: ...

    async def revalidate(self, num_id: int | None) -> None:
        """Check the device (or every device, for None) again; disconnect what may not stay."""

    def kick(self, num_id: int, reason: str) -> None:
        """Another connection took this device over."""

    async def rotation_changed(self, num_id: int) -> None:
        """Tell the device about its key rotation."""

    def key_in_use(self, num_id: int) -> str | None:
        """The fingerprint of the key the device authenticated with (None behind a gateway)."""


class Hub:
    def __init__(self) -> None:
        self._links: dict[int, DeviceLink] = {}

    def __len__(self) -> int:
        return len(self._links)

    def register(self, num_id: int, link: DeviceLink) -> None:
        """`link` now serves the device; an older connection for it is told to go."""
        previous = self._links.get(num_id)
        self._links[num_id] = link
        if previous is not None and previous is not link:
            previous.kick(
                num_id,
                "SERVER: The connection was closed because there is another active connection "
                "with the same device ID.",
            )

    def unregister(self, num_id: int, link: DeviceLink) -> None:
        if self._links.get(num_id) is link:
            del self._links[num_id]

    def is_connected(self, num_id: int) -> bool:
        return num_id in self._links

    def link(self, num_id: int) -> DeviceLink | None:
        return self._links.get(num_id)

    def deliver_command(self, num_id: int, subfolder: str, data: bytes) -> bool:
        link = self._links.get(num_id)
        return link is not None and link.deliver_command(num_id, subfolder, data)

    # What the device manager calls

    async def send_command(self, device: Device, data: bytes, subfolder: str) -> bool:
        return self.deliver_command(device.num_id, subfolder, data)

    async def config_changed(self, num_id: int, config: DeviceConfig) -> None:
        link = self._links.get(num_id)
        if link is not None:
            link.deliver_config(num_id, config)

    async def device_changed(self, num_id: int) -> None:
        link = self._links.get(num_id)
        if link is not None:
            await link.revalidate(num_id)

    async def rotation_changed(self, num_id: int) -> None:
        link = self._links.get(num_id)
        if link is not None:
            await link.rotation_changed(num_id)

    async def key_in_use(self, num_id: int) -> str | None:
        link = self._links.get(num_id)
        return link.key_in_use(num_id) if link is not None else None

    async def registry_changed(self, name: RegistryName) -> None:
        links = {id(link): link for link in self._links.values() if link.registry_name == name}
        for link in links.values():
            await link.revalidate(None)
