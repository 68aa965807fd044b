"""What every process of an ironcore server sets up the same way: its event loop, the garbage
collector's tuning, and the MQTT bridge's services and TLS context. The primary (`server.py`)
and the MQTT worker processes (`worker.py`) both use it; it imports nothing of the admin API, so
a worker does not load it."""

from __future__ import annotations

import asyncio
import gc
import ssl
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from ironcore.bridge import certificates
from ironcore.bridge.bookkeeping import Bookkeeper
from ironcore.bridge.devices import DeviceAuthenticator
from ironcore.bridge.hub import Hub
from ironcore.bridge.mqtt.connection import Services
from ironcore.bridge.mqtt.server import Listener, MqttBridge
from ironcore.registry.rotation import Rotations
from ironcore.registry.store import Store
from ironcore.routing.log import EventLog
from ironcore.routing.nats import JetStreamSink
from ironcore.routing.router import Router
from ironcore.settings import Settings


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


def listeners(settings: Settings) -> list[Listener]:
    found = [
        Listener(settings.mqtt_host, port, tls=True)
        for port in (settings.mqtt_port, settings.mqtt_second_port)
        if port
    ]
    if settings.insecure_mqtt_port:
        found.append(Listener(settings.mqtt_host, settings.insecure_mqtt_port, tls=False))
    return found


def bridge_context(settings: Settings, listening: list[Listener]) -> ssl.SSLContext | None:
    """The TLS context of the bridge's TLS listeners (None without any)."""
    if not any(listener.tls for listener in listening):
        return None
    return certificates.server_context(*bridge_tls_files(settings))


def bridge_tls_files(settings: Settings) -> tuple[Path, Path]:
    """The bridge's certificate chain and key: the operator's, or generated ones."""
    if settings.tls_cert and settings.tls_key:
        return settings.tls_cert, settings.tls_key
    return certificates.local_certificates(settings.tls_dir, settings.mqtt_hostnames)


async def close(
    bridge: MqttBridge | None, events: EventLog, sink: JetStreamSink | None, store: Store
) -> None:
    """The end of a process: devices told goodbye and their last acknowledgements written, then
    the events still pending committed, then the connections let go of, in that order."""
    if bridge is not None:
        await bridge.stop()
    await events.close()
    if sink is not None:
        await sink.close()
    await store.close()


def tune_gc() -> None:
    """Every event allocates a few short-lived objects (a row, a future, attributes) while the
    process holds many long-lived ones (connections, sessions, parsed keys). With the default
    thresholds, generation-0 collections keep walking that heap: moving what start-up made to
    the permanent generation and collecting less often measured +30-50 % QoS 1 events/s
    (docs/benchmarks.md, MQTT finding 1). Reference cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None
