"""An MQTT worker process of `ironcore serve --mqtt-workers N` (see `bridge.workers`).

`python -m ironcore.runtime.worker <index> <channel fd> <listeners as JSON> <server id>`, with
the server's settings in IRONCORE_WORKER_SETTINGS. It serves MQTT connections on the primary's
ports and nothing else: its own storage (store connections, event log) and device side (context
cache, bookkeeping, `parts.device_side`); its hub (`cluster.hub.ClusterHub`) reports its devices
to the primary and hears changes from it. It drains on SIGTERM or SIGINT, reloads its TLS
certificate on SIGHUP, and stops when the primary goes away. It loads none of the admin API.
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
from ironcore.access.forwarded import TrustedProxies
from ironcore.bridge.cluster.hub import worker_id
from ironcore.bridge.cluster.messages import CollectMetrics, Message, Metrics, Ready
from ironcore.bridge.cluster.transport import ChannelTransport, Peers, Transport
from ironcore.bridge.ipc import Reply
from ironcore.bridge.mqtt.connection import Services as MqttServices
from ironcore.bridge.mqtt.server import Listener, MqttBridge
from ironcore.runtime.parts import DeviceSide, Storage, close, device_side
from ironcore.runtime.process import Budget, loop_factory, raise_open_files, tune_gc
from ironcore.runtime.tls import tls_context, tls_files
from ironcore.settings import Settings

log = logging.getLogger("ironcore.worker")


async def serve(
    settings: Settings, index: int, sock: socket.socket, listeners: list[Listener], server_id: str
) -> None:
    _, open_files = raise_open_files()
    budget = Budget.of(settings, open_files, http_listeners=0)
    storage = await Storage.open(settings)
    devices: DeviceSide | None = None
    bridge: MqttBridge | None = None
    try:
        if storage.sink is not None:
            await storage.sink.start()
        origin = worker_id(server_id, index)
        primary = ChannelTransport(Peers.PRIMARY, server_id, "the primary")
        devices = device_side(storage, origin, [primary])
        await devices.revoked.refresh()
        hub = devices.hub

        def receive(message: Message, via: Transport) -> Reply:
            if isinstance(message, CollectMetrics):
                return Metrics(metrics.snapshot())
            return hub.receive(message, via)

        await primary.open(sock, receive)
        assert primary.channel is not None
        bridge = running = MqttBridge(
            MqttServices(devices.channel, hub),
            listeners,
            tls_context(settings, listeners),
            reuse_port=True,
            max_connections=budget.mqtt,
            trusted_proxies=TrustedProxies(settings.trusted_proxies),
        )
        await bridge.start()
        tune_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: running.reload_tls(*tls_files(settings)))
        primary.send(Ready(origin))
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        await asyncio.wait((stopped, primary.channel.closed), return_when="FIRST_COMPLETED")
        if not stop.is_set():
            log.error("the primary process is gone; MQTT worker %d stops", index)
        stopped.cancel()
    finally:
        await close(bridge, devices, storage)


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
