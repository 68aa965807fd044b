"""The gRPC server: grpcio's asyncio server serving the services of `ironcore.rpc`, either as
the gRPC API (over TLS, every service, callers named by their bearer tokens) or as the Pub/Sub
emulator port (plaintext, Publisher and Subscriber only, one fixed caller).

What one port holds is bounded, so that a client cannot open connections or streams until
the process runs out of file descriptors or memory (`GrpcLimits`, docs/operations.md):
- connections: `grpc.max_allowed_incoming_connections`, the HTTP listener's share of the
  process's open-file budget (`runtime.process.Budget`); grpc closes a connection beyond it
  as soon as it is accepted, which the client sees as UNAVAILABLE and retries;
- calls at once, streams included: `maximum_concurrent_rpcs`; a call beyond it is answered
  RESOURCE_EXHAUSTED at once, and the calls and streams already running go on;
- streams per connection: HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS (a client queues more);
- a request's size: 10 MiB, Pub/Sub's largest publish request (grpc's default is 4 MiB);
- idle and dead connections: closed after `IDLE_SECONDS` without a call, and after a
  keep-alive ping unanswered for `PING_TIMEOUT_SECONDS`, so a vanished client's descriptor and
  streams are freed. Connections are not recycled by age: a StreamingPull lives as long as its
  subscriber.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from ironcore.access.callers import Authenticator
from ironcore.access.forwarded import TrustedProxies
from ironcore.registry.service import DeviceManager
from ironcore.registry.store.audit import AuditStore
from ironcore.routing.pubsub import PubSub
from ironcore.rpc.device_manager import DeviceManagerService
from ironcore.rpc.iam_policy import IAMPolicyService
from ironcore.rpc.metrics import Counted
from ironcore.rpc.peers import Addressed
from ironcore.rpc.publisher import PublisherService
from ironcore.rpc.subscriber import SubscriberService

log = logging.getLogger(__name__)

STREAMS_PER_CONNECTION = 100
MAX_REQUEST_BYTES = 10 << 20
IDLE_SECONDS = 600
PING_SECONDS = 120
PING_TIMEOUT_SECONDS = 20


@dataclass(frozen=True)
class GrpcLimits:
    """What one gRPC port holds at most: connections, and calls at once (streams included)."""

    max_connections: int
    max_concurrent_rpcs: int

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_connection_idle_ms", IDLE_SECONDS * 1000),
            ("grpc.keepalive_time_ms", PING_SECONDS * 1000),
            ("grpc.keepalive_timeout_ms", PING_TIMEOUT_SECONDS * 1000),
        ]


class GrpcServer:
    """Listens as soon as it is built, so a port that cannot be had is known at start
    (OSError); serves from `serve` until `stop`, then lets in-flight calls finish for up to
    `drain_seconds`.

    Publisher and Subscriber are always served, DeviceManager and IAMPolicy (of Pub/Sub
    topics and subscriptions) with a `manager`; each call acts
    as the caller `authenticator` finds for it, from the client address `rpc.peers` finds
    (behind `trusted_proxies`, the one they forward). With `tls` (certificate chain, key) it
    serves TLS, without it plaintext. With `audit_log`, refused calls are recorded there (a
    manager's own audit log by default); changes are recorded wherever they are written."""

    def __init__(
        self,
        pubsub: PubSub,
        authenticator: Authenticator,
        host: str,
        port: int,
        tls: tuple[Path, Path] | None,
        drain_seconds: float,
        limits: GrpcLimits,
        manager: DeviceManager | None = None,
        name: str = "gRPC API",
        trusted_proxies: TrustedProxies | None = None,
        audit_log: AuditStore | None = None,
    ) -> None:
        self.drain_seconds = drain_seconds
        self.name = name
        self.tls = tls is not None
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
                *limits.options(),
            ],
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        )
        if audit_log is None and manager is not None:
            audit_log = manager.store.audit
        self._subscriber = SubscriberService(pubsub, authenticator, audit_log)
        handlers = [
            PublisherService(pubsub, authenticator, audit_log).handler(),
            self._subscriber.handler(),
        ]
        if manager is not None:
            # The gRPC API port; the emulator port (no manager) serves no IAM, as Google's.
            handlers.append(DeviceManagerService(manager, authenticator).handler())
            handlers.append(IAMPolicyService(pubsub, authenticator, audit_log).handler())
        self._server.add_generic_rpc_handlers(
            [Addressed(Counted(handlers), trusted_proxies or TrustedProxies())]
        )
        self._next: grpc.ServerCertificateConfiguration | None = None
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if tls is None:
                self.port = self._server.add_insecure_port(address)
            else:
                cert, key = tls
                credentials = grpc.dynamic_ssl_server_credentials(
                    grpc.ssl_server_certificate_configuration(
                        [(key.read_bytes(), cert.read_bytes())]
                    ),
                    # grpc's documentation: the fetcher returns None to keep serving the
                    # current one; the stubs say it must return a configuration.
                    self._fetch_certificate,  # type: ignore[arg-type]
                )
                self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as error:
            raise OSError(f"cannot listen for gRPC on {address}: {error}") from None

    async def serve(self) -> None:
        await self._server.start()
        log.info("%s on port %d (%s)", self.name, self.port, "TLS" if self.tls else "plaintext")
        await self._stopping.wait()
        # Streams never finish on their own: they end first, as UNAVAILABLE, so that clients
        # reconnect rather than take the cancellation at the end of the drain as final.
        self._subscriber.streaming_pull.close()
        await self._server.stop(self.drain_seconds)

    def stop(self) -> None:
        self._stopping.set()

    def reload_tls(self, cert: Path, key: Path) -> None:
        """Serve this certificate chain and key to connections made from now on (SIGHUP); a
        pair that does not load is refused and the previous one kept. Only for a server built
        with `tls`."""
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
