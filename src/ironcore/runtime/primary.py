"""`ironcore serve`: the primary process of a server, built from its settings and run until
SIGTERM or SIGINT.

It holds the parts every process has (`parts.Storage`, `parts.DeviceSide`) and a primary's
`parts.Services`, and runs over them: the MQTT bridge, the MQTT workers (`--mqtt-workers`), the
bus to the other servers (`--bus`), the adapters (`adapters`: the admin API, the gRPC API, the
Pub/Sub emulator port and the HTTP device bridge; the console goes there too), and the
background tasks (event retention, firmware rollouts, push subscriptions). SIGTERM and SIGINT
drain it; SIGHUP reloads the TLS certificate of the bridges, the gRPC API and the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Protocol

from fastapi import FastAPI
from nats.errors import Error as NatsError

from ironcore import logs
from ironcore.access.assertions import service_audiences
from ironcore.access.backoff import Throttled
from ironcore.access.callers import PUBSUB_EMULATOR, FixedCaller, TokenAuthenticator
from ironcore.access.forwarded import TrustedProxies
from ironcore.access.roles import Caller
from ironcore.access.service_accounts import ServiceAccounts, service_account_caller
from ironcore.access.tokens import LAST_USED_SECONDS, AdminTokens
from ironcore.api.app import create_app
from ironcore.api.ops import ReadinessCheck
from ironcore.bridge import firmware as firmware_bridge
from ironcore.bridge import http as http_bridge
from ironcore.bridge.channel import DeviceChannel
from ironcore.bridge.cluster.bus import Bus, namespace
from ironcore.bridge.cluster.hub import new_server_id
from ironcore.bridge.http import DeviceBridge
from ironcore.bridge.mqtt.connection import Services as MqttServices
from ironcore.bridge.mqtt.server import MqttBridge
from ironcore.bridge.workers import Workers
from ironcore.errors import IronCoreError
from ironcore.firmware.rollout import Firmware
from ironcore.metrics import Snapshot
from ironcore.registry.store import Store
from ironcore.registry.store.audit import AuditStore
from ironcore.routing.pubsub import PubSub
from ironcore.routing.push import PushDelivery
from ironcore.rpc.server import GrpcLimits, GrpcServer
from ironcore.runtime import readiness
from ironcore.runtime.http import Limits, http_server
from ironcore.runtime.http import Server as HttpServer
from ironcore.runtime.parts import (
    DeviceSide,
    Services,
    Storage,
    close,
    device_side,
    listeners,
    services,
)
from ironcore.runtime.process import Budget, CannotStart, loop_factory, raise_open_files, tune_gc
from ironcore.runtime.tls import (
    database_sealer,
    join_cluster,
    shared_certificates,
    stay_in_cluster,
    tls_context,
    tls_files,
)
from ironcore.settings import Settings

log = logging.getLogger("ironcore")
# Time an in-flight request gets to finish after SIGTERM before its connection is cut.
DRAIN_SECONDS = 30
# How often running firmware rollouts are moved on (advanced or halted) without a status call.
ROLLOUT_EVALUATION_SECONDS = 5
# What the primary runs an MQTT worker with (`runtime/worker.py`); its arguments follow.
WORKER_PROGRAM = (sys.executable, "-m", "ironcore.runtime.worker")
# The HTTP device bridge's own listener (`--device-http-port`), in metrics and logs.
DEVICE_HTTP = "device_http"
# The data directory's mode: its owner's alone.
DATA_DIR_MODE = 0o700

WorkerMetrics = Callable[[], Awaitable[list[Snapshot]]]


class Adapter(Protocol):
    """A server the primary runs beside its MQTT bridge (the admin API's HTTP servers, the
    gRPC API; the console when it comes)."""

    async def serve(self) -> None:
        """Serve until `stop`, then let what is in flight finish (up to DRAIN_SECONDS)."""

    def stop(self) -> None:
        """Stop accepting and drain; `serve` returns once drained."""


def run(settings: Settings) -> None:
    """Run the primary until it is stopped; exit status 1 if it cannot start."""
    logs.configure(settings.log_format, settings.log_level)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(settings))
    except CannotStart as error:
        log.error("ironcore cannot start: %s", error)
        raise SystemExit(1) from None


async def serve(settings: Settings) -> None:
    """Build the primary from `settings`, serve until SIGTERM or SIGINT, then drain and close.
    The data directory (and, in `tls_files` or `join_cluster`, the bridge's certificates) is
    made here, at start."""
    before, open_files = raise_open_files()
    # Each gRPC port gets an HTTP listener's share, which it enforces (`rpc.server.GrpcLimits`).
    ports = (
        1
        + bool(settings.device_http_port)
        + bool(settings.grpc_port)
        + bool(settings.pubsub_emulator_port)
    )
    budget = Budget.of(settings, open_files, http_listeners=ports)
    _log_budget(before, budget)
    make_data_dir(settings.data_dir)
    private_key_files(settings)
    # Before anything is opened: an API that may not be served plainly stops the start here.
    api_tls = api_tls_files(settings)
    storage = await Storage.open(settings)
    devices: DeviceSide | None = None
    bridge: MqttBridge | None = None
    workers: Workers | None = None
    bus: Bus | None = None
    presence: asyncio.Task[None] | None = None
    try:
        if storage.sink is not None:
            await _start_nats(storage.sink.start, "--nats-url", settings.nats_url)
        server_id = new_server_id()
        if settings.bus_url:
            # Built before the hub, which sends over it; it hears for the hub once started
            # with the hub's `receive`, below.
            space = namespace(settings.effective_database_url, settings.database_schema)
            bus = Bus(settings.bus_url, space, server_id, settings.bus_lease_seconds)
        devices = device_side(storage, server_id, [bus] if bus is not None else [])
        listening = listeners(settings)
        if settings.cluster and (
            any(listener.tls for listener in listening) or serves_bridge_certificate(settings)
        ):
            anchor = await join_cluster(settings, storage.store, server_id)
            presence = asyncio.create_task(stay_in_cluster(storage.store, server_id, anchor))
        # After joining: a cluster's first server made the secret key there, or brought its own.
        sealer = await database_sealer(settings, storage.store)
        built = services(storage, devices, settings.data_dir / "firmware", sealer)
        sealed = await built.pubsub.seal_push_secrets()
        if sealed:
            log.warning("sealed %d push subscription secrets stored in clear", sealed)
        await ensure_admin_token(built.tokens, settings)
        await devices.revoked.refresh()
        if bus is not None:
            await _start_nats(partial(bus.start, devices.hub), "--bus", settings.bus_url)
        bridge = MqttBridge(
            MqttServices(devices.channel, devices.hub),
            listening,
            tls_context(settings, listening),
            reuse_port=settings.mqtt_workers > 1,
            max_connections=budget.mqtt,
            trusted_proxies=TrustedProxies(settings.trusted_proxies),
        )
        await bridge.start()
        if settings.mqtt_workers > 1:
            if listening:
                workers = Workers(
                    WORKER_PROGRAM,
                    settings.to_json(),
                    devices.hub,
                    bridge.bound(),
                    settings.mqtt_workers,
                )
                await workers.start()
            else:
                log.warning(
                    "--mqtt-workers %d: no MQTT port is open, so no worker is started",
                    settings.mqtt_workers,
                )
        tune_gc()
        servers = adapters(
            settings,
            built,
            devices.channel,
            workers.metrics if workers is not None else None,
            readiness.checks(settings, storage.store, bridge, bus),
            budget,
            api_tls,
            emulator_caller=await pubsub_emulator_caller(settings, built),
        )
        await _run(settings, servers, built, bridge, workers)
    finally:
        if workers is not None:
            await workers.stop()
        if presence is not None:
            presence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await presence
        await close(bridge, devices, storage)
        if bus is not None:
            await bus.close()
    log.info("ironcore stopped")


def adapters(
    settings: Settings,
    services: Services,
    channel: DeviceChannel,
    worker_metrics: WorkerMetrics | None,
    ready: Mapping[str, ReadinessCheck],
    budget: Budget,
    api_tls: tuple[Path, Path] | None,
    emulator_caller: Caller = PUBSUB_EMULATOR,
) -> list[Adapter]:
    """The servers the primary runs beside its MQTT bridge, over the services it built and
    the device channel its MQTT bridge shares: the admin API (over TLS with `api_tls`, what
    `api_tls_files` says),
    and the HTTP device bridge on `--device-http-port` over TLS with the bridges' certificate
    (or in front of the API with `--device-http-port 0`), each answering /readyz with the
    `ready` checks and holding at most `budget.http` connections; the gRPC API on
    `--grpc-port`, over TLS with the MQTT bridge's certificate; and the Pub/Sub emulator port
    on `--pubsub-emulator-port`. The REST and gRPC APIs share one authenticator, so failed
    authentication backs off per client address across both (`access.backoff`). A new
    adapter is constructed here."""
    device_bridge = DeviceBridge(channel)
    # One for every adapter: failures back off per client address whatever the wire.
    authenticator = Throttled(
        TokenAuthenticator(
            services.tokens,
            ServiceAccounts(services.tokens.store, services.tokens.clock),
            service_audiences(settings.public_url),
            # Other servers may share a PostgreSQL database: revocation waits out their caches.
            shared=not services.tokens.store.is_sqlite,
        )
    )
    limits = Limits(
        budget.http,
        settings.http_header_timeout,
        settings.http_body_timeout,
        settings.http_body_min_rate,
    )
    if os.environ.get("FORWARDED_ALLOW_IPS"):
        log.warning(
            "FORWARDED_ALLOW_IPS is ignored: the proxies whose X-Forwarded-For is believed are "
            "--trusted-proxies (IRONCORE_TRUSTED_PROXIES), %s",
            ",".join(settings.trusted_proxies) or "none",
        )
    serving = partial(
        http_server,
        limits=limits,
        idle_timeout=settings.http_idle_timeout,
        drain=DRAIN_SECONDS,
        trusted_proxies=settings.trusted_proxies,
    )
    found: list[Adapter] = []
    if settings.device_http_port:
        app = http_app(services, device_bridge, worker_metrics, authenticator, ready, admin=False)
        device_tls = None if settings.insecure_device_http else tls_files(settings)
        found.append(
            serving(
                app,
                settings.device_http_host,
                settings.device_http_port,
                DEVICE_HTTP,
                tls=device_tls,
            )
        )
        log.log(
            logging.WARNING if device_tls is None else logging.INFO,
            "HTTP device bridge on %s://%s:%d%s",
            "http" if device_tls is None else "https",
            settings.device_http_host,
            settings.device_http_port,
            " (--insecure-device-http: device JWTs cross the network in clear)"
            if device_tls is None
            else "",
        )
    admin_bridge = None if settings.device_http_port else device_bridge
    app = http_app(
        services,
        admin_bridge,
        worker_metrics,
        authenticator,
        ready,
        public_url=settings.public_url,
    )
    found.append(serving(app, settings.api_host, settings.api_port, "api", tls=api_tls))
    try:
        if settings.grpc_port:
            found.append(
                GrpcServer(
                    services.pubsub,
                    authenticator,
                    settings.api_host,
                    settings.grpc_port,
                    tls_files(settings),
                    DRAIN_SECONDS,
                    grpc_limits(settings, budget),
                    manager=services.manager,
                    trusted_proxies=TrustedProxies(settings.trusted_proxies),
                )
            )
        if settings.pubsub_emulator_port:
            found.append(
                pubsub_emulator(
                    settings,
                    services.pubsub,
                    grpc_limits(settings, budget),
                    emulator_caller,
                    services.manager.store.audit,
                )
            )
    except OSError as error:
        raise CannotStart(str(error)) from None
    return found


def grpc_limits(settings: Settings, budget: Budget) -> GrpcLimits:
    return GrpcLimits(budget.http, settings.grpc_max_concurrent_rpcs)


async def pubsub_emulator_caller(settings: Settings, services: Services) -> Caller:
    """Whom the Pub/Sub emulator port's calls act as: the service account
    `--pubsub-emulator-as` names (looked up once, at start; CannotStart if there is none),
    else `PUBSUB_EMULATOR`."""
    if not (settings.pubsub_emulator_port and settings.pubsub_emulator_as):
        return PUBSUB_EMULATOR
    accounts = ServiceAccounts(services.tokens.store, services.tokens.clock)
    try:
        account = await accounts.find(settings.pubsub_emulator_as)
    except IronCoreError as error:
        raise CannotStart(f"--pubsub-emulator-as: {error.message}") from None
    log.info("the Pub/Sub emulator port's calls act as serviceAccount:%s", account.email)
    return service_account_caller(account)


def serves_bridge_certificate(settings: Settings) -> bool:
    """Whether an adapter besides the MQTT bridge presents the bridges' certificate
    (`tls_files`): the gRPC API, the HTTP device bridge over TLS, the API with `--api-tls`. In
    a cluster those files are the ones joining it writes, with or without MQTT."""
    return bool(
        settings.grpc_port
        or (settings.device_http_port and not settings.insecure_device_http)
        or (settings.api_tls and not (settings.api_cert and settings.api_key))
    )


def api_tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """The admin API's certificate chain and key: the operator's (`--api-cert/--api-key`), the
    bridges' (`--api-tls`), or None for plain HTTP, which only loopback gets unless
    `--insecure-api` says otherwise (CannotStart then; a warning at every start with it)."""
    if settings.api_cert is not None and settings.api_key is not None:
        return settings.api_cert, settings.api_key
    if settings.api_tls:
        return tls_files(settings)
    if is_loopback(settings.api_host):
        if settings.insecure_api:
            log.warning("--insecure-api: the admin API is plain HTTP (on loopback only)")
        return None
    if not settings.insecure_api:
        raise CannotStart(
            f"--api-host {settings.api_host} is not a loopback address, and admin tokens must "
            "not cross a network in clear: serve the API over TLS (--api-tls with the local "
            "CA's server certificate, or --api-cert/--api-key with your own), or give "
            "--insecure-api to serve plain HTTP anyway"
        )
    log.warning(
        "--insecure-api: the admin API on %s:%d is plain HTTP; admin tokens and device JWTs "
        "sent to it cross the network in clear",
        settings.api_host,
        settings.api_port,
    )
    return None


def pubsub_emulator(
    settings: Settings,
    pubsub: PubSub,
    limits: GrpcLimits,
    caller: Caller = PUBSUB_EMULATOR,
    audit_log: AuditStore | None = None,
) -> GrpcServer:
    """The Pub/Sub emulator port: Publisher and Subscriber in plaintext, for clients that
    PUBSUB_EMULATOR_HOST redirects. They send no credentials, so every call acts as `caller`
    (`PUBSUB_EMULATOR`: publish and consume, read, create subscriptions; or the service
    account of `--pubsub-emulator-as`), and anyone who can reach the port may do that: a host
    other than loopback is warned about. With `audit_log`, its refusals are recorded there."""
    host = settings.pubsub_emulator_host
    if not is_loopback(host):
        log.warning(
            "--pubsub-emulator-host %s is not a loopback address: anyone who reaches port %d "
            "may publish and consume without authenticating",
            host,
            settings.pubsub_emulator_port,
        )
    return GrpcServer(
        pubsub,
        FixedCaller(caller),
        host,
        settings.pubsub_emulator_port,
        None,
        DRAIN_SECONDS,
        limits,
        name="Pub/Sub emulator API",
        audit_log=audit_log,
    )


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: `localhost` or a loopback address (a
    hostname other than `localhost` may resolve to anything, so it is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _log_budget(before: int, budget: Budget) -> None:
    if budget.open_files > before:
        log.info("raised the open-file limit from %d to %d", before, budget.open_files)
    else:
        log.info("open-file limit: %d", budget.open_files)
    log.log(
        logging.WARNING if budget.overcommitted else logging.INFO,
        "connections: at most %d per HTTP listener and %d for MQTT, %d files kept in reserve%s",
        budget.http,
        budget.mqtt,
        budget.reserve,
        " (the caps given add up to more than the open-file limit less the reserve)"
        if budget.overcommitted
        else "",
    )


def http_app(
    services: Services,
    device_bridge: DeviceBridge | None,
    worker_metrics: WorkerMetrics | None,
    authenticator: Throttled | None = None,
    ready: Mapping[str, ReadinessCheck] | None = None,
    admin: bool = True,
    public_url: str = "",
) -> FastAPI:
    """The admin API (`api.app.create_app`) and, with `device_bridge`, the HTTP device bridge
    and firmware downloads served by the same app, in front of the API's middleware."""
    app = create_app(
        services.manager,
        services.tokens,
        services.pubsub,
        services.revocations,
        services.rotations,
        services.firmware,
        admin=admin,
        worker_metrics=worker_metrics,
        self_authenticating=http_bridge.is_device_path,
        readiness=ready,
        public_url=public_url,
        authenticator=authenticator,
    )
    if device_bridge is not None:
        app.include_router(firmware_bridge.router(device_bridge, services.firmware))
        # Outermost: device requests skip the admin API's middleware and routing; their
        # errors are answered by the API's own handlers.
        app.add_middleware(
            http_bridge.DeviceRoutes, bridge=device_bridge, handlers=app.exception_handlers
        )
    return app


def make_data_dir(path: Path) -> None:
    """Make the data directory private to the server's user (0700): it holds the database,
    the local CA's key and the first admin token. One made before with looser access is
    tightened, and the log says so."""
    path.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != DATA_DIR_MODE:
        path.chmod(DATA_DIR_MODE)
        if mode & 0o077:
            log.warning("data directory %s was mode %04o; made it %04o", path, mode, DATA_DIR_MODE)


def private_key_files(settings: Settings) -> None:
    """The secret key, the first admin token and the local CA's and server's private keys in
    the data directory readable by the server's user alone (0600): one that group or others
    may read is tightened, and the log says so. Key files the operator named elsewhere are
    theirs to keep: a warning only."""
    ours = [
        settings.data_dir / "secret-key",
        settings.admin_token_file,
        settings.tls_dir / "ca.key",
        settings.tls_dir / "server.key",
    ]
    for path in (*ours, settings.secret_key_file, settings.tls_key, settings.api_key):
        if path is None:
            continue
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        if path in ours:
            path.chmod(mode & 0o700)
            log.warning("%s was mode %04o; made it %04o", path, mode, mode & 0o700)
        else:
            log.warning("%s is mode %04o: others than its owner may read a private key", path, mode)


async def ensure_admin_token(tokens: AdminTokens, settings: Settings) -> None:
    """On an empty database, create the first owner token and leave it in the data directory."""
    if await tokens.count():
        return
    token = await tokens.create("owner", "created by the first `ironcore serve`")
    path = settings.admin_token_file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    log.warning("created the first owner admin token in %s (mode 0600)", path)


async def _run(
    settings: Settings,
    servers: list[Adapter],
    services: Services,
    bridge: MqttBridge,
    workers: Workers | None,
) -> None:
    """Serve until SIGTERM or SIGINT, with the background tasks; SIGHUP reloads TLS."""
    loop = asyncio.get_running_loop()
    reloading: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = asyncio.create_task(_reload(settings, services, bridge, workers, servers))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)

    def stop() -> None:
        if workers is not None:
            workers.stopping()
        for server in servers:
            server.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    api = next((server for server in servers if isinstance(server, HttpServer)), None)
    log.info(
        "ironcore serving the admin API on %s://%s:%d (database: %s)",
        "https" if api is not None and api.tls else "http",
        settings.api_host,
        settings.api_port,
        services.manager.store.engine.dialect.name,
    )
    retention = asyncio.create_task(_expire_events(services.pubsub, settings.event_retention_days))
    rollouts = asyncio.create_task(_evaluate_rollouts(services.firmware))
    audit_retention = asyncio.create_task(
        _expire_audit(services.manager.store, settings.audit_retention_days)
    )
    push = PushDelivery(services.pubsub)
    push.start()
    token_uses = asyncio.create_task(_write_token_uses(services.tokens))
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        retention.cancel()
        rollouts.cancel()
        token_uses.cancel()
        audit_retention.cancel()
        await push.stop()
        await _flush_token_uses(services.tokens)


