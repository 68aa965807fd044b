"""Google's `google-cloud-iot` device manager client set up against a test server, on either of
its transports, as docs/migrating.md sets it up; and what the interop tests make with it."""

from __future__ import annotations

import uuid

from google.auth.credentials import AnonymousCredentials
from google.cloud import iot_v1
from google.oauth2.credentials import Credentials

from tests.conftest import Server

PROJECT, LOCATION = "interop-project", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
WIRES = ("rest", "grpc")


class StaticToken(Credentials):
    """A token that never refreshes: on a refusal google-auth asks for a refresh, then gives
    up."""

    def refresh(self, request: object) -> None:
        pass


class NoToken(AnonymousCredentials):
    """No credentials at all, never refreshed either (the REST transport would ask anonymous
    credentials for a refresh on a 401, which they refuse)."""

    def refresh(self, request: object) -> None:
        pass


def client_for(server: Server, token: str | None, wire: str = "grpc") -> iot_v1.DeviceManagerClient:
    """The client on `wire`: gRPC (its default transport) at the server's gRPC port, or REST at
    its admin API; anonymous without a token."""
    credentials = StaticToken(token=token) if token else NoToken()
    if wire == "rest":
        return iot_v1.DeviceManagerClient(
            credentials=credentials,
            transport="rest",
            client_options={"api_endpoint": server.url},
        )
    assert wire == "grpc", wire
    return iot_v1.DeviceManagerClient(
        credentials=credentials,
        client_options={"api_endpoint": f"127.0.0.1:{server.grpc_port}"},
    )


def own_parent() -> str:
    """A location in a project of the caller's own, for tests that share a server and list
    what they made."""
    return f"projects/{PROJECT}-{uuid.uuid4().hex[:8]}/locations/{LOCATION}"


def registry_with_topic(client: iot_v1.DeviceManagerClient, parent: str, registry_id: str) -> str:
    """A registry with telemetry and state topics, MQTT on and HTTP off; its name."""
    registry = client.create_device_registry(
        parent=parent,
        device_registry={
            "id": registry_id,
            "event_notification_configs": [
                {"pubsub_topic_name": f"projects/{PROJECT}/topics/telemetry"}
            ],
            "state_notification_config": {"pubsub_topic_name": f"projects/{PROJECT}/topics/states"},
            "mqtt_config": {"mqtt_enabled_state": iot_v1.MqttState.MQTT_ENABLED},
            "http_config": {"http_enabled_state": iot_v1.HttpState.HTTP_DISABLED},
        },
    )
    return registry.name
