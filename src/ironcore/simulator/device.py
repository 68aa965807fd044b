"""A lean simulated MQTT device: one asyncio connection speaking the bridge contract through
ironcore's own sans-IO codec.

The SDK's `DeviceClient` (paho, a thread per device) is what a real device runs; a fleet of
thousands in one process needs a connection to cost a few kilobytes and no thread, so the
simulator drives the wire directly: CONNECT with the device's JWT, SUBSCRIBE to config and
commands, QoS 1 events with their PUBACK times measured, and config acknowledged as a device
would.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ironcore.bridge.mqtt import codec


class DeviceRefused(Exception):
    """The bridge answered CONNACK with a refusal."""

    def __init__(self, return_code: int) -> None:
        super().__init__(f"CONNACK {return_code}")
        self.return_code = return_code


@dataclass
class Stats:
    """What a fleet did, summed over its devices."""

    connects: int = 0
    refused: int = 0
    errors: int = 0
    published: int = 0
    acknowledged: int = 0
    configs: int = 0
    commands: int = 0
    # PUBACK latencies in seconds (a bounded sample).
    latencies: list[float] = field(default_factory=list)

    def record_latency(self, seconds: float) -> None:
        if len(self.latencies) < 200_000:
            self.latencies.append(seconds)


class SimulatedDevice(asyncio.Protocol):
    # At most this many QoS 1 events in flight; the bridge grants a connection 32.
    MAX_IN_FLIGHT = 16

    def __init__(self, client_id: str, device_id: str, stats: Stats) -> None:
        self.client_id = client_id
        self.device_id = device_id
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self._decoder = codec.Decoder(codec.MAX_PACKET_SIZE, codec.MAX_BUFFER_SIZE)
        self._connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight: dict[int, tuple[float, asyncio.Future[None]]] = {}
        self._next_id = 1
        self._window = asyncio.Semaphore(self.MAX_IN_FLIGHT)
        # What a device does with a config and a command (topic, payload) beyond counting it.
        self.on_config: Callable[[bytes], None] | None = None
        self.on_command: Callable[[str, bytes], None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._decoder.feed(data)
            while (packet := self._decoder.next_packet()) is not None:
                self._handle(packet)
        except codec.ProtocolError:
            self.stats.errors += 1
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._connack.done():
            self._connack.set_exception(ConnectionError("closed before CONNACK"))
        for _, future in self._in_flight.values():
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))
        self._in_flight.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def _handle(self, packet: codec.Packet) -> None:
        match packet:
            case codec.Connack(return_code=code):
                if not self._connack.done():
                    self._connack.set_result(code)
            case codec.Puback(packet_id=packet_id):
                sent = self._in_flight.pop(packet_id, None)
                if sent is not None:
                    self.stats.acknowledged += 1
                    self.stats.record_latency(time.perf_counter() - sent[0])
                    if not sent[1].done():
                        sent[1].set_result(None)
            case codec.Publish(topic=topic, payload=payload, qos=qos, packet_id=packet_id):
                if topic.endswith("/config"):
                    self.stats.configs += 1
                    if self.on_config is not None:
                        self.on_config(payload)
                else:
                    self.stats.commands += 1
                    if self.on_command is not None:
                        self.on_command(topic, payload)
                if qos == 1 and packet_id is not None:
                    self._write(codec.Puback(packet_id))

    def _write(self, packet: codec.Packet) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(codec.encode(packet))

    # Commands

    async def handshake(self, password: str, keep_alive: int, subscribe: bool) -> None:
        """CONNECT and wait for CONNACK (DeviceRefused if refused); then subscribe."""
        self._write(
            codec.Connect("MQTT", 4, True, keep_alive, self.client_id, "unused", password.encode())
        )
        code = await self._connack
        if code != 0:
            self.stats.refused += 1
            raise DeviceRefused(code)
        self.stats.connects += 1
        if subscribe:
            topics = (
                (f"/devices/{self.device_id}/config", 1),
                (f"/devices/{self.device_id}/commands/#", 0),
            )
            self._write(codec.Subscribe(self._packet_id(), topics))

    async def publish_event(self, payload: bytes, subfolder: str = "") -> None:
        """A QoS 1 event; returns when its PUBACK arrived."""
        async with self._window:
            await self._publish(payload, subfolder)

    async def _publish(self, payload: bytes, subfolder: str) -> None:
        topic = f"/devices/{self.device_id}/events" + (f"/{subfolder}" if subfolder else "")
        packet_id = self._packet_id()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight[packet_id] = (time.perf_counter(), future)
        self.stats.published += 1
        self._write(codec.Publish(topic, payload, qos=1, packet_id=packet_id))
        await future

    def ping(self) -> None:
        self._write(codec.Pingreq())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        await self._closed

    def _packet_id(self) -> int:
        packet_id = self._next_id
        self._next_id = packet_id % 65535 + 1
        return packet_id


async def connect(
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    client_id: str,
    device_id: str,
    password: str,
    stats: Stats,
    keep_alive: int = 60,
    subscribe: bool = True,
    source: str | None = None,
    on_config: Callable[[bytes], None] | None = None,
    on_command: Callable[[str, bytes], None] | None = None,
) -> SimulatedDevice:
    """`source`: the local address to connect from (a fleet larger than one address's
    ephemeral ports, ~28,000 on Linux, spreads over 127.0.0.2, 127.0.0.3, ...).
    `on_config`, `on_command`: the device's handlers, in place before it subscribes (the
    server answers a config subscription at once)."""
    loop = asyncio.get_running_loop()
    _, device = await loop.create_connection(
        lambda: SimulatedDevice(client_id, device_id, stats),
        host,
        port,
        ssl=tls,
        server_hostname=host if tls is not None else None,
        local_addr=(source, 0) if source else None,
    )
    device.on_config, device.on_command = on_config, on_command
    try:
        await device.handshake(password, keep_alive, subscribe)
    except BaseException:
        device.close()
        raise
    return device
