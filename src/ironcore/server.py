"""Assembles an ironcore process from its settings and runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Generator
from functools import partial

import uvicorn
from fastapi import FastAPI
from nats.errors import Error as NatsError

from ironcore import logs
from ironcore.access.tokens import AdminTokens
from ironcore.api.app import create_app
from ironcore.bridge import firmware as firmware_bridge
from ironcore.bridge import http as http_bridge
from ironcore.bridge.cluster.bus import Bus, namespace
from ironcore.bridge.cluster.forgetting import ForgettingRotationStore
from ironcore.bridge.cluster.hub import ClusterHub, new_server_id
from ironcore.bridge.devices import (
    CONTEXT_CACHE_SECONDS,
    CONTEXT_CACHE_SIZE,
    ContextCache,
    DeviceAuthenticator,
)
from ironcore.bridge.http import DeviceBridge
from ironcore.bridge.mqtt.server import MqttBridge
from ironcore.bridge.workers import Workers
from ironcore.firmware.rollout import Firmware
from ironcore.process import (
    bridge_context,
    bridge_services,
    bridge_tls_files,
    close,
    listeners,
    loop_factory,
    tune_gc,
)
from ironcore.registry.revocation import Revocations
from ironcore.registry.rotation import Rotations
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.registry.store.firmware import FirmwareStore
from ironcore.registry.store.pubsub import PubSubStore
from ironcore.routing.log import EventLog
from ironcore.routing.nats import JetStreamSink
from ironcore.routing.pubsub import PubSub
from ironcore.routing.push import PushDelivery
from ironcore.routing.router import Router
from ironcore.settings import Settings

log = logging.getLogger("ironcore")
# Time an in-flight request gets to finish after SIGTERM before its connection is cut.
DRAIN_SECONDS = 30
# How often running firmware rollouts are moved on (advanced or halted) without a status call.
ROLLOUT_EVALUATION_SECONDS = 5


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


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to `serve`, which stops every listener at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _http_server(app: FastAPI, host: str, port: int) -> _Server:
    return _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=DRAIN_SECONDS,
            server_header=False,
        )
    )


async def serve(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.effective_database_url, settings.database_schema or None)
    events = EventLog(store)
    sink = JetStreamSink(settings.nats_url) if settings.nats_url else None
    bridge: MqttBridge | None = None
    workers: Workers | None = None
    bus: Bus | None = None
    try:
        if sink is not None:
            await _start_nats(sink.start, "--nats-url", settings.nats_url)
        topics = PubSubStore(store)
        pubsub = PubSub(topics, nats=sink)
        # The cached device contexts are safe because every change in this process goes
        # through the hub (or the rotation store that tells it) and reaches the cache.
        authenticator = DeviceAuthenticator(
            store, cache=ContextCache(CONTEXT_CACHE_SIZE, CONTEXT_CACHE_SECONDS)
        )
        hub = ClusterHub(new_server_id(), authenticator)
        manager = DeviceManager(store, links=hub, topics=pubsub)
        await ensure_admin_token(AdminTokens(store, manager.clock), settings)
        revocations = Revocations(store, manager.clock, hub)
        authenticator.revocations = revocations
        hub.refresh_revocations = revocations.refresh
        await revocations.refresh()
        rotations = Rotations(ForgettingRotationStore(store, hub.forget_device), manager.clock)
        if settings.bus_url:
            space = namespace(settings.effective_database_url, settings.database_schema)
            bus = Bus(settings.bus_url, space, hub.origin)
            hub.attach(bus)
            await _start_nats(partial(bus.start, hub.receive), "--bus", settings.bus_url)
        services = bridge_services(
            store, hub, Router(events, topics, sink), authenticator, rotations
        )
        listening = listeners(settings)
        bridge = MqttBridge(
            services,
            listening,
            bridge_context(settings, listening),
            reuse_port=settings.mqtt_workers > 1,
        )
        await bridge.start()
        if settings.mqtt_workers > 1:
            if listening:
                workers = Workers(settings.to_json(), hub, bridge.bound(), settings.mqtt_workers)
                await workers.start()
            else:
                log.warning(
                    "--mqtt-workers %d: no MQTT port is open, so no worker is started",
                    settings.mqtt_workers,
                )
        tune_gc()
        device_bridge = DeviceBridge(services.channel)
        firmware = Firmware(FirmwareStore(store), manager, settings.data_dir / "firmware")

        def serving(device_bridge: DeviceBridge | None, admin: bool = True) -> FastAPI:
            return http_app(manager, device_bridge, admin, pubsub, revocations, firmware, rotations)

        apps = []
        if settings.device_http_port:
            apps.append((serving(device_bridge, admin=False), settings.device_http_port))
            log.info("HTTP device bridge on port %d", settings.device_http_port)
        admin_bridge = None if settings.device_http_port else device_bridge
        apps.append((serving(admin_bridge), settings.api_port))
        if workers is not None:
            for app, _ in apps:
                app.state.worker_metrics = workers.metrics
        servers = [_http_server(app, settings.api_host, port) for app, port in apps]
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(settings, bridge, workers))

        def stop() -> None:
            if workers is not None:
                workers.stopping()
            for server in servers:
                server.should_exit = True

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        log.info(
            "ironcore serving the admin API on http://%s:%d (database: %s)",
            settings.api_host,
            settings.api_port,
            store.engine.dialect.name,
        )
        retention = asyncio.create_task(_expire_events(pubsub, settings.event_retention_days))
        rollouts = asyncio.create_task(_evaluate_rollouts(firmware))
        push = PushDelivery(pubsub)
        push.start()
        try:
            await asyncio.gather(*(server.serve() for server in servers))
        finally:
            retention.cancel()
            rollouts.cancel()
            await push.stop()
    finally:
        if workers is not None:
            await workers.stop()
        await close(bridge, events, sink, store)
        if bus is not None:
            await bus.close()
    log.info("ironcore stopped")


def http_app(
    manager: DeviceManager,
    device_bridge: DeviceBridge | None,
    admin: bool,
    pubsub: PubSub,
    revocations: Revocations,
    firmware: Firmware,
    rotations: Rotations,
) -> FastAPI:
    """The admin API (`api.app.create_app`) and, with `device_bridge`, the HTTP device bridge
    and firmware downloads served by the same app, in front of the API's middleware."""
    app = create_app(
        manager,
        admin,
        pubsub,
        revocations,
        firmware,
        rotations,
        self_authenticating=http_bridge.is_device_path,
    )
    app.state.device_bridge = device_bridge
    if device_bridge is not None:
        app.include_router(firmware_bridge.router)
        # Outermost: device requests skip the admin API's middleware and routing.
        app.add_middleware(
            http_bridge.DeviceRoutes, bridge=device_bridge, handlers=app.exception_handlers
        )
    return app


def _reload(settings: Settings, bridge: MqttBridge | None, workers: Workers | None) -> None:
    if bridge is not None:
        bridge.reload_tls(*bridge_tls_files(settings))
    if workers is not None:
        workers.reload_tls()


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


async def _evaluate_rollouts(firmware: Firmware) -> None:
    """Advance or halt running rollouts as their devices report, every few seconds."""
    while True:
        await asyncio.sleep(ROLLOUT_EVALUATION_SECONDS)
        try:
            await firmware.evaluate_running()
        except Exception as error:  # tried again shortly; serving goes on
            log.warning("could not evaluate firmware rollouts: %s", error)


class CannotStart(Exception):
    """Something the server needs is not there; the message says what. Exit status 1."""


async def _start_nats(start: Callable[[], Awaitable[None]], flag: str, url: str) -> None:
    try:
        await start()
    except (OSError, NatsError, TimeoutError) as error:
        raise CannotStart(f"no NATS answers at {flag} {url} ({error})") from None


def run(settings: Settings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(settings))
    except CannotStart as error:
        log.error("ironcore cannot start: %s", error)
        raise SystemExit(1) from None
