"""Assembles an ironcore process from its settings and runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Generator
from contextlib import suppress

import uvicorn
from fastapi import FastAPI

from ironcore import logs
from ironcore.api.app import create_app
from ironcore.bridge import tls
from ironcore.bridge.bookkeeping import Bookkeeper
from ironcore.bridge.changes import Changes, ForgettingRotationStore
from ironcore.bridge.devices import (
    CONTEXT_CACHE_SECONDS,
    CONTEXT_CACHE_SIZE,
    ContextCache,
    DeviceAuthenticator,
)
from ironcore.bridge.http import DeviceBridge
from ironcore.bridge.hub import Hub
from ironcore.bridge.mqtt.connection import Services
from ironcore.bridge.mqtt.server import Listener, MqttBridge
from ironcore.firmware.rollout import Firmware
from ironcore.identity.revocation import Revocations
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


async def ensure_admin_token(manager: DeviceManager, settings: Settings) -> None:
    """On an empty database, create the first owner token and leave it in the data directory."""
    if await manager.store.count_tokens():
        return
    token = await manager.create_token("owner", "created by the first `ironcore serve`")
    path = settings.admin_token_file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    log.warning("created the first owner admin token in %s (mode 0600)", path)


def bridge_services(
    store: Store, hub: Hub, router: Router, authenticator: DeviceAuthenticator, rotations: Rotations
) -> Services:
    return Services(
        authenticator=authenticator,
        router=router,
        rotations=rotations,
        bookkeeper=Bookkeeper(store),
        hub=hub,
    )


def mqtt_bridge(settings: Settings, services: Services) -> MqttBridge:
    listeners = [
        Listener(settings.mqtt_host, port, tls=True)
        for port in (settings.mqtt_port, settings.mqtt_second_port)
        if port
    ]
    if settings.insecure_mqtt_port:
        listeners.append(Listener(settings.mqtt_host, settings.insecure_mqtt_port, tls=False))
    context = None
    if any(listener.tls for listener in listeners):
        context = tls.server_context(*settings.bridge_tls_files())
    return MqttBridge(services, listeners, context)


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
    try:
        hub = Hub()
        if sink is not None:
            await sink.start()
        topics = PubSubStore(store)
        pubsub = PubSub(topics, nats=sink)
        # The cached device contexts are safe because every change in this process goes
        # through `links` (or the rotation store that forgets) and reaches the cache.
        authenticator = DeviceAuthenticator(
            store, cache=ContextCache(CONTEXT_CACHE_SIZE, CONTEXT_CACHE_SECONDS)
        )
        links = Changes(hub, authenticator)
        manager = DeviceManager(store, links=links, topics=pubsub)
        await ensure_admin_token(manager, settings)
        revocations = Revocations(store, manager.clock, links)
        authenticator.revocations = revocations
        await revocations.refresh()
        rotations = Rotations(ForgettingRotationStore(store, authenticator), manager.clock)
        services = bridge_services(
            store, hub, Router(events, topics, sink), authenticator, rotations
        )
        bridge = mqtt_bridge(settings, services)
        await bridge.start()
        _tune_gc()
        device_bridge = DeviceBridge(services.authenticator, services.router, services.bookkeeper)
        firmware = Firmware(FirmwareStore(store), manager, settings.data_dir / "firmware")
        servers = []
        if settings.device_http_port:
            servers.append(
                _http_server(
                    create_app(
                        manager,
                        device_bridge,
                        admin=False,
                        pubsub=pubsub,
                        revocations=revocations,
                        firmware=firmware,
                        rotations=rotations,
                    ),
                    settings.api_host,
                    settings.device_http_port,
                )
            )
            log.info("HTTP device bridge on port %d", settings.device_http_port)
            app = create_app(
                manager,
                pubsub=pubsub,
                revocations=revocations,
                firmware=firmware,
                rotations=rotations,
            )
            servers.append(_http_server(app, settings.api_host, settings.api_port))
        else:
            app = create_app(
                manager,
                device_bridge,
                pubsub=pubsub,
                revocations=revocations,
                firmware=firmware,
                rotations=rotations,
            )
            servers.append(_http_server(app, settings.api_host, settings.api_port))
        loop = asyncio.get_running_loop()
        reload = bridge.reload_tls
        loop.add_signal_handler(signal.SIGHUP, lambda: reload(*settings.bridge_tls_files()))

        def stop() -> None:
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
        if bridge is not None:
            await bridge.stop()
        await events.close()
        if sink is not None:
            await sink.close()
        await store.close()
    log.info("ironcore stopped")


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


def _tune_gc() -> None:
    """Every event allocates a few short-lived objects (a row, a future, attributes) while the
    process holds many long-lived ones (connections, sessions, parsed keys). With the default
    thresholds, generation-0 collections keep walking that heap: moving what start-up made to
    the permanent generation and collecting less often measured +30-50 % QoS 1 events/s
    (docs/benchmarks.md, MQTT finding 1). Reference cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def run(settings: Settings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None
