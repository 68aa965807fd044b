"""Simulated devices on the HTTP bridge: `publishEvent` with a device JWT on every request, as
Cloud IoT Core's HTTP samples did, over a few keep-alive connections shared by the fleet."""

from __future__ import annotations

import asyncio
import base64
import random
import ssl
import time
from collections.abc import Callable, Sequence

import httpx

from ironcore.simulator.device import Stats
from ironcore.simulator.fleet import Member, Report, Target

# A device's JWT is minted once per run (as a device would keep one for its lifetime).
CONNECTIONS = 32


async def send_http(
    api_url: str,
    target: Target,
    members: Sequence[Member],
    rate: float,
    duration: float,
    payload_size: int = 64,
    progress: Callable[[Stats, float], None] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> Report:
    stats = Stats()
    tokens = {m.device_id: m.token() for m in members}
    body = {"binaryData": base64.b64encode(b"x" * payload_size).decode()}
    registry = (
        f"/v1/projects/{target.project}/locations/{target.location}/registries/{target.registry}"
    )
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    started = time.perf_counter()
    deadline = started + duration
    per_device = rate / len(members) if members else 0.0

    async with httpx.AsyncClient(
        base_url=api_url, limits=limits, timeout=30, verify=verify
    ) as client:

        async def run(member: Member) -> None:
            interval = 1.0 / per_device
            next_at = started + random.uniform(0, interval)
            headers = {"Authorization": f"Bearer {tokens[member.device_id]}"}
            path = f"{registry}/devices/{member.device_id}:publishEvent"
            while next_at < deadline:
                now = time.perf_counter()
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                stats.published += 1
                sent = time.perf_counter()
                try:
                    response = await client.post(path, json=body, headers=headers)
                except httpx.HTTPError:
                    stats.errors += 1
                    return
                if response.status_code == 200:
                    stats.acknowledged += 1
                    stats.record_latency(time.perf_counter() - sent)
                else:
                    stats.errors += 1
                next_at += interval

        async def report() -> None:
            while True:
                await asyncio.sleep(1.0)
                if progress is not None:
                    progress(stats, time.perf_counter() - started)

        reporter = asyncio.create_task(report())
        try:
            if per_device > 0:
                await asyncio.gather(*(run(m) for m in members))
        finally:
            reporter.cancel()
    return Report(len(members), len(members), time.perf_counter() - started, stats)
