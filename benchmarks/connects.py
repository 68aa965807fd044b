"""A light TLS connect generator: pre-built CONNECT packets, raw asyncio, several processes.

The fleet simulator's device (a coroutine, a future and the codec per connect) kept one load
generator process at 96-100 % of a core on connects, for ironcore and Mosquitto alike, so the
connect rate measured the generator (issue 12). Here each connect costs the generator one TLS
handshake, one write of bytes built before the window (CONNECT with a JWT minted before the
window, or the peer's password) and one read of the 4-byte CONNACK, in an `asyncio.Protocol`,
spread over `processes` generator processes (spawned, each with its own uvloop loop), so the
generator has headroom and its CPU is measured apart from the broker's.

The connections stay open until the window has been measured (as the simulator-based round did)
and are then closed together, outside the window.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import ssl
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection

from benchmarks.loadgen import (
    Cpu,
    machine_busy_seconds,
    process_tree_cpu,
    self_cpu_seconds,
    tree_delta,
)
from ironcore.bridge.mqtt import codec
from ironcore.simulator.fleet import Member, Target

KEEP_ALIVE = 60


def connect_packets(tgt: Target, members: Sequence[Member]) -> list[bytes]:
    """Each member's CONNECT, the bytes the simulator sends (MQTT 3.1.1, clean session,
    username "unused", the JWT or password as the password): minted now, before any window."""
    return [
        codec.encode(
            codec.Connect(
                "MQTT",
                4,
                True,
                KEEP_ALIVE,
                tgt.client_id(m.device_id),
                "unused",
                m.token().encode(),
            )
        )
        for m in members
    ]


# The generator process


class _Once(asyncio.Protocol):
    """One TLS connection: send the CONNECT once the handshake is done, resolve with the
    CONNACK's return code."""

    def __init__(self, packet: bytes, done: asyncio.Future[int]) -> None:
        self.packet = packet
        self.done = done
        self.buf = b""
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.packet)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= 4 and not self.done.done():
            if self.buf[0] != 0x20:
                self.done.set_exception(ConnectionError(f"not a CONNACK: {self.buf[:8]!r}"))
            else:
                self.done.set_result(self.buf[3])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before CONNACK"))


async def _connect_all(
    host: str, port: int, tls: ssl.SSLContext, packets: list[bytes], concurrency: int
) -> tuple[int, int, int, list[asyncio.BaseTransport]]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    transports: list[asyncio.BaseTransport] = []
    counts = [0, 0, 0]  # connected, refused, errors

    async def one(packet: bytes) -> None:
        async with gate:
            done: asyncio.Future[int] = loop.create_future()
            try:
                transport, _ = await loop.create_connection(
                    lambda: _Once(packet, done), host, port, ssl=tls, server_hostname=host
                )
                transports.append(transport)
                code = await asyncio.wait_for(done, 60)
            except Exception:
                counts[2] += 1
                return
            counts[0 if code == 0 else 1] += 1

    await asyncio.gather(*(one(p) for p in packets))
    return counts[0], counts[1], counts[2], transports


def _worker(conn: Connection, host: str, port: int, ca_file: str, concurrency: int) -> None:
    from benchmarks.brokers import event_loop_runner, raise_fd_limit

    raise_fd_limit()
    tls = ssl.create_default_context(cafile=ca_file)
    packets: list[bytes] = []
    with event_loop_runner() as runner:
        conn.send("ready")
        while (order := conn.recv()) != "quit":
            if isinstance(order, list):  # the next round's CONNECTs, sent before its window
                packets = order
                conn.send("loaded")
                continue
            assert order == "go", order
            connected, refused, errors, transports = runner.run(
                _connect_all(host, port, tls, packets, concurrency)
            )
            conn.send((connected, refused, errors))
            assert conn.recv() == "close"
            for transport in transports:
                transport.close()
            runner.run(asyncio.sleep(0.2))
            conn.send("closed")


# The driver


@dataclass
class Round:
    connected: int
    refused: int
    errors: int
    cpu: Cpu  # broker: every broker process; loadgen: every generator process and us


class Generator:
    """`processes` connect generator processes for one broker; `run(packets, ...)` is one
    measured round, each process connecting its share of the packets."""

    def __init__(
        self, host: str, port: int, ca_file: str, processes: int, concurrency: int
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        per = max(1, concurrency // processes)
        for _ in range(processes):
            ours, theirs = context.Pipe()
            proc = context.Process(
                target=_worker,
                args=(theirs, host, port, ca_file, per),
                daemon=True,
            )
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        for pipe in self.pipes:
            if not pipe.poll(60):
                raise RuntimeError("a connect generator process did not start")
            assert pipe.recv() == "ready"

    def run(self, packets: Sequence[bytes], broker_pids: Sequence[int]) -> Round:
        n = len(self.pipes)
        for i, pipe in enumerate(self.pipes):
            pipe.send(list(packets[i::n]))
        for pipe in self.pipes:
            assert pipe.recv() == "loaded"
        pids = [p.pid for p in self.procs if p.pid is not None]
        busy0, total0 = machine_busy_seconds()
        broker0 = process_tree_cpu(broker_pids)
        gen0 = process_tree_cpu(pids)
        me0 = self_cpu_seconds()
        wall0 = time.perf_counter()
        for pipe in self.pipes:
            pipe.send("go")
        results = [pipe.recv() for pipe in self.pipes]
        wall1 = time.perf_counter()
        me1 = self_cpu_seconds()
        gen1 = process_tree_cpu(pids)
        broker1 = process_tree_cpu(broker_pids)
        busy1, total1 = machine_busy_seconds()
        for pipe in self.pipes:
            pipe.send("close")
        for pipe in self.pipes:
            assert pipe.recv() == "closed"
        per_process = [gen1.get(pid, 0.0) - gen0.get(pid, 0.0) for pid in pids]
        broker = tree_delta(broker0, broker1)
        total = total1 - total0
        cpu = Cpu(
            wall1 - wall0,
            sum(per_process) + me1 - me0,
            broker,
            100 * (busy1 - busy0) / total if total else 0.0,
            loadgen_peak=max(per_process, default=0.0),
            loadgen_processes=len(pids),
        )
        return Round(
            sum(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results), cpu
        )

    def close(self) -> None:
        for pipe in self.pipes:
            with suppress(OSError):
                pipe.send("quit")
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def default_processes() -> int:
    return max(1, min(4, os.cpu_count() or 1))
