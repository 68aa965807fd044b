"""The `ironcore` command: `serve` runs a server; every other noun talks to one over REST."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import typer

from ironcore.access.forwarded import parse_trusted_proxies
from ironcore.cli import (
    audit,
    ca,
    devices,
    factory,
    firmware,
    gateways,
    iam,
    manifest,
    pubsub,
    registries,
    service_accounts,
    simulate,
    tokens,
)
from ironcore.cli.client import Context, token_from, trusted
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
app.add_typer(audit.app, name="audit")
app.add_typer(service_accounts.app, name="service-accounts")
app.add_typer(iam.app, name="iam")
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
    ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar="IRONCORE_CA_FILE",
            help="CA certificate an https --server is checked against, beside the system's "
            "(default: <data-dir>/tls/ca.crt, the local CA, when it exists)",
        ),
    ] = None,
    project: Annotated[str, typer.Option(envvar="IRONCORE_PROJECT")] = "my-project",
    location: Annotated[str, typer.Option(envvar="IRONCORE_LOCATION")] = "us-central1",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    ctx.obj = Context(
        server, token_from(token, None), project, location, as_json, trusted(ca_file, None)
    )


@app.command()
def serve(
    data_dir: Annotated[
        Path | None, typer.Option(envvar="IRONCORE_DATA_DIR", help="Default: ~/.ironcore")
    ] = None,
    api_host: Annotated[
        str,
        typer.Option(
            envvar="IRONCORE_API_HOST",
            help="Address of the admin API; one other than loopback needs --api-tls or "
            "--api-cert/--api-key (or --insecure-api)",
        ),
    ] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(envvar="IRONCORE_API_PORT")] = 8080,
    api_tls: Annotated[
        bool,
        typer.Option(
            envvar="IRONCORE_API_TLS",
            help="Serve the admin API over TLS with the bridges' certificate (the local CA's, "
            "or --tls-cert's)",
        ),
    ] = False,
    api_cert: Annotated[
        Path | None,
        typer.Option(envvar="IRONCORE_API_CERT", help="The admin API's own certificate chain"),
    ] = None,
    api_key: Annotated[
        Path | None, typer.Option(envvar="IRONCORE_API_KEY", help="Its private key (PEM)")
    ] = None,
    insecure_api: Annotated[
        bool,
        typer.Option(
            envvar="IRONCORE_INSECURE_API",
            help="Serve the admin API in plain HTTP on an address other than loopback "
            "(admin tokens cross the network in clear)",
        ),
    ] = False,
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
    pubsub_emulator_port: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_PUBSUB_EMULATOR_PORT",
            help="Plaintext gRPC Pub/Sub (Publisher, Subscriber) for clients with "
            "PUBSUB_EMULATOR_HOST; no authentication, limited permissions; 0 turns it off",
        ),
    ] = 0,
    pubsub_emulator_host: Annotated[
        str,
        typer.Option(
            envvar="IRONCORE_PUBSUB_EMULATOR_HOST",
            help="Address of --pubsub-emulator-port (anyone who reaches it may publish and "
            "consume)",
        ),
    ] = "127.0.0.1",
    grpc_max_concurrent_rpcs: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_GRPC_MAX_CONCURRENT_RPCS",
            min=1,
            help="Calls (streams included) each gRPC port runs at once; more are refused "
            "with RESOURCE_EXHAUSTED",
        ),
    ] = 1000,
    pubsub_emulator_as: Annotated[
        str,
        typer.Option(
            envvar="IRONCORE_PUBSUB_EMULATOR_AS",
            help="Service account (email, or NAME) whose roles the --pubsub-emulator-port's "
            "calls have; default: publish, consume, read, create subscriptions",
        ),
    ] = "",
    public_url: Annotated[
        str,
        typer.Option(
            envvar="IRONCORE_PUBLIC_URL",
            help="URL clients reach the API by (https://host[:port]/), for the discovery "
            "document; default: the URL each request was sent to",
        ),
    ] = "",
    device_http_port: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_DEVICE_HTTP_PORT",
            help="The HTTP device bridge's own port, over TLS with the bridges' certificate; "
            "0 serves it on the API port instead",
        ),
    ] = 8081,
    device_http_host: Annotated[
        str,
        typer.Option(envvar="IRONCORE_DEVICE_HTTP_HOST", help="Address of --device-http-port"),
    ] = "0.0.0.0",
    insecure_device_http: Annotated[
        bool,
        typer.Option(
            envvar="IRONCORE_INSECURE_DEVICE_HTTP",
            help="Serve --device-http-port in plain HTTP (device JWTs travel in clear)",
        ),
    ] = False,
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
    audit_retention_days: Annotated[
        float,
        typer.Option(
            envvar="IRONCORE_AUDIT_RETENTION_DAYS", help="Keep audit log entries this long"
        ),
    ] = 400.0,
    audit_denials_per_minute: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_AUDIT_DENIALS_PER_MINUTE",
            min=1,
            help="Record at most this many refused calls per client address a minute",
        ),
    ] = 20,
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
    secret_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="IRONCORE_SECRET_KEY_FILE",
            help="Secret the cluster's generated TLS keys are encrypted under in the database; "
            "the same file on every server (default: <data-dir>/secret-key)",
        ),
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
    bus_lease: Annotated[
        float,
        typer.Option(
            envvar="IRONCORE_BUS_LEASE",
            min=0.3,
            max=3600,
            help="Seconds a server joined by --bus may stay silent before the others take its "
            "devices as not connected (it says it is alive every third of it)",
        ),
    ] = 10.0,
    mqtt_proxy_protocol: Annotated[
        bool,
        typer.Option(
            envvar="IRONCORE_MQTT_PROXY_PROTOCOL",
            help="The MQTT ports sit behind a load balancer sending a PROXY protocol v2 header "
            "(HAProxy send-proxy-v2); connections without one are closed. Needs "
            "--trusted-proxies naming the balancer",
        ),
    ] = False,
    trusted_proxies: Annotated[
        str,
        typer.Option(
            envvar="IRONCORE_TRUSTED_PROXIES",
            help="Load balancers (addresses and CIDR networks, comma-separated) whose "
            "X-Forwarded-For and PROXY protocol headers name the client, for the audit log and "
            "the back-off of failed authentication (default: none, loopback included)",
        ),
    ] = "",
    http_max_connections: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_HTTP_MAX_CONNECTIONS",
            min=0,
            help="Connections each HTTP and gRPC port holds at most (0: derived from the "
            "open-file limit)",
        ),
    ] = 0,
    mqtt_max_connections: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_MQTT_MAX_CONNECTIONS",
            min=0,
            help="MQTT connections each process holds at most (0: derived from the open-file "
            "limit)",
        ),
    ] = 0,
    open_files_reserve: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_OPEN_FILES_RESERVE",
            min=0,
            help="File descriptors kept from the connection caps for the database, NATS and "
            "files (0: a tenth of the limit, at least 64)",
        ),
    ] = 0,
    http_header_timeout: Annotated[
        float,
        typer.Option(
            envvar="IRONCORE_HTTP_HEADER_TIMEOUT",
            min=0.1,
            help="Seconds an HTTP client has to send a request's head",
        ),
    ] = 10.0,
    http_body_timeout: Annotated[
        float,
        typer.Option(
            envvar="IRONCORE_HTTP_BODY_TIMEOUT",
            min=0.1,
            help="Longest pause in an HTTP request body, and the grace before its minimum rate",
        ),
    ] = 10.0,
    http_body_min_rate: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_HTTP_BODY_MIN_RATE",
            min=1,
            help="Bytes a second an HTTP request body must average after the grace",
        ),
    ] = 1024,
    http_idle_timeout: Annotated[
        int,
        typer.Option(
            envvar="IRONCORE_HTTP_IDLE_TIMEOUT",
            min=1,
            help="Seconds a kept-alive HTTP connection may stay idle",
        ),
    ] = 5,
) -> None:
    """Run ironcore: the admin API (REST and gRPC) and the MQTT bridge."""
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    if (api_cert is None) != (api_key is None):
        raise typer.BadParameter("give both --api-cert and --api-key, or neither")
    if api_cert is not None and api_tls:
        raise typer.BadParameter("give --api-tls or --api-cert/--api-key, not both")
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
            api_tls=api_tls,
            api_cert=api_cert,
            api_key=api_key,
            insecure_api=insecure_api,
            database_url=database_url,
            database_schema=database_schema,
            log_format=log_format,
            log_level=log_level,
            grpc_port=grpc_port,
            pubsub_emulator_port=pubsub_emulator_port,
            pubsub_emulator_host=pubsub_emulator_host,
            grpc_max_concurrent_rpcs=grpc_max_concurrent_rpcs,
            pubsub_emulator_as=pubsub_emulator_as,
            public_url=public_url_option(public_url),
            device_http_port=device_http_port,
            device_http_host=device_http_host,
            insecure_device_http=insecure_device_http,
            event_retention_days=event_retention_days,
            audit_retention_days=audit_retention_days,
            audit_denials_per_minute=audit_denials_per_minute,
            nats_url=nats_url,
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            mqtt_second_port=mqtt_second_port,
            insecure_mqtt_port=insecure_mqtt_port,
            mqtt_hostnames=tuple(mqtt_hostname or ()),
            tls_cert=tls_cert,
            tls_key=tls_key,
            secret_key_file=secret_key_file,
            http_max_connections=http_max_connections,
            mqtt_max_connections=mqtt_max_connections,
            open_files_reserve=open_files_reserve,
            http_header_timeout=http_header_timeout,
            http_body_timeout=http_body_timeout,
            http_body_min_rate=http_body_min_rate,
            http_idle_timeout=http_idle_timeout,
            mqtt_workers=mqtt_workers,
            bus_url=bus,
            bus_lease_seconds=bus_lease,
            mqtt_proxy_protocol=mqtt_proxy_protocol,
            trusted_proxies=trusted_proxies_option(trusted_proxies),
        )
    )


def trusted_proxies_option(value: str) -> tuple[str, ...]:
    """`--trusted-proxies` as normalized networks; BadParameter naming an entry that is not."""
    try:
        return parse_trusted_proxies(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--trusted-proxies") from None


def public_url_option(value: str) -> str:
    """`--public-url` as the discovery document's rootUrl: scheme://host[:port][/path]/, with
    the trailing slash clients join paths to; empty stays empty."""
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typer.BadParameter(
            f"{value!r} is not an http(s)://host[:port]/ URL", param_hint="--public-url"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise typer.BadParameter(
            f"{value!r} has a query, fragment or user; give scheme://host[:port]/ only",
            param_hint="--public-url",
        )
    try:
        # urlsplit checks the port only when asked for it.
        _ = parts.port
    except ValueError as error:
        raise typer.BadParameter(f"{value!r}: {error}", param_hint="--public-url") from None
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/"))


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
