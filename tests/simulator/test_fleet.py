"""The fleet simulator against a real server: generated keys, TLS, QoS 1 telemetry, and a
config pushed to every connected device."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from ironcore.simulator.fleet import Fleet, Target, tls_context
from ironcore.simulator.provision import register_generated
from tests.bridge.devices import LOCATION, PROJECT
from tests.conftest import Database, Server, events_in_log, start_server, stop_server


def test_fleet_sends_and_every_device_gets_the_config(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        target = Target(
            "localhost",
            server.mqtt_port,
            tls_context(str(server.ca_file)),
            PROJECT,
            LOCATION,
            "fleet",
        )

        async def run() -> tuple[int, int, int]:
            members = await register_generated(server.url, server.token, target, 40, "fleet")
            fleet = Fleet(target, members)
            await fleet.connect_all()
            report = await fleet.send(rate=400, duration=2.0)
            configs_before = fleet.stats.configs
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}
            ) as api:
                registry = f"/v1/projects/{PROJECT}/locations/{LOCATION}/registries/fleet"
                for member in members:
                    r = await api.post(
                        f"{registry}/devices/{member.device_id}:modifyCloudToDeviceConfig",
                        json={"binaryData": base64.b64encode(b"fan-out").decode()},
                    )
                    assert r.status_code == 200, r.text
            for _ in range(100):
                if fleet.stats.configs - configs_before >= len(members):
                    break
                await asyncio.sleep(0.05)
            await fleet.close()
            return (
                len(fleet.devices),
                report.stats.acknowledged,
                fleet.stats.configs - configs_before,
            )

        connected, acknowledged, configs = asyncio.run(run())
        assert connected == 40
        assert acknowledged >= 700  # 400/s for 2 s, give or take the start
        assert configs == 40
    finally:
        stop_server(server)
    logged = events_in_log(server, Database("sqlite://", None))
    assert len(logged) == acknowledged
    assert {attrs["deviceRegistryId"] for _, _, attrs in logged} == {"fleet"}


def simulate(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """`ironcore simulate ARGS` against the server, as its owner."""
    command = [sys.executable, "-m", "ironcore", "--server", server.url, "--project", PROJECT]
    return subprocess.run(
        [*command, "simulate", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "IRONCORE_TOKEN": server.token},
        timeout=120,
    )


def test_simulate_command(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        done = simulate(
            server, "-r", "sim-cli", "--devices", "10", "--rate", "50", "--duration", "1",
            "--mqtt-port", str(server.mqtt_port), "--ca-file", str(server.ca_file),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "10/10 connected" in done.stdout
        assert "0 errors" in done.stdout
        over_http = simulate(
            server, "-r", "sim-http", "--devices", "5", "--rate", "20", "--duration", "1",
            "--protocol", "http",
        )  # fmt: skip
        assert over_http.returncode == 0, over_http.stderr
        sent, acknowledged = (
            int(n) for n in re.findall(r"(\d+) sent, (\d+) acknowledged", over_http.stdout)[0]
        )
        assert sent == acknowledged >= 15
    finally:
        stop_server(server)
