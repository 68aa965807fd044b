"""Device-side helpers for bridge tests: registries and devices through the admin API, JWTs,
and real MQTT clients (paho-mqtt 2.x) over TLS."""

from __future__ import annotations

import base64
import queue
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Server, wait_for
from tests.keys import PrivateKey, es256_key, public_pem

PROJECT, LOCATION = "bridge-project", "us-central1"
CONNACK_3_1_1 = {
    "Success": 0,
    "Unsupported protocol version": 1,
    "Client identifier not valid": 2,
    "Server unavailable": 3,
    "Bad user name or password": 4,
    "Not authorized": 5,
}


def admin(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/v1/projects/{PROJECT}/locations/{LOCATION}",
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=10,
    )


def last_error(server: Server, registry: str, device_id: str, containing: str) -> dict[str, Any]:
    """The device's lastErrorStatus once its message contains `containing`: the MQTT bridge
    writes it behind, like the last* times, within about a second."""

    def status() -> dict[str, Any] | None:
        with admin(server) as api:
            got = api.get(f"/registries/{registry}/devices/{device_id}").json()
        found: dict[str, Any] = got.get("lastErrorStatus", {})
        return found if containing in found.get("message", "") else None

    return wait_for(status, what=f"lastErrorStatus containing {containing!r}")


def create_registry(server: Server, registry_id: str, **extra: Any) -> None:
    body = {
        "id": registry_id,
        "eventNotificationConfigs": [
            {"subfolderMatches": "alerts", "pubsubTopicName": f"projects/{PROJECT}/topics/alerts"},
            {"pubsubTopicName": f"projects/{PROJECT}/topics/events"},
        ],
        "stateNotificationConfig": {"pubsubTopicName": f"projects/{PROJECT}/topics/state"},
        **extra,
    }
    with admin(server) as client:
        response = client.post("/registries", json=body)
        assert response.status_code == 200, response.text


def create_device(
    server: Server,
    registry_id: str,
    device_id: str,
    key: PrivateKey | None = None,
    key_format: str = "ES256_PEM",
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"id": device_id, **extra}
    if key is not None:
        body["credentials"] = [{"publicKey": {"format": key_format, "key": public_pem(key)}}]
    with admin(server) as client:
        response = client.post(f"/registries/{registry_id}/devices", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def client_id(registry_id: str, device_id: str) -> str:
    return f"projects/{PROJECT}/locations/{LOCATION}/registries/{registry_id}/devices/{device_id}"


def make_jwt(
    key: PrivateKey,
    alg: str = "ES256",
    audience: str = PROJECT,
    lifetime: float = 1200,
    **claims: Any,
) -> str:
    now = time.time()
    payload = {"iat": int(now), "exp": int(now + lifetime), "aud": audience, **claims}
    return jwt.encode(payload, key, algorithm=alg)


@dataclass
class Device:
    """A paho-mqtt 2.x client connected the way Cloud IoT Core device code connected."""

    client: mqtt.Client
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    connack: queue.Queue[int] = field(default_factory=queue.Queue)
    disconnects: queue.Queue[int] = field(default_factory=queue.Queue)

    def wait_connack(self, timeout: float = 10) -> int:
        return self.connack.get(timeout=timeout)

    def next_message(self, timeout: float = 10) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def wait_disconnect(self, timeout: float = 10) -> int:
        return self.disconnects.get(timeout=timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 10) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(
    server: Server,
    registry_id: str,
    device_id: str,
    password: str | None,
    subscribe: bool = True,
    keepalive: int = 60,
    wait: bool = True,
) -> Device:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id(registry_id, device_id),
        protocol=mqtt.MQTTv311,
    )
    device = Device(client)
    client.username_pw_set("unused", password)
    client.tls_set(ca_certs=str(server.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        # paho 2 reports a 3.1.1 CONNACK code as an MQTT 5 reason code; translate it back.
        device.connack.put(CONNACK_3_1_1.get(reason.getName(), reason.value))

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        device.messages.put(message)

    def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        device.disconnects.put(reason.value if hasattr(reason, "value") else int(reason))

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    # Device code for Cloud IoT Core queued its subscriptions before CONNACK arrived.
    client.connect("localhost", server.mqtt_port, keepalive=keepalive)
    if subscribe:
        client.subscribe(f"/devices/{device_id}/config", qos=1)
        client.subscribe(f"/devices/{device_id}/commands/#", qos=0)
    client.loop_start()
    if wait:
        assert device.wait_connack() == 0
    return device


def assert_refused(server: Server, registry_id: str, device_id: str, key: PrivateKey) -> None:
    """A new connection of the device, with a fresh JWT signed by `key`, is refused: CONNACK 5
    (not authorized)."""
    again = connect(server, registry_id, device_id, make_jwt(key), wait=False)
    try:
        assert again.wait_connack() == 5
    finally:
        again.client.loop_stop()


def new_key() -> PrivateKey:
    return es256_key()


def block_device(server: Server, registry_id: str, device_id: str) -> None:
    with admin(server) as api:
        r = api.patch(
            f"/registries/{registry_id}/devices/{device_id}",
            params={"updateMask": "blocked"},
            json={"blocked": True},
        )
    assert r.status_code == 200, r.text


def disable_mqtt(server: Server, registry_id: str) -> None:
    with admin(server) as api:
        r = api.patch(
            f"/registries/{registry_id}",
            params={"updateMask": "mqtt_config"},
            json={"mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"}},
        )
    assert r.status_code == 200, r.text


def online(
    server: Server, registry_id: str, device_id: str, key: PrivateKey, subscribe: bool = True
) -> Device:
    """`connect` for tests that want to see a disconnect last: paho would reconnect on its own
    after a second."""
    device = connect(server, registry_id, device_id, make_jwt(key), subscribe=subscribe)
    device.client.reconnect_delay_set(60, 120)
    return device


def send_command(
    server: Server, registry_id: str, device_id: str, data: bytes, subfolder: str = ""
) -> httpx.Response:
    body = {"binaryData": base64.b64encode(data).decode()}
    if subfolder:
        body["subfolder"] = subfolder
    with admin(server) as api:
        return api.post(
            f"/registries/{registry_id}/devices/{device_id}:sendCommandToDevice", json=body
        )


def next_on(device: Device, part: str) -> mqtt.MQTTMessage:
    """The next message on a topic containing `part`, past the others (a subscription's
    config comes first)."""
    while True:
        message = device.next_message(timeout=5)
        if part in message.topic:
            return message
