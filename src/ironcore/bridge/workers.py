"""The primary's MQTT worker processes (`ironcore serve --mqtt-workers N`): started, watched,
restarted when they die, told of SIGHUP, drained on shutdown.

A worker is a program the primary names (`python -m ironcore.runtime.worker`), given the
server's settings, the listeners the primary bound (with their real ports, so port 0 works), the
server's id and one end of a socket pair for its `ipc.Channel` (the transport between the hubs
of both, `cluster.transport`). It binds the same ports with SO_REUSEPORT; the kernel spreads new
connections over every process. The primary counts as the first of the N.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ironcore.bridge.cluster.hub import ClusterHub, worker_id
from ironcore.bridge.cluster.messages import CollectMetrics, Message, Metrics, Ready
from ironcore.bridge.cluster.transport import ChannelTransport, Peers, Transport
from ironcore.bridge.ipc import Reply
from ironcore.bridge.mqtt.server import SHUTDOWN_SECONDS, Listener
from ironcore.metrics import Snapshot

log = logging.getLogger(__name__)
# How long a worker gets to open its store and bind its ports.
START_SECONDS = 30.0
# A worker that died is started again after this long (not at once: it may die at start).
RESTART_SECONDS = 1.0
# Beyond the bridge's own goodbye time: the event log and bookkeeping are flushed, then it exits.
STOP_SECONDS = SHUTDOWN_SECONDS + 10.0
# A scrape waits this long for each worker's metrics.
METRICS_SECONDS = 2.0


class Workers:
    def __init__(
        self,
        program: Sequence[str],
        settings_json: str,
        hub: ClusterHub,
        listeners: list[Listener],
        count: int,
    ) -> None:
        # The command that runs a worker, to which its arguments are added.
        self.program = tuple(program)
        # The server's settings (`Settings.to_json()`), handed to every worker as they are.
        self.settings_json = settings_json
        self.hub = hub
        self.listeners = listeners
        self.count = count
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._links: dict[int, ChannelTransport] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Start every worker and wait until each accepts connections."""
        await asyncio.gather(*(self._start(index) for index in range(1, self.count)))
        for index in range(1, self.count):
            self._watchers.append(asyncio.create_task(self._watch(index)))

    async def _start(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        link = ChannelTransport(
            Peers.WORKER, worker_id(self.hub.origin, index), f"MQTT worker {index}"
        )

        def receive(message: Message, via: Transport) -> Reply:
            if isinstance(message, Ready):
                if not ready.done():
                    ready.set_result(None)
                return None
            return self.hub.receive(message, via)

        with theirs:
            process = await asyncio.create_subprocess_exec(
                *self.program,
                str(index),
                str(theirs.fileno()),
                json.dumps([asdict(listener) for listener in self.listeners]),
                self.hub.origin,
                pass_fds=(theirs.fileno(),),
                env={**os.environ, "IRONCORE_WORKER_SETTINGS": self.settings_json},
            )
        await link.open(ours, receive)
        self._processes[index] = process
        self._links[index] = link
        self.hub.attach(link)
        exited = asyncio.ensure_future(process.wait())
        done, _ = await asyncio.wait(
            {ready, exited}, timeout=START_SECONDS, return_when="FIRST_COMPLETED"
        )
        if ready not in done:
            exited.cancel()
            if process.returncode is None:
                process.kill()
                await process.wait()
            self.hub.detach(link)
            raise RuntimeError(
                f"MQTT worker {index} did not start (exit status {process.returncode}); "
                "its log lines above say why"
            )
        exited.cancel()
        log.info("MQTT worker %d (pid %d) is accepting connections", index, process.pid)

    async def _watch(self, index: int) -> None:
        while True:
            process = self._processes[index]
            status = await process.wait()
            self.hub.detach(self._links[index])
            self._links[index].close()
            if self._stopping:
                return
            log.error(
                "MQTT worker %d (pid %d) exited with status %d; its devices reconnect to the "
                "other processes; starting it again in %g s",
                index,
                process.pid,
                status,
                RESTART_SECONDS,
            )
            await asyncio.sleep(RESTART_SECONDS)
            if self._stopping:
                return
            try:
                await self._start(index)
            except (RuntimeError, OSError) as error:
                log.error("%s; trying again", error)

    def stopping(self) -> None:
        """The server is stopping: a worker that exits now is not started again. (SIGINT from
        a terminal reaches every process of the group, so workers may exit first.)"""
        self._stopping = True

    def reload_tls(self) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGHUP)

    async def metrics(self) -> list[Snapshot]:
        """Every worker's metrics, as `ironcore.metrics.snapshot()` gives them."""

        async def one(link: ChannelTransport) -> Snapshot:
            answer = await link.ask(link.peer, CollectMetrics(), seconds=METRICS_SECONDS)
            return answer.families if isinstance(answer, Metrics) else []

        return list(await asyncio.gather(*(one(link) for link in self._links.values())))

    async def stop(self) -> None:
        """Each worker says goodbye to its devices and flushes what it holds, then exits."""
        self.stopping()
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for index, process in self._processes.items():
            try:
                await asyncio.wait_for(process.wait(), STOP_SECONDS)
            except TimeoutError:
                log.error("MQTT worker %d did not stop in %g s; killing it", index, STOP_SECONDS)
                process.kill()
                await process.wait()
        for watcher in self._watchers:
            watcher.cancel()
