"""The hub of a server that runs its MQTT bridge in several processes (`--mqtt-workers`).

The primary process runs the admin API and the device manager; every process, the primary
included, accepts MQTT connections on the same ports. The primary's `PrimaryHub` keeps a
directory of which worker serves which device (workers report each device that connects or goes)
so that:

- one connection per device holds across processes: a device connecting to one process makes
  the process that served it before close the older connection;
- commands and key-in-use questions go to the one process that serves the device and wait for
  its answer;
- configs and changes to devices and registries go to every worker, because each worker also
  caches device contexts that must be forgotten, whether or not it serves the device.

Workers run a `WorkerHub`: the plain hub for their own connections, reporting to the primary.
Both speak over `ipc.Channel`s; the messages are listed where they are handled.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ironcore.bridge.changes import Changes
from ironcore.bridge.hub import DeviceLink, Hub
from ironcore.bridge.ipc import Channel, ChannelClosed, RemoteError
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceConfig

log = logging.getLogger(__name__)

TAKEN_OVER = (
    "SERVER: The connection was closed because there is another active connection "
    "with the same device ID."
)


class PrimaryHub(Hub):
    """The primary's hub: its own connections, plus the directory of the workers' devices."""

    def __init__(self) -> None:
        super().__init__()
        self._workers: dict[int, Channel] = {}
        self._owners: dict[int, int] = {}  # device num_id → worker index
        # Told when a worker forwards a change it made (a key rotation step): forget the device.
        self.forget: Callable[[int], None] = lambda num_id: None

    def __len__(self) -> int:
        return super().__len__() + len(self._owners)

    # The workers

    def attach(self, index: int, channel: Channel) -> None:
        self._workers[index] = channel

    def detach(self, index: int) -> None:
        """The worker is gone: so are its connections."""
        self._workers.pop(index, None)
        for num_id in [n for n, owner in self._owners.items() if owner == index]:
            del self._owners[num_id]

    def handler(self, index: int) -> Callable[[str, list[Any]], Any]:
        """What worker `index` tells the primary."""

        def handle(kind: str, arguments: list[Any]) -> Any:
            if kind == "connected":
                self._connected_elsewhere(arguments[0], index)
            elif kind == "disconnected":
                if self._owners.get(arguments[0]) == index:
                    del self._owners[arguments[0]]
            elif kind == "forget":
                self.forget(arguments[0])
                self._broadcast("forget", arguments[0], skip=index)
            elif kind != "ready":
                raise ValueError(f"unknown message {kind!r} from worker {index}")

        return handle

    def forget_device(self, num_id: int) -> None:
        """A change made in this process (a key rotation step): every process forgets."""
        self.forget(num_id)
        self._broadcast("forget", num_id)

    def _connected_elsewhere(self, num_id: int, index: int) -> None:
        local = self._links.pop(num_id, None)
        if local is not None:
            local.kick(num_id, TAKEN_OVER)
        owner = self._owners.get(num_id)
        if owner is not None and owner != index:
            self._send(owner, "kick", num_id)
        self._owners[num_id] = index

    def _send(self, index: int, kind: str, *arguments: Any) -> None:
        channel = self._workers.get(index)
        if channel is not None:
            channel.send(kind, *arguments)

    def _broadcast(self, kind: str, *arguments: Any, skip: int | None = None) -> None:
        for index, channel in self._workers.items():
            if index != skip:
                channel.send(kind, *arguments)

    async def _ask(self, num_id: int, kind: str, *arguments: Any) -> Any:
        """Ask the worker serving the device; None if no worker does or it cannot answer."""
        owner = self._owners.get(num_id)
        channel = self._workers.get(owner) if owner is not None else None
        if channel is None:
            return None
        try:
            return await channel.request(kind, num_id, *arguments)
        except (ChannelClosed, RemoteError, TimeoutError) as error:
            log.warning(
                "worker %d could not answer %s for device %d: %s", owner, kind, num_id, error
            )
            return None

    # The hub's own connections

    def register(self, num_id: int, link: DeviceLink) -> None:
        owner = self._owners.pop(num_id, None)
        if owner is not None:
            self._send(owner, "kick", num_id)
        super().register(num_id, link)

    def is_connected(self, num_id: int) -> bool:
        return super().is_connected(num_id) or num_id in self._owners

    # What the device manager calls

    async def send_command(self, device: Device, data: bytes, subfolder: str) -> bool:
        return await self.command(device.num_id, subfolder, data)

    async def command(self, num_id: int, subfolder: str, data: bytes) -> bool:
        """Deliver a command to a device this process or one of its workers serves."""
        if super().is_connected(num_id):
            return self.deliver_command(num_id, subfolder, data)
        encoded = base64.b64encode(data).decode()
        return bool(await self._ask(num_id, "command", subfolder, encoded))

    # Changes go to the workers first: they check their connections while this one does.

    async def config_changed(self, num_id: int, config: DeviceConfig) -> None:
        data = base64.b64encode(config.binary_data).decode()
        self._broadcast("config", num_id, config.version, data)
        await super().config_changed(num_id, config)

    async def device_changed(self, num_id: int) -> None:
        self._broadcast("device", num_id)
        await super().device_changed(num_id)

    async def rotation_changed(self, num_id: int) -> None:
        self._broadcast("rotation", num_id)
        await super().rotation_changed(num_id)

    async def key_in_use(self, num_id: int) -> str | None:
        if super().is_connected(num_id):
            return await super().key_in_use(num_id)
        found = await self._ask(num_id, "key")
        return found if isinstance(found, str) else None

    async def registry_changed(self, name: RegistryName) -> None:
        self._broadcast("registry", name.project, name.location.location, name.registry)
        await super().registry_changed(name)


class WorkerHub(Hub):
    """A worker's hub: its own connections, each device reported to the primary."""

    def __init__(self) -> None:
        super().__init__()
        self.channel: Channel | None = None

    def register(self, num_id: int, link: DeviceLink) -> None:
        super().register(num_id, link)
        if self.channel is not None:
            self.channel.send("connected", num_id)

    def unregister(self, num_id: int, link: DeviceLink) -> None:
        if self._links.get(num_id) is link:
            super().unregister(num_id, link)
            if self.channel is not None:
                self.channel.send("disconnected", num_id)

    def kick(self, num_id: int) -> None:
        """The device connected to another process."""
        link = self._links.pop(num_id, None)
        if link is not None:
            link.kick(num_id, TAKEN_OVER)


