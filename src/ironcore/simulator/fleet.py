"""A fleet of simulated devices: connect them, send telemetry at a total rate, report.

The fleet is also the load generator of the MQTT benchmarks, so it must never be what limits
them: one process, one event loop, no thread per device.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ironcore.simulator.device import DeviceRefused, SimulatedDevice, Stats, connect


@dataclass(frozen=True)
class Member:
    """One device of the fleet: its id and how it mints its current JWT."""

    device_id: str
    token: Callable[[], str]


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tls: ssl.SSLContext | None
    project: str
    location: str
    registry: str

    def client_id(self, device_id: str) -> str:
        return (
            f"projects/{self.project}/locations/{self.location}"
            f"/registries/{self.registry}/devices/{device_id}"
        )


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    return context


@dataclass
class Report:
    devices: int
    connected: int
    seconds: float
    stats: Stats

    @property
    def rate(self) -> float:
        return self.stats.acknowledged / self.seconds if self.seconds else 0.0

    def latency(self, quantile: float) -> float:
        if not self.stats.latencies:
            return 0.0
        ordered = sorted(self.stats.latencies)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def lines(self) -> list[str]:
        s = self.stats
        median = statistics.median(s.latencies) * 1000 if s.latencies else 0.0
        return [
            f"devices           {self.connected}/{self.devices} connected ({s.refused} refused, "
            f"{s.errors} errors)",
            f"events            {s.published} sent, {s.acknowledged} acknowledged in "
            f"{self.seconds:.1f} s ({self.rate:,.0f}/s)",
            f"PUBACK latency    p50 {median:.1f} ms, p99 {self.latency(0.99) * 1000:.1f} ms",
            f"configs/commands  {s.configs} configs, {s.commands} commands received",
        ]


class Fleet:
    def __init__(self, target: Target, members: Sequence[Member]) -> None:
        self.target = target
        self.members = list(members)
        self.stats = Stats()
        self.devices: list[SimulatedDevice] = []

    async def connect_all(self, concurrency: int = 100, subscribe: bool = True) -> None:
        """Connect every member, at most `concurrency` handshakes at a time."""
        gate = asyncio.Semaphore(concurrency)

        async def one(member: Member) -> None:
            async with gate:
                try:
                    device = await connect(
                        self.target.host,
                        self.target.port,
                        self.target.tls,
                        self.target.client_id(member.device_id),
                        member.device_id,
                        member.token(),
                        self.stats,
                        subscribe=subscribe,
                    )
                except DeviceRefused:
                    return
                except (OSError, ConnectionError, ssl.SSLError):
                    self.stats.errors += 1
                    return
                self.devices.append(device)

        await asyncio.gather(*(one(m) for m in self.members))

    async def send(
        self,
        rate: float,
        duration: float,
        payload_size: int = 64,
        progress: Callable[[Stats, float], None] | None = None,
    ) -> Report:
        """Publish QoS 1 events at `rate` per second in total, spread over the connected
        devices, for `duration` seconds (each device waits for its PUBACKs)."""
        devices = list(self.devices)
        started = time.perf_counter()
        if not devices or rate <= 0:
            await asyncio.sleep(duration)
            return Report(len(self.members), len(devices), duration, self.stats)
        per_device = rate / len(devices)
        payload = b"x" * payload_size
        deadline = started + duration

        async def run(device: SimulatedDevice) -> None:
            interval = 1.0 / per_device
            next_at = started + random.uniform(0, interval)
            last_ping = time.perf_counter()
            while True:
                now = time.perf_counter()
                if next_at >= deadline:
                    return
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                try:
                    await device.publish_event(payload)
                except ConnectionError:
                    self.stats.errors += 1
                    return
                next_at += interval
                if now - last_ping > 30:
                    device.ping()
                    last_ping = now

        async def report() -> None:
            while True:
                await asyncio.sleep(1.0)
                if progress is not None:
                    progress(self.stats, time.perf_counter() - started)

        reporter = asyncio.create_task(report())
        try:
            await asyncio.gather(*(run(d) for d in devices))
        finally:
            reporter.cancel()
        return Report(len(self.members), len(devices), time.perf_counter() - started, self.stats)

    async def close(self) -> None:
        for device in self.devices:
            device.close()
        await asyncio.gather(*(d.wait_closed() for d in self.devices), return_exceptions=True)
