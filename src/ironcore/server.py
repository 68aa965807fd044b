"""Assembles an ironcore process from its settings and runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from contextlib import suppress

import uvicorn

from ironcore import logs
from ironcore.api.app import create_app
from ironcore.bridge import tls
from ironcore.bridge.bookkeeping import Bookkeeper
from ironcore.bridge.devices import DeviceAuthenticator
from ironcore.bridge.hub import Hub
from ironcore.bridge.mqtt.connection import Services
from ironcore.bridge.mqtt.server import Listener, MqttBridge
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.routing.log import EventLog
from ironcore.routing.router import Router
from ironcore.settings import Settings

log = logging.getLogger("ironcore")
# Time an in-flight request gets to finish after SIGTERM before its connection is cut.
DRAIN_SECONDS = 30


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


def mqtt_bridge(settings: Settings, store: Store, hub: Hub, events: EventLog) -> MqttBridge:
    listeners = [
        Listener(settings.mqtt_host, port, tls=True)
        for port in (settings.mqtt_port, settings.mqtt_second_port)
        if port
    ]
    if settings.insecure_mqtt_port:
        listeners.append(Listener(settings.mqtt_host, settings.insecure_mqtt_port, tls=False))
    context = None
    if any(listener.tls for listener in listeners):
        cert, key = settings.bridge_tls_files()
        context = tls.server_context(cert, key)
    services = Services(
        authenticator=DeviceAuthenticator(store),
        router=Router(events),
        bookkeeper=Bookkeeper(store),
        hub=hub,
    )
    return MqttBridge(services, listeners, context)


async def serve(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.effective_database_url, settings.database_schema or None)
    events = EventLog(store)
    bridge: MqttBridge | None = None
    try:
        hub = Hub()
        manager = DeviceManager(store, links=hub)
        await ensure_admin_token(manager, settings)
        bridge = mqtt_bridge(settings, store, hub, events)
        await bridge.start()
        reload = bridge.reload_tls
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: reload(*settings.bridge_tls_files())
        )
        app = create_app(manager)
        config = uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=DRAIN_SECONDS,
            server_header=False,
        )
        server = uvicorn.Server(config)
        log.info(
            "ironcore serving the admin API on http://%s:%d (database: %s)",
            settings.api_host,
            settings.api_port,
            store.engine.dialect.name,
        )
        _keep_running_after_drain(server)
        await server.serve()
    finally:
        if bridge is not None:
            await bridge.stop()
        await events.close()
        await store.close()
    log.info("ironcore stopped")


def _keep_running_after_drain(server: uvicorn.Server) -> None:
    """uvicorn drains on SIGTERM/SIGINT, then puts back the handlers it found and raises the
    signal again. With the default handlers that kills the process (exit -15) before the store is
    closed; with these, the signal only asks uvicorn to exit (it is already exiting then), so a
    drained server closes its database and exits 0."""

    def stop(_signum: int, _frame: object) -> None:
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def run(settings: Settings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None
