"""Separate ironcore servers sharing one database, joined over NATS (`--bus nats://…`): the
transport between the primaries' hubs.

The servers of one database (the namespace is a digest of the database URL and schema) share
two kinds of subjects, both carrying `cluster.messages` as `encode` writes them:

- `ironcore.hub.{namespace}.all`: what every server must hear, each message naming its sender
  (`origin`, the server id): a device connected (with the time it did, so that of two
  near-simultaneous connections the newer wins everywhere) or gone; a config, device, registry
  or key rotation changed; a device's cached context to forget.
- `ironcore.hub.{namespace}.server.{id}`: requests for one server (deliver a command to a device
  it serves, name the key a device it serves authenticated with), answered on the reply subject.

A server skips what it sent itself. What it hears it applies as its own (cached contexts
forgotten, connections checked again) but does not pass back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from ironcore.bridge.cluster.messages import (
    Answer,
    Command,
    Failed,
    KeyInUse,
    Message,
    MessageError,
    about,
    decode,
    encode,
)
from ironcore.bridge.cluster.transport import ANSWERS, Peers, Receive
from ironcore.routing.nats import reachable

log = logging.getLogger(__name__)
# How long a server waits for another to deliver a command or name a key.
REQUEST_SECONDS = 5.0


def namespace(database_url: str, schema: str) -> str:
    """The servers sharing this database (and schema) share subjects; others never meet."""
    return hashlib.sha256(f"{database_url}\n{schema}".encode()).hexdigest()[:16]


class Bus:
    peers = Peers.SERVERS

    def __init__(self, url: str, space: str, server_id: str) -> None:
        self.url = url
        self.server_id = server_id
        self.name = "the bus"
        self.all_subject = f"ironcore.hub.{space}.all"
        self.server_prefix = f"ironcore.hub.{space}.server."
        self._client: Client | None = None
        self._receive: Receive | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self, receive: Receive) -> None:
        """Join the other servers; what they say goes to `receive` (the hub's)."""
        self._receive = receive
        await reachable(self.url)
        self._client = await nats.connect(
            self.url, name=f"ironcore-hub-{self.server_id}", max_reconnect_attempts=-1
        )
        await self._client.subscribe(self.all_subject, cb=self._heard)
        await self._client.subscribe(self.server_prefix + self.server_id, cb=self._asked)
        await self._client.flush()  # subscribed at the server before anything is sent
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

    # The hub's transport

    def send(self, message: Message) -> None:
        if self._client is None or not self._client.is_connected:
            log.warning("NATS is not connected: the other servers did not hear %s", about(message))
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
        try:
            await self._apply(message)
        except Exception:  # one bad message must not stop the subscription
            log.exception("applying %s from server %s failed", about(message), origin)

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
        assert self._receive is not None
        result = self._receive(message, self)
        return await result if isinstance(result, Awaitable) else result
