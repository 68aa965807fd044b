"""The MQTT bridge's listeners: TLS (and, only when asked, plaintext) sockets feeding
`MqttConnection`s, behind a load balancer's PROXY protocol header when asked, a once-a-second
timer sweep, TLS reload, a readiness check and a clean shutdown.

The listeners together hold at most `max_connections` sockets, TLS handshakes and PROXY headers
in progress included: past it a new connection is reset at once (devices retry), counted in
`ironcore_connections_refused_total{listener="mqtt",reason="full"}` and logged at most once per
ten seconds, so that a flood of sockets cannot take the descriptors the process needs for
everything else."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

from ironcore import logs
from ironcore.access.forwarded import TrustedProxies
from ironcore.bridge.mqtt.connection import MqttConnection, Services
from ironcore.bridge.mqtt.proxied import ProxiedConnection
from ironcore.bridge.mqtt.tls import TlsConnection
from ironcore.bridge.proxy_protocol import Address
from ironcore.errors import Code, Unavailable
from ironcore.metrics import REFUSED

log = logging.getLogger(__name__)
_throttled = logs.RateLimited(log)
# How long devices get to receive their goodbye and pending acknowledgements on shutdown.
SHUTDOWN_SECONDS = 5.0
# Thousands of devices reconnect at once after an outage; a deep accept queue absorbs it.
BACKLOG = 4096


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    tls: bool
    # Every connection starts with a PROXY protocol v2 header from a load balancer.
    proxy_protocol: bool = False


class MqttBridge:
    def __init__(
        self,
        services: Services,
        listeners: list[Listener],
        tls_context: ssl.SSLContext | None,
        *,
        max_connections: int,
        reuse_port: bool = False,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        """`reuse_port`: the ports are shared with other processes of this server (SO_REUSEPORT),
        which the kernel spreads new connections over. `max_connections`: sockets this
        process's listeners hold at most. `trusted_proxies`: the balancers whose PROXY header a
        `proxy_protocol` listener reads (default: none, so such a listener serves nobody)."""
        self.services = services
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.listeners = listeners
        self.tls_context = tls_context
        self.reuse_port = reuse_port
        self.max_connections = max_connections
        self._open = 0
        self._servers: list[asyncio.Server] = []
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            if listener.tls and self.tls_context is None:
                raise ValueError("a TLS listener needs a TLS context")
            server = await loop.create_server(
                self._factory(listener),
                listener.host,
                listener.port,
                backlog=BACKLOG,
                reuse_address=True,
                reuse_port=self.reuse_port,
            )
            for sock in server.sockets:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._servers.append(server)
            behind = ", behind a PROXY protocol balancer" if listener.proxy_protocol else ""
            if listener.tls:
                log.info(
                    "MQTT bridge listening on %s:%d (TLS%s)", listener.host, listener.port, behind
                )
            else:
                log.warning(
                    "MQTT bridge listening on %s:%d WITHOUT TLS%s: device JWTs cross the network "
                    "in clear text; use this only for local testing",
                    listener.host,
                    listener.port,
                    behind,
                )
        self._ticker = asyncio.create_task(self._tick())

    def _factory(self, listener: Listener) -> Callable[[], asyncio.Protocol]:
        """What the event loop makes each accepted socket's protocol with: refused past the
        cap, else counted until it is gone (behind the PROXY header reader when asked)."""
        serve = self._tls_connection if listener.tls else self._connection

        def accept() -> asyncio.Protocol:
            if self._open >= self.max_connections:
                return _Refused(self.max_connections)
            self._open += 1
            if listener.proxy_protocol:
                return ProxiedConnection(serve, self.trusted_proxies, lost_unserved=self._closed)
            return serve(None)

        return accept

    def _connection(self, peer: Address | None) -> asyncio.Protocol:
        return _Counted(self.services, self._closed, peer)

    def _tls_connection(self, peer: Address | None) -> asyncio.Protocol:
        assert self.tls_context is not None
        return _CountedTls(
            self.tls_context, partial(MqttConnection, self.services), self._closed, peer
        )

    def _closed(self) -> None:
        self._open -= 1

    @property
    def ports(self) -> list[int]:
        return [sock.getsockname()[1] for server in self._servers for sock in server.sockets]

    def bound(self) -> list[Listener]:
        """The listeners with the ports they got (a port 0 was chosen by the system)."""
        return [
            Listener(
                listener.host,
                server.sockets[0].getsockname()[1],
                listener.tls,
                listener.proxy_protocol,
            )
            for listener, server in zip(self.listeners, self._servers, strict=True)
        ]

    async def listening(self) -> None:
        """Return when every listener accepts connections (a readiness check); Unavailable
        naming those that do not."""
        closed = [
            f"{listener.host}:{listener.port}"
            for listener, server in itertools.zip_longest(self.listeners, self._servers)
            if server is None or not server.is_serving()
        ]
        if closed:
            raise Unavailable(f"MQTT listener not accepting connections: {', '.join(closed)}")

    def reload_tls(self, cert_path: Path, key_path: Path) -> None:
        """New handshakes use the new certificate; connections already open keep theirs.

        The pair is tried on a scratch context first: a failed load into the live context can
        leave it half-replaced (a new certificate with the old key), and then every new
        handshake fails. A bad pair is logged and the previous one kept.
        """
        if self.tls_context is None:
            return
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
        except OSError as error:  # ssl.SSLError is an OSError
            log.error(
                "could not reload the MQTT bridge TLS certificate from %s and %s (%s); "
                "still serving the previous one",
                cert_path,
                key_path,
                error,
            )
            return
        self.tls_context.load_cert_chain(cert_path, key_path)
        log.info("reloaded the MQTT bridge TLS certificate from %s", cert_path)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for connection in list(self.services.connections):
                connection.tick(now)

    async def stop(self) -> None:
        """Stop accepting, say goodbye to every device, and let pending work finish. What the
        connections left to the device channel's bookkeeping is written when the process
        closes it, after this."""
        for server in self._servers:
            server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        connections = list(self.services.connections)
        for connection in connections:
            connection.session.close(
                "mqtt: SERVER: The server is shutting down.", Code.UNAVAILABLE, "shutdown"
            )
            connection.tick(time.time())
        pumps = [c.finished for c in connections if c.finished is not None]
        if pumps:
            await asyncio.wait(pumps, timeout=SHUTDOWN_SECONDS)
        for server in self._servers:
            await server.wait_closed()


class _Counted(MqttConnection):
    """A plaintext connection that tells the bridge when it is gone."""

    def __init__(
        self, services: Services, closed: Callable[[], None], peer: Address | None
    ) -> None:
        super().__init__(services, peer)
        self._on_closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._on_closed()


class _CountedTls(TlsConnection):
    """A TLS connection (its handshake included) that tells the bridge when it is gone."""

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        closed: Callable[[], None],
        peer: Address | None,
    ) -> None:
        super().__init__(context, app_factory, peer)
        self._on_closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._on_closed()


class _Refused(asyncio.Protocol):
    """A connection past the cap: reset as soon as it is accepted."""

    def __init__(self, cap: int) -> None:
        self.cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        REFUSED.labels("mqtt", "full").inc()
        _throttled.warning(
            "full",
            "MQTT: refused a connection from %s: this process holds %d, its cap",
            transport.get_extra_info("peername"),
            self.cap,
        )
        cast(asyncio.Transport, transport).abort()
