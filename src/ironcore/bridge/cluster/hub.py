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

Between servers the directory is rebuilt rather than trusted: a server that joins the bus, or
whose connection to NATS comes back, says `Hello` and its devices (`Holding`), and every server
answers with its own (`joined`). A server whose lease expired (`cluster.leases`) is dropped
with its devices (`server_gone`). After an outage of the bus this server also catches up
(`catch_up`): whatever changes it did not hear of (configs, blocks, deletions, credentials,
revoked signers) are in the database, so each of its processes forgets what it cached and
checks its connections against the database; and of a device connected to two servers during
the outage, the newer connection wins when their `Holding`s cross, as for `Connected`.
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
    CatchUp,
    Change,
    Command,
    ConfigChanged,
    Connected,
    Delivered,
    DeviceChanged,
    Disconnected,
    Failed,
    Fingerprint,
    Forget,
    Hello,
    Holding,
    KeyInUse,
    Kick,
    Message,
    RegistryChanged,
    RotationChanged,
)
from ironcore.bridge.cluster.transport import Peers, Transport
from ironcore.bridge.hub import LiveConnection, LocalHub
from ironcore.bridge.ipc import Reply
from ironcore.errors import Unavailable
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceConfig

log = logging.getLogger(__name__)
# Devices per `Holding`: about 30 bytes each, far below NATS's 1 MB message limit.
HOLDING_CHUNK = 2000


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
        # Server → its devices not yet named by the `Holding` chunks it is sending.
        self._unconfirmed: dict[str, set[int]] = {}

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
        """Whether the device's connection took the command; Unavailable if the process that
        serves it could not be asked (the bus to the other servers is down)."""
        answer = await self._answer(Command(device.num_id, subfolder, data), None)
        if isinstance(answer, Failed):
            raise Unavailable(f"Device {device.id} could not be reached: {answer.error}")
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
            case Hello():
                self._tell_holdings(via)
            case Holding():
                self._holding(message, via)
            case CatchUp():
                return self.catch_up()
            case _:
                raise ValueError(f"{message.kind} from {via.name} is not for the hub")
        return None

    # The other servers (`cluster.bus`)

    async def joined(self, via: Transport, recovering: bool) -> None:
        """This server joined the servers over `via`, or (`recovering`) its connection came
        back after an outage: learn what the others hold, tell them what this one holds and,
        after an outage, catch up with what was not heard."""
        via.send(Hello(self.origin))
        self._tell_holdings(via)
        if recovering:
            await self.catch_up()

    def server_gone(self, origin: str) -> None:
        """Server `origin` was not heard for its lease: none of its devices is connected."""
        self._routes.pop(origin, None)
        self._unconfirmed.pop(origin, None)
        dropped = self.directory.drop_holder(origin)
        if dropped:
            log.warning(
                "server %s was not heard for its lease: its %d devices are taken as not connected",
                origin,
                len(dropped),
            )

    async def catch_up(self) -> None:
        """Changes may have gone unheard: this process and its workers forget what they cached
        and check each connection against the database (`LocalHub.catch_up`)."""
        self.caches.forget_all()
        for transport in self._transports:
            if transport.peers is Peers.WORKER:
                transport.send(CatchUp())
        if self.refresh_revocations is not None:
            await self.refresh_revocations()
        await self.local.catch_up()

    def _tell_holdings(self, via: Transport) -> None:
        """The devices of this server's processes, in chunks of one snapshot (at least one)."""
        here = {self.origin} | {h for h, t in self._routes.items() if t.peers is Peers.WORKER}
        held = tuple((num_id, entry.since) for num_id, entry in self.directory.held_by(here))
        starts = range(0, max(len(held), 1), HOLDING_CHUNK)
        for start in starts:
            chunk = held[start : start + HOLDING_CHUNK]
            via.send(Holding(self.origin, chunk, start == 0, start == starts[-1]))

    def _holding(self, message: Holding, via: Transport) -> None:
        """Take what another server holds, newer connections winning as for `Connected`; what
        its snapshot leaves out, once the last chunk is in, it no longer holds."""
        origin = message.origin
        if message.first:
            self._unconfirmed[origin] = {n for n, _ in self.directory.held_by({origin})}
        unconfirmed = self._unconfirmed.get(origin, set())
        self._routes[origin] = via
        for num_id, at in message.devices:
            unconfirmed.discard(num_id)
            if not self.directory.newer_than(num_id, at):
                self._claim(num_id, origin, at, via)
        if message.last:
            for num_id in self._unconfirmed.pop(origin, ()):
                self.directory.release(num_id, origin)

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
    ) -> Delivered | Fingerprint | Failed:
        """From the connection here, or from the process that serves the device (never back
        over the transport the request came from); Failed if that process could not be asked
        at all (the transport said why)."""
        entry = self.directory.get(request.num_id)
        if entry is not None and entry.holder != self.origin:
            transport = self._routes.get(entry.holder)
            if transport is not None and transport is not via:
                answer = await transport.ask(entry.holder, request)
                if isinstance(answer, Delivered if isinstance(request, Command) else Fingerprint):
                    return answer
                if isinstance(answer, Failed) and isinstance(request, Command):
                    return answer
        match request:
            case Command():
                delivered = self.local.deliver_command(
                    request.num_id, request.subfolder, request.data
                )
                return Delivered(delivered)
            case KeyInUse():
                return Fingerprint(self.local.key_in_use(request.num_id))