async def _reload(
    settings: Settings,
    services: Services,
    bridge: MqttBridge,
    workers: Workers | None,
    servers: list[Adapter],
) -> None:
    """The bridges' and the gRPC API's certificate loaded again: in a cluster using the
    generated CA, first the shared server certificate as it now is in the database (another
    server may have issued it again for a new hostname)."""
    if settings.cluster and settings.tls_cert is None and bridge.tls_context is not None:
        try:
            await shared_certificates(settings, services.manager.store)
        except Exception as error:  # the files of the last start keep serving
            log.error("could not read the cluster's bridge certificate: %s", error)
            return
    files = tls_files(settings)
    bridge.reload_tls(*files)
    if workers is not None:
        workers.reload_tls()
    for server in servers:
        if isinstance(server, GrpcServer) and server.tls:
            server.reload_tls(*files)
        elif isinstance(server, HttpServer) and server.tls:
            api = api_tls_files(settings) if server.name != DEVICE_HTTP else None
            server.reload_tls(*(api or files))


async def _expire_events(pubsub: PubSub, days: float) -> None:
    """Delete events older than the retention period, once an hour."""
    while True:
        before = int((time.time() - days * 86400) * 1_000_000)
        try:
            expired = await pubsub.store.expire(before)
            if expired:
                log.info("deleted %d events older than %g days", expired, days)
        except Exception as error:  # retention is retried next hour; serving goes on
            log.warning("could not delete old events: %s", error)
        await asyncio.sleep(3600)


