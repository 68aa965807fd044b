"""The gRPC server: grpcio's asyncio server over TLS, serving the services of `ironcore.rpc`."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import grpc

from ironcore.access.callers import TokenAuthenticator
from ironcore.access.tokens import AdminTokens
from ironcore.registry.service import DeviceManager
from ironcore.routing.pubsub import PubSub
from ironcore.rpc.device_manager import DeviceManagerService
from ironcore.rpc.publisher import PublisherService
from ironcore.rpc.subscriber import SubscriberService

log = logging.getLogger(__name__)


class GrpcServer:
    """Listens as soon as it is built, so a port that cannot be had is known at start
    (OSError); serves from `serve` until `stop`, then lets in-flight calls finish for up to
    `drain_seconds`."""

    def __init__(
        self,
        manager: DeviceManager,
        pubsub: PubSub,
        tokens: AdminTokens,
        host: str,
        port: int,
        tls: tuple[Path, Path],
        drain_seconds: float,
    ) -> None:
        self.drain_seconds = drain_seconds
        self._stopping = asyncio.Event()
        # Without SO_REUSEPORT (grpc's default sets it), a second server on the same port fails
        # to start instead of silently sharing the calls.
        self._server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                # google-cloud-pubsub pings every 30 s on a StreamingPull that receives
                # nothing; grpc's default (one ping per 5 minutes without data) would answer
                # those with GOAWAY "too_many_pings" and break the stream.
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        authenticator = TokenAuthenticator(tokens)
        self._subscriber = SubscriberService(pubsub, authenticator)
        self._server.add_generic_rpc_handlers(
            (
                DeviceManagerService(manager, authenticator).handler(),
                PublisherService(pubsub, authenticator).handler(),
                self._subscriber.handler(),
            )
        )
        cert, key = tls
        self._next: grpc.ServerCertificateConfiguration | None = None
        credentials = grpc.dynamic_ssl_server_credentials(
            grpc.ssl_server_certificate_configuration([(key.read_bytes(), cert.read_bytes())]),
            # grpc's documentation: the fetcher returns None to keep serving the current one;
            # the stubs say it must return a configuration.
            self._fetch_certificate,  # type: ignore[arg-type]
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as error:
            raise OSError(f"cannot listen for gRPC on {address}: {error}") from None

    async def serve(self) -> None:
        await self._server.start()
        log.info("gRPC API on port %d (TLS)", self.port)
        await self._stopping.wait()
        # Streams never finish on their own: they end first, as UNAVAILABLE, so that clients
        # reconnect rather than take the cancellation at the end of the drain as final.
        self._subscriber.streaming_pull.close()
        await self._server.stop(self.drain_seconds)

    def stop(self) -> None:
        self._stopping.set()

    def reload_tls(self, cert: Path, key: Path) -> None:
        """Serve this certificate chain and key to connections made from now on (SIGHUP); a
        pair that does not load is refused and the previous one kept."""
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
            pair = (key.read_bytes(), cert.read_bytes())
        except (OSError, ssl.SSLError) as error:
            log.error(
                "gRPC: cannot load the TLS certificate %s (%s); still serving the previous one",
                cert,
                error,
            )
            return
        self._next = grpc.ssl_server_certificate_configuration([pair])
        log.info("gRPC: reloaded the TLS certificate %s", cert)

    def _fetch_certificate(self) -> grpc.ServerCertificateConfiguration | None:
        # grpc asks before each handshake; None keeps the current certificate.
        found, self._next = self._next, None
        return found
