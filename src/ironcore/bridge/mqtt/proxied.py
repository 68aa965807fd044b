"""A listener behind a load balancer (`--mqtt-proxy-protocol`): every connection starts with a
PROXY protocol v2 header (bridge/proxy_protocol.py) naming the client's real address.

`ProxiedConnection` is the protocol the event loop sees until that header has arrived; then it
hands the transport to the connection the listener serves (TLS or plaintext MQTT), created
with the client's address, and steps out of the way (`set_protocol`), so it costs nothing once
the header is read. A connection that does not start with a valid header, or does not finish it
in time, is closed with one log line naming the problem: a device reaching the port directly,
or a balancer without `send-proxy-v2`. So is one from a peer that is not a trusted proxy
(`--trusted-proxies`), before anything it sends is read: whoever reaches the port directly
could otherwise name any address it likes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from ironcore.access.forwarded import TrustedProxies
from ironcore.bridge.proxy_protocol import Address, ProxyHeaderError, parse

log = logging.getLogger(__name__)
# The balancer sends its header at once when it connects; a client that is not a balancer and
# waits for the server to speak first is dropped after this long.
HEADER_SECONDS = 10.0


class ProxiedConnection(asyncio.Protocol):
    def __init__(
        self,
        app_factory: Callable[[Address | None], asyncio.Protocol],
        trusted: TrustedProxies,
        lost_unserved: Callable[[], None] = lambda: None,
    ) -> None:
        """`app_factory(address)`: the connection to hand over to, for the client at `address`
        (None: the socket's own peer, for the balancer's health checks). `trusted`: the peers
        whose header is read; any other is closed. `lost_unserved`: called when the connection
        ends before it was handed over (the listener counts its sockets)."""
        self._app_factory = app_factory
        self._trusted = trusted
        self._lost_unserved = lost_unserved
        self._transport: asyncio.Transport | None = None
        self._received = b""
        self._timeout: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = Address.of(transport.get_extra_info("peername"))
        if peer is None or peer.host not in self._trusted:
            self._refuse("a PROXY protocol header is read only from --trusted-proxies")
            return
        self._timeout = asyncio.get_running_loop().call_later(HEADER_SECONDS, self._expired)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._received += data
        try:
            header = parse(self._received)
        except ProxyHeaderError as error:
            self._refuse(str(error))
            return
        if header is None:
            return
        self._cancel_timeout()
        app = self._app_factory(header.source)
        transport.set_protocol(app)
        app.connection_made(transport)
        rest, self._received = self._received[header.length :], b""
        if rest and not transport.is_closing():
            app.data_received(rest)

    def eof_received(self) -> bool:
        if self._received:
            self._refuse("the connection was closed before its PROXY protocol header was complete")
        else:
            # Nothing sent at all: a TCP health check (HAProxy's plain `check`), not worth a line.
            self._cancel_timeout()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # Once handed over, the loop tells the connection served instead of this one.
        self._cancel_timeout()
        self._lost_unserved()

    def _expired(self) -> None:
        self._timeout = None
        self._refuse(f"no complete PROXY protocol header within {HEADER_SECONDS:g} s")

    def _refuse(self, why: str) -> None:
        self._cancel_timeout()
        if self._transport is None or self._transport.is_closing():
            return
        log.warning(
            "closed the MQTT connection from %s: %s",
            Address.of(self._transport.get_extra_info("peername")),
            why,
        )
        self._transport.abort()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
