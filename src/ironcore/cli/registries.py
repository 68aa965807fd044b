"""`ironcore registries …`"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ironcore.cli.client import Context, fail, read_text

app = typer.Typer(help="Device registries.", no_args_is_help=True)
COLUMNS = ["id", "mqtt", "http", "eventTopics", "stateTopic", "caCertificates"]

EventTopic = Annotated[
    list[str] | None,
    typer.Option(
        "--event-topic", help="TOPIC or SUBFOLDER=TOPIC (repeatable; TOPIC is projects/P/topics/T)"
    ),
]
StateTopic = Annotated[str | None, typer.Option(help="Topic for state notifications")]
Mqtt = Annotated[bool | None, typer.Option("--mqtt/--no-mqtt", help="Enable the MQTT bridge")]
Http = Annotated[bool | None, typer.Option("--http/--no-http", help="Enable the HTTP bridge")]
CaCert = Annotated[
    list[Path] | None, typer.Option("--ca-cert", help="PEM CA certificate file (repeatable)")
]


def _body(
    event_topic: list[str] | None,
    state_topic: str | None,
    mqtt: bool | None,
    http: bool | None,
    ca_cert: list[Path] | None,
) -> tuple[dict[str, Any], list[str]]:
    body: dict[str, Any] = {}
    mask = []
    if event_topic is not None:
        configs = []
        for item in event_topic:
            subfolder, _, topic = item.rpartition("=")
            configs.append({"subfolderMatches": subfolder, "pubsubTopicName": topic})
        body["eventNotificationConfigs"] = configs
        mask.append("eventNotificationConfigs")
    if state_topic is not None:
        body["stateNotificationConfig"] = {"pubsubTopicName": state_topic}
        mask.append("stateNotificationConfig")
    if mqtt is not None:
        body["mqttConfig"] = {"mqttEnabledState": "MQTT_ENABLED" if mqtt else "MQTT_DISABLED"}
        mask.append("mqttConfig")
    if http is not None:
        body["httpConfig"] = {"httpEnabledState": "HTTP_ENABLED" if http else "HTTP_DISABLED"}
        mask.append("httpConfig")
    if ca_cert is not None:
        body["credentials"] = [
            {
                "publicKeyCertificate": {
                    "format": "X509_CERTIFICATE_PEM",
                    "certificate": read_text(p),
                }
            }
            for p in ca_cert
        ]
        mask.append("credentials")
    return body, mask


def _row(registry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": registry.get("id"),
        "mqtt": registry.get("mqttConfig", {}).get("mqttEnabledState", "MQTT_STATE_UNSPECIFIED")
        != "MQTT_DISABLED",
        "http": registry.get("httpConfig", {}).get("httpEnabledState", "HTTP_STATE_UNSPECIFIED")
        != "HTTP_DISABLED",
        "eventTopics": ", ".join(
            (f"{c['subfolderMatches']}=" if c.get("subfolderMatches") else "")
            + c.get("pubsubTopicName", "")
            for c in registry.get("eventNotificationConfigs", [])
        ),
        "stateTopic": registry.get("stateNotificationConfig", {}).get("pubsubTopicName", ""),
        "caCertificates": len(registry.get("credentials", [])),
    }


@app.command()
def create(
    ctx: typer.Context,
    registry_id: str,
    event_topic: EventTopic = None,
    state_topic: StateTopic = None,
    mqtt: Mqtt = None,
    http: Http = None,
    ca_cert: CaCert = None,
) -> None:
    """Create a registry."""
    c: Context = ctx.obj
    body, _ = _body(event_topic, state_topic, mqtt, http, ca_cert)
    registry = c.call("POST", f"{c.location_path}/registries", {"id": registry_id, **body})
    c.show(registry, COLUMNS, [_row(registry)])


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List registries."""
    c: Context = ctx.obj
    registries: list[dict[str, Any]] = []
    token = ""
    while True:
        page = c.call("GET", f"{c.location_path}/registries", params={"pageToken": token})
        registries += page.get("deviceRegistries", [])
        token = page.get("nextPageToken", "")
        if not token:
            break
    c.show({"deviceRegistries": registries}, COLUMNS, [_row(r) for r in registries])


@app.command()
def get(ctx: typer.Context, registry_id: str) -> None:
    """Show a registry."""
    c: Context = ctx.obj
    c.show(c.call("GET", c.registry_path(registry_id)))


@app.command()
def patch(
    ctx: typer.Context,
    registry_id: str,
    event_topic: EventTopic = None,
    state_topic: StateTopic = None,
    mqtt: Mqtt = None,
    http: Http = None,
    ca_cert: CaCert = None,
) -> None:
    """Change a registry's topics, bridges or CA certificates."""
    c: Context = ctx.obj
    body, mask = _body(event_topic, state_topic, mqtt, http, ca_cert)
    if not mask:
        fail("nothing to change: give at least one option")
    registry = c.call(
        "PATCH", c.registry_path(registry_id), body, params={"updateMask": ",".join(mask)}
    )
    c.show(registry, COLUMNS, [_row(registry)])


@app.command()
def delete(ctx: typer.Context, registry_id: str) -> None:
    """Delete an empty registry."""
    c: Context = ctx.obj
    c.call("DELETE", c.registry_path(registry_id))
    c.show({"deleted": registry_id}, ["deleted"], [{"deleted": registry_id}])
