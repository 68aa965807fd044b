"""Separate ironcore servers sharing one database, joined over NATS (`--bus nats://…`): the
transport between the primaries' hubs.

The servers of one database (the namespace is a digest of the database URL and schema) share
three kinds of subjects, each carrying `cluster.messages` as `encode` writes them:

- `ironcore.hub.{namespace}.all`: what every server must hear, each message naming its sender
  (`origin`, the server id): a device connected (with the time it did, so that of two
  near-simultaneous connections the newer wins everywhere) or gone; a config, device, registry
  or key rotation changed; a device's cached context to forget; a server's `Hello` and the
  `Holding`s that answer it.
- `ironcore.hub.{namespace}.alive`: every server's `Heartbeat`, on a subject (and so a
  subscription callback) of its own, so that it is not held up behind changes being applied.
- `ironcore.hub.{namespace}.server.{id}`: requests for one server (deliver a command to a device
  it serves, name the key a device it serves authenticated with), answered on the reply subject.

A server skips what it sent itself. What it hears it applies as its own (cached contexts
forgotten, connections checked again) but does not pass back.

NATS keeps nothing for a server that is not listening, so the directory of who holds which
device is rebuilt rather than trusted, by the hub (`ClusterHub.joined`) when this bus starts and
each time nats-py's `reconnected_cb` says its connection is back (subscriptions already
replayed): `Hello`, answered by every server's `Holding`, and a catch-up of the changes missed.
Each server says `Heartbeat` every third of its lease (`--bus-lease`); a server not heard for
its lease is dropped from the directory (`cluster.leases`, `ClusterHub.server_gone`), so a
server that died stops being named as its devices' holder; one that was only slow is asked
again (`Hello`) when it is heard again. While this server's own connection is down, `ready` is
False (/readyz answers 503), commands for devices on other servers fail at once saying so, and
no lease expires (it hears nobody, which says nothing of them).

Why a snapshot on (re)join rather than asking on demand: a command must know at once whether
the device is connected, and a takeover must compare connection times, both of which need the
directory filled; a few `Holding` chunks per (re)join are cheap (about 30 bytes a device).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable
from typing import Protocol

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from ironcore.bridge import metrics
from ironcore.bridge.cluster.leases import Leases
from ironcore.bridge.cluster.messages import (
    Answer,
    Command,
    Failed,
    Heartbeat,
    KeyInUse,
    Message,
    MessageError,
    about,
    decode,
    encode,
)
from ironcore.bridge.cluster.transport import ANSWERS, Peers, Transport
from ironcore.bridge.ipc import Reply
from ironcore.errors import Unavailable
from ironcore.routing.nats import reachable

log = logging.getLogger(__name__)
# How long a server waits for another to deliver a command or name a key.
REQUEST_SECONDS = 5.0
# How long a server may stay silent before the others take its devices as not connected.
LEASE_SECONDS = 10.0
# How long nats-py waits between attempts to reconnect.
RECONNECT_SECONDS = 1.0


class Members(Protocol):
    """What the bus needs of the hub it joins to the other servers (`ClusterHub`)."""

    def receive(self, message: Message, via: Transport) -> Reply: ...

    async def joined(self, via: Transport, recovering: bool) -> None: ...

    def server_gone(self, origin: str) -> None: ...


def namespace(database_url: str, schema: str) -> str:
    """The servers sharing this database (and schema) share subjects; others never meet."""
    return hashlib.sha256(f"{database_url}\n{schema}".encode()).hexdigest()[:16]


class Bus:
    peers = Peers.SERVERS

    def __init__(
        self, url: str, space: str, server_id: str, lease_seconds: float = LEASE_SECONDS
    ) -> None:
        self.url = url
        self.server_id = server_id
        self.lease_seconds = lease_seconds
        self.name = "the bus"
        self.all_subject = f"ironcore.hub.{space}.all"
        self.alive_subject = f"ironcore.hub.{space}.alive"
        self.server_prefix = f"ironcore.hub.{space}.server."
        self.leases = Leases(lease_seconds)
        self._client: Client | None = None
        self._hub: Members | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._beating: asyncio.Task[None] | None = None
        self._catching_up: asyncio.Task[None] | None = None
        # From nats-py's disconnected_cb to its reconnected_cb (it reports itself connected a
        # moment before the latter, when the leases are not renewed yet).
        self._down = False

    @property
    def ready(self) -> bool:
        """Whether this server is connected to NATS, and so hears and reaches the others."""
        return self._client is not None and self._client.is_connected and not self._down

    async def check(self) -> None:
        """/readyz's `bus` component: raises while `ready` is False."""
        if not self.ready:
            raise Unavailable(f"not connected to NATS at {self.url} (--bus)")

    async def start(self, hub: Members) -> None:
        """Join the other servers; what they say goes to `hub`."""
        self._hub = hub
        await reachable(self.url)
        self._client = await nats.connect(
            self.url,
            name=f"ironcore-hub-{self.server_id}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_SECONDS,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )
        await self._client.subscribe(self.all_subject, cb=self._heard)
        await self._client.subscribe(self.alive_subject, cb=self._alive)
        await self._client.subscribe(self.server_prefix + self.server_id, cb=self._asked)
        await self._client.flush()  # subscribed at the server before anything is sent
        await hub.joined(self, recovering=False)
        self._beating = asyncio.create_task(self._beat())
        metrics.BUS_CONNECTED.set_function(lambda: float(self.ready))
        metrics.BUS_SERVERS.set_function(lambda: float(len(self.leases)))
        log.info("joined the servers of this database over NATS (%s)", self.url)

    async def close(self) -> None:
        """After the bridge stopped (its devices' departures are being told): send what is
        still to be sent, then leave."""
        for task in (self._beating, self._catching_up):
            if task is not None:
                task.cancel()
        if self._sending:
            await asyncio.wait(self._sending, timeout=REQUEST_SECONDS)
        if self._client is not None:
            try:
                await self._client.drain()
            except NatsError as error:  # leaving anyway
                log.warning("could not leave NATS cleanly: %s", error)

    # The hub's transport

    def send(self, message: Message) -> None:
        if self._client is None or not self._client.is_connected:
            # Said once when NATS went away; what was not heard is caught up when it is back.
            log.debug("NATS is not connected: the other servers did not hear %s", about(message))
            return
        task = asyncio.ensure_future(self._client.publish(self.all_subject, encode(message)))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not tell the other servers: %s", task.exception())

    async def ask(self, holder: str, request: Message) -> Answer | None:
        if self._client is None:
            return None
        if not self.ready:
            return Failed(f"it is connected to server {holder}, and NATS ({self.url}) is down")
        try:
            reply = await self._client.request(
                self.server_prefix + holder, encode(request), REQUEST_SECONDS
            )
            answer = decode(reply.data)
        except (NatsError, TimeoutError, MessageError) as error:
            log.warning("server %s did not answer %s: %s", holder, about(request), error)
            return None
        if not isinstance(answer, ANSWERS):
            log.warning("server %s answered %s with %s", holder, about(request), answer)
            return None
        return answer

    # Leases and outages

    async def _beat(self) -> None:
        """Say this server is alive; drop the servers not heard for their lease."""
        assert self._client is not None and self._hub is not None
        beat = encode(Heartbeat(self.server_id, self.lease_seconds))
        while True:
            if self.ready:
                try:
                    await self._client.publish(self.alive_subject, beat)
                except NatsError as error:  # the connection went meanwhile: said when back
                    log.debug("no heartbeat: %s", error)
                for origin in self.leases.expired(time.monotonic()):
                    self._hub.server_gone(origin)
            await asyncio.sleep(self.lease_seconds / 3)

    async def _disconnected(self) -> None:
        self._down = True
        if self._client is not None and not self._client.is_closed:
            log.warning(
                "lost NATS (%s): until it is back, changes are not heard from the other "
                "servers nor told to them, and commands for their devices fail",
                self.url,
            )

    async def _reconnected(self) -> None:
        # Called inside nats-py's reconnection: the catch-up (reads of every connected device)
        # runs beside it. A newer one replaces one still running from an earlier outage.
        log.warning("NATS (%s) is back: rejoining the other servers and catching up", self.url)
        self.leases.renew_all(time.monotonic())
        self._down = False
        if self._catching_up is not None:
            self._catching_up.cancel()
        self._catching_up = asyncio.create_task(self._rejoin())

    async def _rejoin(self) -> None:
        assert self._hub is not None
        try:
            await self._hub.joined(self, recovering=True)
        except Exception:  # the next outage tries again; the devices reconnecting heal too
            log.exception("catching up after the NATS outage failed")
        else:
            log.info("caught up with the other servers after the NATS outage")

    async def _back(self, origin: str) -> None:
        """A server taken as gone is heard again: it was only slow. What it holds was dropped
        here, so ask again (the hub's `Hello`)."""
        assert self._hub is not None
        log.warning(
            "server %s is heard again after its lease expired: asking what it holds", origin
        )
        await self._hub.joined(self, recovering=False)

    async def _error(self, error: Exception) -> None:
        # nats-py reports each failed reconnection attempt here; the outage was logged once.
        log.debug("NATS (%s): %s", self.url, error)

    # What the others say

    async def _heard(self, msg: Msg) -> None:
        try:
            message = decode(msg.data)
        except MessageError as error:
            log.error("a malformed message on %s (%s): %r", msg.subject, error, msg.data[:200])
            return
        origin = getattr(message, "origin", None)
        if origin is None:
            log.error("a %s without its sender on %s", message.kind, msg.subject)
            return
        if origin == self.server_id:
            return
        if self.leases.heard(origin, time.monotonic()):
            await self._back(origin)
        try:
            await self._apply(message)
        except Exception:  # one bad message must not stop the subscription
            log.exception("applying %s from server %s failed", about(message), origin)

    async def _alive(self, msg: Msg) -> None:
        try:
            message = decode(msg.data)
            if not isinstance(message, Heartbeat):
                raise MessageError(f"{message.kind} is not a heartbeat")
        except MessageError as error:
            log.error("a malformed heartbeat on %s (%s): %r", msg.subject, error, msg.data[:200])
            return
        if message.origin != self.server_id and self.leases.heard(
            message.origin, time.monotonic(), message.lease
        ):
            await self._back(message.origin)

    async def _asked(self, msg: Msg) -> None:
        # Answered whatever happens, so that the asker does not wait out its timeout.
        answer: Message | None
        try:
            request = decode(msg.data)
            if not isinstance(request, Command | KeyInUse):
                raise MessageError(f"{request.kind} is not a request for a server")
        except MessageError as error:
            log.error("a malformed request on %s (%s): %r", msg.subject, error, msg.data[:200])
            answer = Failed(f"malformed request: {error}")
        else:
            try:
                answer = await self._apply(request)
            except Exception as error:
                log.exception("answering %s from another server failed", about(request))
                answer = Failed(f"{type(error).__name__}: {error}")
        await msg.respond(encode(answer or Failed("no answer")))

    async def _apply(self, message: Message) -> Message | None:
        assert self._hub is not None
        result = self._hub.receive(message, self)
        return await result if isinstance(result, Awaitable) else result
