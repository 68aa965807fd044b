"""An MQTT worker process of `ironcore serve --mqtt-workers N` (see `bridge.workers`).

`python -m ironcore.worker <index> <channel fd> <listeners as JSON> <server id>`, with the
server's settings in IRONCORE_WORKER_SETTINGS. It serves MQTT connections on the primary's ports
and nothing else: its own store connections, event log, context cache and bookkeeping; its hub
(`cluster.hub.ClusterHub`) reports its devices to the primary and hears changes from it. It
drains on SIGTERM or SIGINT, reloads its TLS certificate on SIGHUP, and stops when the primary
goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from ironcore import logs, metrics
from ironcore.bridge.cluster.forgetting import ForgettingRotationStore
from ironcore.bridge.cluster.hub import ClusterHub, worker_id
from ironcore.bridge.cluster.messages import CollectMetrics, Message, Metrics, Ready
from ironcore.bridge.cluster.transport import ChannelTransport, Peers, Transport
from ironcore.bridge.devices import (
    CONTEXT_CACHE_SECONDS,
    CONTEXT_CACHE_SIZE,
    ContextCache,
    DeviceAuthenticator,
)
from ironcore.bridge.ipc import Reply
from ironcore.bridge.mqtt.server import Listener, MqttBridge
from ironcore.process import (
    bridge_context,
    bridge_services,
    bridge_tls_files,
    close,
    loop_factory,
    tune_gc,
)
from ironcore.registry.revocation import Revocations
from ironcore.registry.rotation import Rotations
from ironcore.registry.store import Store
from ironcore.registry.store.pubsub import PubSubStore
from ironcore.routing.log import EventLog
from ironcore.routing.nats import JetStreamSink
from ironcore.routing.router import Router
from ironcore.settings import Settings

log = logging.getLogger("ironcore.worker")


async def serve(
    settings: Settings, index: int, sock: socket.socket, listeners: list[Listener], server_id: str
) -> None:
    store = await Store.open(settings.effective_database_url, settings.database_schema or None)
    events = EventLog(store)
    sink = JetStreamSink(settings.nats_url) if settings.nats_url else None
    bridge: MqttBridge | None = None
    try:
        if sink is not None:
            await sink.start()
        authenticator = DeviceAuthenticator(
            store, cache=ContextCache(CONTEXT_CACHE_SIZE, CONTEXT_CACHE_SECONDS)
        )
        revocations = Revocations(store)
        authenticator.revocations = revocations
        await revocations.refresh()
        origin = worker_id(server_id, index)
        hub = ClusterHub(origin, authenticator)
        hub.refresh_revocations = revocations.refresh
        services = bridge_services(
            store,
            hub,
            Router(events, PubSubStore(store), sink),
            authenticator,
            Rotations(ForgettingRotationStore(store, hub.forget_device)),
        )

        def receive(message: Message, via: Transport) -> Reply:
            if isinstance(message, CollectMetrics):
                return Metrics(metrics.snapshot())
            return hub.receive(message, via)

        primary = ChannelTransport(Peers.PRIMARY, server_id, "the primary")
        hub.attach(primary)
        await primary.open(sock, receive)
        assert primary.channel is not None
        bridge = running = MqttBridge(
            services, listeners, bridge_context(settings, listeners), reuse_port=True
        )
        await bridge.start()
        tune_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: running.reload_tls(*bridge_tls_files(settings))
        )
        primary.send(Ready(origin))
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        await asyncio.wait((stopped, primary.channel.closed), return_when="FIRST_COMPLETED")
        if not stop.is_set():
            log.error("the primary process is gone; MQTT worker %d stops", index)
        stopped.cancel()
    finally:
        await close(bridge, events, sink, store)


def main() -> None:
    index, fd, listeners = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    server_id = sys.argv[4]
    settings = Settings.from_json(os.environ["IRONCORE_WORKER_SETTINGS"])
    logs.configure(settings.log_format, settings.log_level, process=f"worker {index}")
    sock = socket.socket(fileno=fd)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(
            serve(settings, index, sock, [Listener(**item) for item in listeners], server_id)
        )


if __name__ == "__main__":
    main()
