"""The hub as connections see it, and this process's live connections by device.

A connection that authenticated a device (or attached one behind a gateway) registers it with
the `Hub` and unregisters it when it goes. The hub a server runs is `cluster.hub.ClusterHub`:
this `LocalHub`, joined to the server's other processes and to the other servers.
"""

from __future__ import annotations

from typing import Protocol

from ironcore.registry.names import RegistryName
from ironcore.registry.resources import DeviceConfig

TAKEN_OVER = (
    "SERVER: The connection was closed because there is another active connection "
    "with the same device ID."
)


class LiveConnection(Protocol):
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

    async def catch_up(self) -> None:
        """Changes may have gone unheard (the bus to the other servers was down): check every
        device again, and send each the config the database has if it is newer than the one
        this connection sent."""


class Hub(Protocol):
    """What a connection tells the hub."""

    def register(self, num_id: int, connection: LiveConnection) -> None:
        """`connection` now serves the device; an older connection for it is told to go."""

    def unregister(self, num_id: int, connection: LiveConnection) -> None:
        """`connection` no longer serves the device (nothing, if another took it over)."""


class LocalHub:
    """The connections of this process, by device."""

    def __init__(self) -> None:
        self._connections: dict[int, LiveConnection] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def get(self, num_id: int) -> LiveConnection | None:
        return self._connections.get(num_id)

    def register(self, num_id: int, connection: LiveConnection) -> None:
        previous = self._connections.get(num_id)
        self._connections[num_id] = connection
        if previous is not None and previous is not connection:
            previous.kick(num_id, TAKEN_OVER)

    def unregister(self, num_id: int, connection: LiveConnection) -> bool:
        """False if another connection serves the device now."""
        if self._connections.get(num_id) is not connection:
            return False
        del self._connections[num_id]
        return True

    def kick(self, num_id: int) -> bool:
        """The device connected elsewhere: its connection here is told to go."""
        connection = self._connections.pop(num_id, None)
        if connection is not None:
            connection.kick(num_id, TAKEN_OVER)
        return connection is not None

    def deliver_config(self, num_id: int, config: DeviceConfig) -> None:
        connection = self._connections.get(num_id)
        if connection is not None:
            connection.deliver_config(num_id, config)

    def deliver_command(self, num_id: int, subfolder: str, data: bytes) -> bool:
        connection = self._connections.get(num_id)
        return connection is not None and connection.deliver_command(num_id, subfolder, data)

    def key_in_use(self, num_id: int) -> str | None:
        connection = self._connections.get(num_id)
        return connection.key_in_use(num_id) if connection is not None else None

    async def revalidate(self, num_id: int) -> None:
        connection = self._connections.get(num_id)
        if connection is not None:
            await connection.revalidate(num_id)

    async def rotation_changed(self, num_id: int) -> None:
        connection = self._connections.get(num_id)
        if connection is not None:
            await connection.rotation_changed(num_id)

    async def catch_up(self) -> None:
        """Every connection catches up (`LiveConnection.catch_up`), one after another: after
        an outage the database is read once per device, not all at once."""
        for connection in {id(c): c for c in self._connections.values()}.values():
            await connection.catch_up()

    async def registry_changed(self, name: RegistryName) -> None:
        """Every connection serving a device of the registry checks all its devices again."""
        found = {id(c): c for c in self._connections.values() if c.registry_name == name}
        for connection in found.values():
            await connection.revalidate(None)
