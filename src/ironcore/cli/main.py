"""The `ironcore` command: `serve` runs a server; every other noun talks to one over REST."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ironcore.cli import (
    ca,
    devices,
    factory,
    firmware,
    gateways,
    manifest,
    pubsub,
    registries,
    simulate,
    tokens,
)
from ironcore.cli.client import Context, token_from
from ironcore.settings import Settings, default_data_dir

app = typer.Typer(
    name="ironcore",
    help="Self-hosted device identity and connectivity, compatible with Cloud IoT Core.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(registries.app, name="registries")
app.add_typer(devices.app, name="devices")
app.add_typer(gateways.app, name="gateways")
app.add_typer(tokens.app, name="tokens")
app.add_typer(ca.app, name="ca")
app.add_typer(factory.app, name="factory")
app.add_typer(manifest.app, name="manifest")
app.add_typer(firmware.app, name="firmware")
app.add_typer(pubsub.topics_app, name="topics")
app.add_typer(pubsub.subscriptions_app, name="subscriptions")
app.add_typer(pubsub.events_app, name="events")
app.command("simulate")(simulate.simulate)


@app.callback()
def main(
    ctx: typer.Context,
    server: Annotated[
        str, typer.Option(envvar="IRONCORE_SERVER", help="URL of the ironcore admin API")
    ] = "http://127.0.0.1:8080",
    token: Annotated[
        str | None,
        typer.Option(help="Admin token (default: $IRONCORE_TOKEN, else <data-dir>/admin-token)"),
    ] = None,
    project: Annotated[str, typer.Option(envvar="IRONCORE_PROJECT")] = "my-project",
    location: Annotated[str, typer.Option(envvar="IRONCORE_LOCATION")] = "us-central1",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    ctx.obj = Context(server, token_from(token, None), project, location, as_json)


@app.command()
def serve(
    data_dir: Annotated[
        Path | None, typer.Option(envvar="IRONCORE_DATA_DIR", help="Default: ~/.ironcore")
    ] = None,
    api_host: Annotated[str, typer.Option(envvar="IRONCORE_API_HOST")] = "0.0.0.0",
    api_port: Annotated[int, typer.Option(envvar="IRONCORE_API_PORT")] = 8080,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="IRONCORE_DATABASE_URL",
            help="postgresql://… (default: SQLite in the data directory)",
        ),
    ] = "",
    database_schema: Annotated[
        str, typer.Option(envvar="IRONCORE_DATABASE_SCHEMA", help="PostgreSQL schema to use")
    ] = "",
    log_format: Annotated[
        str, typer.Option(envvar="IRONCORE_LOG_FORMAT", help="text or json")
    ] = "text",
    log_level: Annotated[str, typer.Option(envvar="IRONCORE_LOG_LEVEL")] = "info",
    grpc_port: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_GRPC_PORT",
            help="gRPC API (google.cloud.iot.v1.DeviceManager) over TLS, on the API host; "
            "0 turns it off",
        ),
    ] = 8443,
    device_http_port: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_DEVICE_HTTP_PORT",
            help="Serve the HTTP device bridge on this port instead of the API port",
        ),
    ] = 0,
    nats_url: Annotated[
        str,
        typer.Option(
            envvar="IRONCORE_NATS_URL", help="NATS (JetStream) for topics with backend nats"
        ),
    ] = "",
    event_retention_days: Annotated[
        float,
        typer.Option(envvar="IRONCORE_EVENT_RETENTION_DAYS", help="Keep events this long"),
    ] = 7.0,
    mqtt_host: Annotated[str, typer.Option(envvar="IRONCORE_MQTT_HOST")] = "0.0.0.0",
    mqtt_port: Annotated[
        int, typer.Option(envvar="IRONCORE_MQTT_PORT", help="MQTT over TLS; 0 turns it off")
    ] = 8883,
    mqtt_second_port: Annotated[
        int,
        typer.Option(envvar="IRONCORE_MQTT_SECOND_PORT", help="Another TLS port, e.g. 443"),
    ] = 0,
    insecure_mqtt_port: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_INSECURE_MQTT_PORT",
            help="Plaintext MQTT for local testing only (JWTs travel in clear)",
        ),
    ] = 0,
    mqtt_hostname: Annotated[
        list[str] | None,
        typer.Option(
            help="Name devices use to reach the bridge (repeatable); goes in the "
            "generated server certificate"
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(envvar="IRONCORE_TLS_CERT", help="Your own bridge certificate chain (PEM)"),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="IRONCORE_TLS_KEY", help="Its private key (PEM)")
    ] = None,
    mqtt_workers: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_MQTT_WORKERS",
            min=1,
            max=64,
            help="Processes accepting MQTT connections on the same ports (SO_REUSEPORT), "
            "this one included",
        ),
    ] = 1,
    bus: Annotated[
        str,
        typer.Option(
            envvar="IRONCORE_BUS",
            help="NATS (nats://host:4222) joining the servers that share this database: "
            "configs, commands, session takeover and live disconnects across servers",
        ),
    ] = "",
) -> None:
    """Run ironcore: the admin API (REST and gRPC) and the MQTT bridge."""
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    from ironcore.runtime import primary

    if log_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    if log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise typer.BadParameter(
            "must be debug, info, warning, error or critical", param_hint="--log-level"
        )
    primary.run(
        Settings(
            data_dir=data_dir or default_data_dir(),
            api_host=api_host,
            api_port=api_port,
            database_url=database_url,
            database_schema=database_schema,
            log_format=log_format,
            log_level=log_level,
            grpc_port=grpc_port,
            device_http_port=device_http_port,
            event_retention_days=event_retention_days,
            nats_url=nats_url,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            mqtt_second_port=mqtt_second_port,
            insecure_mqtt_port=insecure_mqtt_port,
            mqtt_hostnames=tuple(mqtt_hostname or ()),
            tls_cert=tls_cert,
            tls_key=tls_key,
            mqtt_workers=mqtt_workers,
            bus_url=bus,
        )
    )


@app.command()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Empty directory to use (default: a new temporary one)")
    ] = None,
) -> None:
    """Tell the whole story in under a minute: PKI, a reel, import, telemetry, config,
    commands, key rotation and revocation, against a server it starts."""
    from ironcore.demo import DemoFailed, run_demo

    try:
        run_demo(data_dir)
    except DemoFailed as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
