"""How a hub reaches other processes: what every transport offers, and the one between the
processes of a server (an `ipc.Channel` over a socket pair). The one between servers is
`cluster.bus`.
"""

from __future__ import annotations

import enum
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from ironcore.bridge.cluster.messages import (
    Answer,
    Delivered,
    Fingerprint,
    Message,
    Metrics,
    about,
)
from ironcore.bridge.ipc import REQUEST_SECONDS, Channel, ChannelClosed, RemoteError, Reply

log = logging.getLogger(__name__)


class Peers(enum.Enum):
    """Who is at the other end of a transport."""

    PRIMARY = "primary"  # a worker's link to its primary: the worker's devices are told there
    WORKER = "worker"  # a primary's link to one of its workers
    SERVERS = "servers"  # the other servers of the database: their claims compete by time


class Transport(Protocol):
    name: str
    peers: Peers

    def send(self, message: Message) -> None:
        """To every peer; dropped (and logged) if they cannot be reached."""

    async def ask(self, holder: str, request: Message) -> Answer | None:
        """The answer of `holder` (a peer of this transport), or None (logged) if it gave
        none in time."""


# What a hub does with a message that came in over `via`: see `ClusterHub.receive`.
Receive = Callable[[Message, Transport], Reply]
ANSWERS = (Delivered, Fingerprint, Metrics)


class ChannelTransport:
    """One end of a socket pair between a primary and one of its workers."""

    def __init__(self, peers: Peers, peer: str, name: str) -> None:
        self.peers = peers
        self.peer = peer  # the origin id of the process at the other end
        self.name = name
        self.channel: Channel | None = None

    async def open(self, sock: socket.socket, receive: Receive) -> None:
        self.channel = await Channel.open(sock, lambda message: receive(message, self), self.name)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def send(self, message: Message) -> None:
        if self.channel is not None:
            self.channel.send(message)

    async def ask(
        self, holder: str, request: Message, seconds: float = REQUEST_SECONDS
    ) -> Answer | None:
        if self.channel is None:
            return None
        try:
            answer = await self.channel.request(request, seconds)
        except (ChannelClosed, RemoteError, TimeoutError) as error:
            log.warning("%s did not answer %s: %s", self.name, about(request), error)
            return None
        if not isinstance(answer, ANSWERS):
            log.warning("%s answered %s with %s", self.name, about(request), answer.kind)
            return None
        return answer
