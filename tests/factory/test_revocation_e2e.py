"""Reel → import → each element signs its JWT and connects; revoking the batch signer
disconnects them at once and refuses them from then on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from ironcore.simulator.device import DeviceRefused, Stats, connect
from ironcore.simulator.fleet import Fleet, Target, tls_context
from ironcore.simulator.provision import members_from_reel
from tests.conftest import start_server, stop_server, wait_for
from tests.factory.test_cli import ironcore

PROJECT = "my-project"


@pytest.mark.parametrize("processes", [1, 2])
def test_revoking_the_batch_disconnects_and_refuses_its_devices(
    tmp_path: Path, processes: int
) -> None:
    """With 2 processes (`--mqtt-workers 2`) the devices spread over both, and a worker must see
    the signer revoked a moment ago when the primary tells it to check its devices again."""
    server = start_server(tmp_path / "data", None, ["--mqtt-workers", str(processes)])
    try:
        pki, reel = str(tmp_path / "pki"), tmp_path / "reel"

        def run(*args: str) -> str:
            done = ironcore(server, tmp_path, *args)
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        run("ca", "init", "--dir", pki, "--org", "Acme")
        run("ca", "signer", "create", "--batch", "b7", "--dir", pki)
        run("factory", "reel", "--signer", "b7", "--count", "8", "--out", str(reel), "--dir", pki)
        run(
            "--project",
            PROJECT,
            "registries",
            "create",
            "reel-reg",
            "--event-topic",
            f"projects/{PROJECT}/topics/telemetry",
        )
        run(
            "--project",
            PROJECT,
            "manifest",
            "import",
            str(reel / "manifest.json"),
            "-r",
            "reel-reg",
            "--trust-signer",
            f"{pki}/manifest-signer.crt",
            "--trust-root",
            f"{pki}/root.crt",
        )

        target = Target(
            "localhost",
            server.mqtt_port,
            tls_context(str(server.ca_file)),
            PROJECT,
            "us-central1",
            "reel-reg",
        )
        members = members_from_reel(reel, PROJECT)

        async def connected_fleet() -> Fleet:
            fleet = Fleet(target, members)
            await fleet.connect_all()
            return fleet

        async def story() -> tuple[int, float, int]:
            fleet = await connected_fleet()
            report = await fleet.send(rate=30, duration=1.0)
            started = time.monotonic()
            await asyncio.to_thread(
                run,
                "ca",
                "signer",
                "revoke",
                "--batch",
                "b7",
                "--dir",
                pki,
                "--reason",
                "keyCompromise",
                "--server",
                server.url,
            )
            await asyncio.wait_for(asyncio.gather(*(d.wait_closed() for d in fleet.devices)), 10)
            took = time.monotonic() - started
            refused = 0
            for member in members:
                try:
                    device = await connect(
                        target.host,
                        target.port,
                        target.tls,
                        target.client_id(member.device_id),
                        member.device_id,
                        member.token(),
                        Stats(),
                    )
                    device.close()
                except DeviceRefused as error:
                    refused += error.return_code == 5
            return report.stats.acknowledged, took, refused

        acknowledged, took, refused = asyncio.run(story())
        assert acknowledged >= 20
        # The revoke command itself (a process start and a CRL) is included in this figure.
        assert took < 10
        assert refused == len(members) == 8
        device_id = members[0].device_id

        def last_error() -> str:
            r = httpx.get(
                f"{server.url}/v1/projects/{PROJECT}/locations/us-central1/registries/reel-reg/devices/{device_id}",
                headers={"Authorization": f"Bearer {server.token}"},
            )
            message: str = r.json().get("lastErrorStatus", {}).get("message", "")
            return message

        # The bridge writes lastErrorStatus behind, within about a second.
        wait_for(lambda: "revoked" in last_error(), what="lastErrorStatus naming the revocation")
    finally:
        stop_server(server)
