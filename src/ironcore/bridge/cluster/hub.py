"""The hub of one process: its own connections, the directory of who serves each device, and
the transports to the other processes of its server and to the other servers.

- The embedded default has no transport: the hub is the local one, and changes are forgotten.
- An MQTT worker (`--mqtt-workers`) has one, to its primary: it tells the primary of each
  device that connects or goes, and hears changes, takeovers and requests from it.
- A primary has one per worker and, with `--bus`, the bus to the other servers. Its directory
  knows which of its processes serves each device, and which server serves the others'.

Every message that comes in goes through `receive`, dispatched by its type. A change (config,
device, rotation, registry, forget) is forgotten here, passed to every other transport and acted
on by the local connection, whichever process made it. A device connecting anywhere takes it
over from wherever it was: this process's own connections always win, between servers the
newer connection does. Requests (commands, key questions) go to the one process serving the
device.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from ironcore.bridge.cluster.directory import Directory
from ironcore.bridge.cluster.forgetting import Caches, forget
from ironcore.bridge.cluster.messages import (
    Change,
    Command,
    ConfigChanged,
    Connected,
    Delivered,
    DeviceChanged,
    Disconnected,
    Fingerprint,
    Forget,
    KeyInUse,
    Kick,
    Message,
    RegistryChanged,
    RotationChanged,
)
from ironcore.bridge.cluster.transport import Peers, Transport
from ironcore.bridge.hub import LiveConnection, LocalHub
from ironcore.bridge.ipc import Reply
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceConfig

log = logging.getLogger(__name__)


def new_server_id() -> str:
    return uuid.uuid4().hex[:12]


def worker_id(server_id: str, index: int) -> str:
    return f"{server_id}/{index}"


class ClusterHub:
    def __init__(
        self,
        origin: str,
        caches: Caches,
        refresh_revocations: Callable[[], Awaitable[None]] | None = None,
        transports: Sequence[Transport] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`refresh_revocations` refreshes the process's revoked signers before a registry
        heard of elsewhere is checked again (the change may be a signer revoked a moment ago).
        `transports` are those the process has from the start (a worker's to its primary, a
        server's bus); a primary attaches each worker's as it starts it. A transport's
        messages come in through `receive`, which it is given once the hub exists."""
        self.origin = origin  # this process: a server id, or a worker id
        self.caches = caches
        self.local = LocalHub()
        self.directory = Directory()
        self.refresh_revocations = refresh_revocations
        self._clock = clock
        self._transports: list[Transport] = list(transports)
        self._routes: dict[str, Transport] = {}  # holder → the transport that reaches it

    def attach(self, transport: Transport) -> None:
        self._transports.append(transport)

    def detach(self, transport: Transport) -> None:
        """The transport is gone (a worker exited), and so are the devices held behind it.
        Detaching it again does nothing."""
        if transport in self._transports:
            self._transports.remove(transport)
        for holder in [h for h, reached in self._routes.items() if reached is transport]:
            del self._routes[holder]
            for num_id in self.directory.drop_holder(holder):
                if transport.peers is Peers.WORKER:
                    self._announce(Disconnected(self.origin, num_id), transport)

    def is_connected(self, num_id: int) -> bool:
        """Whether any process of any server serves the device, as far as this one knows."""
        return num_id in self.directory

    # What connections call (`bridge.hub.Hub`)

    def register(self, num_id: int, connection: LiveConnection) -> None:
        self.local.register(num_id, connection)
        self._claim(num_id, self.origin, self._clock(), None)

    def unregister(self, num_id: int, connection: LiveConnection) -> None:
        if self.local.unregister(num_id, connection):
            self.directory.release(num_id, self.origin)
            self._announce(Disconnected(self.origin, num_id), None)

    # What the device manager, revocations and rollouts call (`registry.service.ConnectedDevices`)

    async def send_command(self, device: Device, data: bytes, subfolder: str) -> bool:
        answer = await self._answer(Command(device.num_id, subfolder, data), None)
        return isinstance(answer, Delivered) and answer.delivered

    async def key_in_use(self, num_id: int) -> str | None:
        answer = await self._answer(KeyInUse(num_id), None)
        return answer.fingerprint if isinstance(answer, Fingerprint) else None

    async def config_changed(self, num_id: int, config: DeviceConfig) -> None:
        await self._changed(ConfigChanged(self.origin, num_id, config.version, config.binary_data))

    async def device_changed(self, num_id: int) -> None:
        await self._changed(DeviceChanged(self.origin, num_id))

    async def rotation_changed(self, num_id: int) -> None:
        await self._changed(RotationChanged(self.origin, num_id))

    async def registry_changed(self, name: RegistryName) -> None:
        await self._changed(RegistryChanged(self.origin, name))

    def forget_device(self, num_id: int) -> None:
        """A change made outside the manager (a key rotation step): every process forgets."""
        self._change(Forget(self.origin, num_id), None)

    # What the other processes say

    def receive(self, message: Message, via: Transport) -> Reply:
        """Apply a message that came over `via`. What must wait (acting on a change, asking
        another process) is returned as an awaitable; a request's answer is what it yields."""
        match message:
            case Connected():
                if via.peers is Peers.SERVERS and self.directory.newer_than(
                    message.num_id, message.at
                ):
                    return None  # the connection here is newer: the other server closes its own
                self._routes[message.origin] = via
                self._claim(message.num_id, message.origin, message.at, via)
            case Disconnected():
                released = self.directory.release(message.num_id, message.origin)
                if released and via.peers is Peers.WORKER:
                    self._announce(Disconnected(self.origin, message.num_id), via)
            case Kick():
                if self.local.kick(message.num_id):
                    self.directory.release(message.num_id, self.origin)
            case (
                ConfigChanged() | DeviceChanged() | RotationChanged() | RegistryChanged() | Forget()
            ):
                return self._change(message, via)
            case Command() | KeyInUse():
                return self._answer(message, via)
            case _:
                raise ValueError(f"{message.kind} from {via.name} is not for the hub")
        return None

    # Who serves which device

    def _claim(self, num_id: int, holder: str, since: float, via: Transport | None) -> None:
        previous = self.directory.take(num_id, holder, since)
        if previous is not None and previous.holder != holder:
            self._displace(num_id, previous.holder)
        if via is None or via.peers is Peers.WORKER:  # a device of this server: the others hear
            self._announce(Connected(self.origin, num_id, since), via)

    def _displace(self, num_id: int, holder: str) -> None:
        """Tell `holder` to close its connection of the device. Another server needs no word:
        it hears that the device connected here."""
        if holder == self.origin:
            self.local.kick(num_id)
            return
        transport = self._routes.get(holder)
        if transport is not None and transport.peers is Peers.WORKER:
            transport.send(Kick(num_id))

    def _announce(self, message: Connected | Disconnected, via: Transport | None) -> None:
        """To whoever hears of this server's devices: the primary, the other servers."""
        for transport in self._transports:
            if transport.peers is not Peers.WORKER and transport is not via:
                transport.send(message)

    # Changes

    async def _changed(self, change: Change) -> None:
        acting = self._change(change, None)
        if acting is not None:
            await acting

    def _change(self, change: Change, via: Transport | None) -> Awaitable[None] | None:
        """Forget, pass on to every transport but the one it came over, then act."""
        forget(self.caches, change)
        if self._transports:
            passed = change if change.origin == self.origin else replace(change, origin=self.origin)
            for transport in self._transports:
                if transport is not via:
                    transport.send(passed)
        return None if isinstance(change, Forget) else self._act(change, via)

    async def _act(self, change: Change, via: Transport | None) -> None:
        match change:
            case ConfigChanged():
                config = DeviceConfig(version=change.version, binary_data=change.data)
                self.local.deliver_config(change.num_id, config)
            case DeviceChanged():
                await self.local.revalidate(change.num_id)
            case RotationChanged():
                await self.local.rotation_changed(change.num_id)
            case RegistryChanged():
                if via is not None and self.refresh_revocations is not None:
                    await self.refresh_revocations()
                await self.local.registry_changed(change.registry)

    # Requests

    async def _answer(
        self, request: Command | KeyInUse, via: Transport | None
    ) -> Delivered | Fingerprint:
        """From the connection here, or from the process that serves the device (never back
        over the transport the request came from)."""
        entry = self.directory.get(request.num_id)
        if entry is not None and entry.holder != self.origin:
            transport = self._routes.get(entry.holder)
            if transport is not None and transport is not via:
                answer = await transport.ask(entry.holder, request)
                if isinstance(answer, Delivered if isinstance(request, Command) else Fingerprint):
                    return answer
        match request:
            case Command():
                delivered = self.local.deliver_command(
                    request.num_id, request.subfolder, request.data
                )
                return Delivered(delivered)
            case KeyInUse():
                return Fingerprint(self.local.key_in_use(request.num_id))