async def _write_token_uses(tokens: AdminTokens) -> None:
    """Write when admin tokens were last used, every LAST_USED_SECONDS."""
    while True:
        await asyncio.sleep(LAST_USED_SECONDS)
        await _flush_token_uses(tokens)


async def _flush_token_uses(tokens: AdminTokens) -> None:
    try:
        await tokens.flush_uses()
    except Exception as error:  # kept for the next flush; serving goes on
        log.warning("could not record when admin tokens were last used: %s", error)


async def _expire_audit(store: Store, days: float) -> None:
    """Delete audit log entries older than the retention period, once an hour: the only
    delete of the audit log."""
    while True:
        before = int((time.time() - days * 86400) * 1_000_000)
        try:
            expired = await store.audit.delete_before(before)
            if expired:
                log.info("deleted %d audit log entries older than %g days", expired, days)
        except Exception as error:  # retried next hour; serving goes on
            log.warning("could not delete old audit log entries: %s", error)
        await asyncio.sleep(3600)


async def _evaluate_rollouts(firmware: Firmware) -> None:
    """Advance or halt running rollouts as their devices report, every few seconds."""
    while True:
        await asyncio.sleep(ROLLOUT_EVALUATION_SECONDS)
        try:
            await firmware.evaluate_running()
        except Exception as error:  # tried again shortly; serving goes on
            log.warning("could not evaluate firmware rollouts: %s", error)


async def _start_nats(start: Callable[[], Awaitable[None]], flag: str, url: str) -> None:
    try:
        await start()
    except (OSError, NatsError, TimeoutError) as error:
        raise CannotStart(f"no NATS answers at {flag} {url} ({error})") from None
