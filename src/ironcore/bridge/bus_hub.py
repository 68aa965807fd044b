"""Separate ironcore servers sharing one database, joined over NATS (`--bus nats://…`).

Each server's primary process connects to NATS; its MQTT workers stay behind it
(`process_hub`). The servers of one database (the namespace is a digest of the database URL and
schema) share two kinds of subjects:

- `ironcore.hub.{namespace}.all`: what every server must hear. A device connected (with the
  time it did, so that of two near-simultaneous connections the newer wins everywhere) or gone;
  a config, device, registry or key rotation changed; a device's cached context to forget.
- `ironcore.hub.{namespace}.server.{id}`: requests for one server: deliver a command to a
  device it serves, name the key a device it serves authenticated with.

Every server keeps a directory of the devices the others serve, from the first kind, and asks
the one that serves a device with the second. A change a server hears is applied as its own
(cached contexts forgotten, connections checked again) but not passed on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from ironcore.bridge.hub import DeviceLink
from ironcore.bridge.process_hub import TAKEN_OVER, PrimaryHub
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceConfig
from ironcore.routing.nats import reachable

log = logging.getLogger(__name__)
# How long a server waits for another to deliver a command or name a key.
REQUEST_SECONDS = 5.0


def namespace(database_url: str, schema: str) -> str:
    """The servers sharing this database (and schema) share subjects; others never meet."""
    return hashlib.sha256(f"{database_url}\n{schema}".encode()).hexdigest()[:16]


class BusHub(PrimaryHub):
    """The primary's hub (its connections and its workers'), joined to the other servers."""

    def __init__(self, url: str, space: str) -> None:
        super().__init__()
        self.url = url
        self.server_id = uuid.uuid4().hex[:12]
        self._all = f"ironcore.hub.{space}.all"
        self._prefix = f"ironcore.hub.{space}.server."
        self._client: Client | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._remote: dict[int, str] = {}  # device num_id → the server serving it
        self._since: dict[int, float] = {}  # device num_id → when it connected to this server
        # Set by the server: forget cached contexts, and refresh revoked signers.
        self.forget_all: Callable[[], None] = lambda: None
        self.refresh_revocations: Callable[[], Awaitable[None]] | None = None

    async def start(self) -> None:
        await reachable(self.url)
        self._client = await nats.connect(
            self.url, name=f"ironcore-hub-{self.server_id}", max_reconnect_attempts=-1
        )
        await self._client.subscribe(self._all, cb=self._heard)
        await self._client.subscribe(self._prefix + self.server_id, cb=self._asked)
        log.info("joined the servers of this database over NATS (%s)", self.url)

    async def close(self) -> None:
        """After the bridge stopped (its devices' departures are being told): send what is
        still to be sent, then leave."""
        if self._sending:
            await asyncio.wait(self._sending, timeout=REQUEST_SECONDS)
        if self._client is not None:
            try:
                await self._client.drain()
            except NatsError as error:  # leaving anyway
                log.warning("could not leave NATS cleanly: %s", error)

    # Telling the others

    def _tell(self, kind: str, *arguments: Any) -> None:
        if self._client is None or not self._client.is_connected:
            log.warning("NATS is not connected: the other servers did not hear %s", kind)
            return
        body = json.dumps([kind, self.server_id, *arguments]).encode()
        task = asyncio.ensure_future(self._client.publish(self._all, body))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not tell the other servers: %s", task.exception())

    def _connected_here(self, num_id: int) -> None:
        now = time.time()
        self._since[num_id] = now
        self._remote.pop(num_id, None)
        self._tell("connected", num_id, now)

    def _gone_here(self, num_id: int) -> None:
        if self._since.pop(num_id, None) is not None:
            self._tell("disconnected", num_id)

    def forget_device(self, num_id: int) -> None:
        super().forget_device(num_id)
        self._tell("forget", num_id)

    def register(self, num_id: int, link: DeviceLink) -> None:
        super().register(num_id, link)
        self._connected_here(num_id)

    def unregister(self, num_id: int, link: DeviceLink) -> None:
        if self._links.get(num_id) is link:
            super().unregister(num_id, link)
            self._gone_here(num_id)

    def handler(self, index: int) -> Callable[[str, list[Any]], Any]:
        relay = super().handler(index)

        def handle(kind: str, arguments: list[Any]) -> Any:
            owned = kind == "disconnected" and self._owners.get(arguments[0]) == index
            result = relay(kind, arguments)
            if kind == "connected":
                self._connected_here(arguments[0])
            elif owned:
                self._gone_here(arguments[0])
            elif kind == "forget":
                self._tell("forget", arguments[0])
            return result

        return handle

    def detach(self, index: int) -> None:
        gone = [num_id for num_id, owner in self._owners.items() if owner == index]
        super().detach(index)
        for num_id in gone:
            self._gone_here(num_id)

    def is_connected(self, num_id: int) -> bool:
        return super().is_connected(num_id) or num_id in self._remote

    # What the device manager calls: this server first, then the others

    async def send_command(self, device: Device, data: bytes, subfolder: str) -> bool:
        if device.num_id in self._since:
            return await super().command(device.num_id, subfolder, data)
        encoded = base64.b64encode(data).decode()
        return bool(await self._ask_server(device.num_id, "command", subfolder, encoded))

    async def key_in_use(self, num_id: int) -> str | None:
        if num_id in self._since:
            return await super().key_in_use(num_id)
        found = await self._ask_server(num_id, "key")
        return found if isinstance(found, str) else None

    async def config_changed(self, num_id: int, config: DeviceConfig) -> None:
        data = base64.b64encode(config.binary_data).decode()
        self._tell("config", num_id, config.version, data)
        await super().config_changed(num_id, config)

    async def device_changed(self, num_id: int) -> None:
        self._tell("device", num_id)
        await super().device_changed(num_id)

    async def rotation_changed(self, num_id: int) -> None:
        self._tell("rotation", num_id)
        await super().rotation_changed(num_id)

    async def registry_changed(self, name: RegistryName) -> None:
        self._tell("registry", name.project, name.location.location, name.registry)
        await super().registry_changed(name)

    async def _ask_server(self, num_id: int, kind: str, *arguments: Any) -> Any:
        server = self._remote.get(num_id)
        if server is None or self._client is None:
            return None
        body = json.dumps([kind, num_id, *arguments]).encode()
        try:
            reply = await self._client.request(self._prefix + server, body, REQUEST_SECONDS)
            return json.loads(reply.data)
        except (NatsError, TimeoutError, ValueError) as error:
            log.warning("server %s did not answer %s for %d: %s", server, kind, num_id, error)
            return None

    # What the others tell this server

    async def _heard(self, msg: Msg) -> None:
        try:
            kind, server, *arguments = json.loads(msg.data)
        except (ValueError, TypeError):
            log.error("a malformed message on %s: %r", msg.subject, msg.data[:200])
            return
        if server == self.server_id:
            return
        try:
            await self._apply(kind, server, arguments)
        except Exception:  # one bad message must not stop the subscription
            log.exception("applying %s from server %s failed", kind, server)

    async def _apply(self, kind: str, server: str, arguments: list[Any]) -> None:
        if kind == "connected":
            num_id, at = arguments
            since = self._since.get(num_id)
            if since is not None and since > at:
                return  # this server's connection is the newer: the other one goes
            self._since.pop(num_id, None)
            local = self._links.pop(num_id, None)
            if local is not None:
                local.kick(num_id, TAKEN_OVER)
            owner = self._owners.pop(num_id, None)
            if owner is not None:
                self._send(owner, "kick", num_id)
            self._remote[num_id] = server
        elif kind == "disconnected":
            if self._remote.get(arguments[0]) == server:
                del self._remote[arguments[0]]
        elif kind == "config":
            num_id, version, data = arguments
            self.forget(num_id)
            config = DeviceConfig(version=version, binary_data=base64.b64decode(data))
            await super().config_changed(num_id, config)
        elif kind == "device":
            self.forget(arguments[0])
            await super().device_changed(arguments[0])
        elif kind == "rotation":
            self.forget(arguments[0])
            await super().rotation_changed(arguments[0])
        elif kind == "registry":
            self.forget_all()
            if self.refresh_revocations is not None:
                await self.refresh_revocations()
            await super().registry_changed(RegistryName.parse(*arguments))
        elif kind == "forget":
            self.forget(arguments[0])
            self._broadcast("forget", arguments[0])
        else:
            log.error("unknown message %r from server %s", kind, server)

    async def _asked(self, msg: Msg) -> None:
        answer: Any = None
        try:
            kind, num_id, *arguments = json.loads(msg.data)
            if kind == "command":
                subfolder, data = arguments
                answer = await super().command(num_id, subfolder, base64.b64decode(data))
            elif kind == "key":
                answer = await super().key_in_use(num_id)
            else:
                log.error("unknown request %r from another server", kind)
        except Exception:  # answered all the same, so the asker does not wait out its timeout
            log.exception("answering a request from another server failed")
        await msg.respond(json.dumps(answer).encode())