class WorkerChanges:
    """What the primary tells a worker, applied in the worker: `changes` is the worker's
    `bridge.changes.Changes` (its cache, then its hub); `refresh_revocations` runs before a
    registry is checked again, since the change may be a signer revoked a moment ago."""

    def __init__(
        self,
        hub: WorkerHub,
        changes: Changes,
        refresh_revocations: Callable[[], Awaitable[None]],
        metrics: Callable[[], list[Any]],
    ) -> None:
        self.hub = hub
        self.changes = changes
        self.refresh_revocations = refresh_revocations
        self.metrics = metrics

    def handle(self, kind: str, arguments: list[Any]) -> Any:
        if kind == "kick":
            self.hub.kick(arguments[0])
            return None
        if kind == "config":
            num_id, version, data = arguments
            config = DeviceConfig(version=version, binary_data=base64.b64decode(data))
            return self.changes.config_changed(num_id, config)
        if kind == "device":
            return self.changes.device_changed(arguments[0])
        if kind == "rotation":
            return self.changes.rotation_changed(arguments[0])
        if kind == "forget":
            self.changes.authenticator.forget_device(arguments[0])
            return None
        if kind == "registry":
            return self._registry_changed(RegistryName.parse(*arguments))
        if kind == "command":
            num_id, subfolder, data = arguments
            return self.hub.deliver_command(num_id, subfolder, base64.b64decode(data))
        if kind == "key":
            link = self.hub.link(arguments[0])
            return link.key_in_use(arguments[0]) if link is not None else None
        if kind == "metrics":
            return self.metrics()
        raise ValueError(f"unknown message {kind!r} from the primary")

    async def _registry_changed(self, name: RegistryName) -> None:
        await self.refresh_revocations()
        await self.changes.registry_changed(name)
