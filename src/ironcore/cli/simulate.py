"""`ironcore simulate`: run a fleet of simulated MQTT devices against a server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from ironcore.cli.client import Context, err, fail
from ironcore.settings import default_data_dir
from ironcore.simulator.device import Stats
from ironcore.simulator.fleet import Fleet, Target, tls_context
from ironcore.simulator.http import send_http
from ironcore.simulator.provision import members_from_reel, register_generated


def simulate(
    ctx: typer.Context,
    registry: Annotated[str, typer.Option("--registry", "-r", help="Registry for the fleet")],
    devices: Annotated[int, typer.Option(help="How many devices")] = 100,
    rate: Annotated[float, typer.Option(help="Events per second, all devices together")] = 100.0,
    duration: Annotated[float, typer.Option(help="Seconds of telemetry")] = 10.0,
    mqtt_host: Annotated[str, typer.Option(help="MQTT bridge host")] = "localhost",
    mqtt_port: Annotated[int, typer.Option(help="MQTT bridge port (TLS)")] = 8883,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA devices trust (default: <data-dir>/tls/ca.crt)")
    ] = None,
    payload_size: Annotated[int, typer.Option(help="Bytes per event")] = 64,
    prefix: Annotated[str, typer.Option(help="Device ids are PREFIX-000000, …")] = "sim",
    protocol: Annotated[str, typer.Option(help="mqtt or http")] = "mqtt",
    device_url: Annotated[
        str,
        typer.Option(
            help="With --protocol http: the HTTP device bridge's URL (https://host:8081); "
            "default: --server, for a server with --device-http-port 0"
        ),
    ] = "",
    reel: Annotated[
        Path | None,
        typer.Option(help="Run the elements of a reel (imported into the registry) instead"),
    ] = None,
) -> None:
    """Register DEVICES devices with generated keys (or take them from a reel), connect them
    over TLS with ES256 JWTs and send telemetry at RATE events per second for DURATION s."""
    c: Context = ctx.obj
    if not c.token:
        fail("no admin token: set IRONCORE_TOKEN or pass --token")
    if devices < 1:
        fail("--devices must be at least 1")
    if protocol not in ("mqtt", "http"):
        fail("--protocol must be mqtt or http")
    ca = ca_file or default_data_dir() / "tls" / "ca.crt"
    if protocol == "mqtt" and not ca.exists():
        fail(f"no CA file at {ca}: pass --ca-file")
    tls = tls_context(str(ca)) if protocol == "mqtt" else None
    target = Target(mqtt_host, mqtt_port, tls, c.project, c.location, registry)
    report = asyncio.run(
        _run(
            c,
            target,
            devices,
            rate,
            duration,
            payload_size,
            prefix,
            reel,
            protocol,
            device_url or c.server,
        )
    )
    for line in report:
        print(line)


async def _run(
    c: Context,
    target: Target,
    count: int,
    rate: float,
    duration: float,
    payload_size: int,
    prefix: str,
    reel: Path | None,
    protocol: str,
    device_url: str,
) -> list[str]:
    assert c.token is not None
    if reel is not None:
        try:
            members = members_from_reel(reel, target.project)[:count]
        except FileNotFoundError as error:
            fail(str(error))
    else:
        err.print(f"registering {count} devices in {target.registry} …")
        members = await register_generated(c.server, c.token, target, count, prefix, c.verify)
    count = len(members)

    def progress(stats: Stats, elapsed: float) -> None:
        sys.stderr.write(
            f"\r{elapsed:5.0f} s  acked {stats.acknowledged} "
            f"({stats.acknowledged / elapsed:,.0f}/s)  errors {stats.errors}   "
        )
        sys.stderr.flush()

    if protocol == "http":
        err.print(f"publishing from {count} devices over HTTP to {device_url} …")
        report = await send_http(
            device_url, target, members, rate, duration, payload_size, progress, c.verify
        )
        sys.stderr.write("\n")
        return report.lines()[1:3]
    fleet = Fleet(target, members)
    err.print(f"connecting {count} devices to {target.host}:{target.port} …")
    await fleet.connect_all()
    if not fleet.devices:
        fail("no device could connect; is the MQTT bridge up and the CA right?")

    report = await fleet.send(rate, duration, payload_size, progress)
    sys.stderr.write("\n")
    await fleet.close()
    return report.lines()
