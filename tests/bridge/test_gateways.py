"""Gateways over MQTT end to end (spec §3.6): a real `ironcore serve`, real TLS, paho-mqtt 2.

A gateway attaches the devices behind it with `/devices/{device}/attach` under its
`gatewayAuthMethod`, then publishes and subscribes for them; failures go to the gateway's
`/devices/{gateway}/errors` topic and never cost the gateway its connection.
"""

from __future__ import annotations

import base64
import json
import queue
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.bridge.devices import (
    PROJECT,
    Device,
    admin,
    block_device,
    connect,
    create_device,
    create_registry,
    last_error,
    make_jwt,
    new_key,
)
from tests.conftest import Database, Server, events_in_log, wait_for

REG = "reg-gw"
GW = "gw-1"
EPOCH = "1970-01-01T00:00:00Z"


class Gateway:
    """A connected gateway: its paho client plus the messages it has not looked at yet."""

    def __init__(self, device: Device, gateway_id: str = GW) -> None:
        self.device = device
        self.gateway_id = gateway_id
        self.unread: list[mqtt.MQTTMessage] = []
        # Don't let paho reconnect behind the test's back after a disconnect.
        device.client.reconnect_delay_set(60, 120)

    @property
    def errors_topic(self) -> str:
        return f"/devices/{self.gateway_id}/errors"

    def publish(self, topic: str, payload: bytes | str) -> None:
        """QoS 1, and wait for the PUBACK."""
        self.device.publish(topic, payload.encode() if isinstance(payload, str) else payload)

    def subscribe(self, topic: str, qos: int) -> None:
        self.device.client.subscribe(topic, qos=qos)

    def expect(self, topic: str, timeout: float = 5.0) -> mqtt.MQTTMessage:
        for message in self.unread:
            if message.topic == topic:
                self.unread.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"nothing arrived on {topic}; other messages: {self.unread}")
            try:
                message = self.device.next_message(timeout=remaining)
            except queue.Empty:
                continue
            if message.topic == topic:
                return message
            self.unread.append(message)

    def error(self, timeout: float = 5.0) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.expect(self.errors_topic, timeout).payload)
        return body

    def no_error(self, within: float = 0.05) -> None:
        """No error arrived. The bridge writes an error before the PUBACK of the message that
        caused it, so once `publish` has returned the error would already be here."""
        try:
            body = self.error(timeout=within)
        except AssertionError:
            return
        raise AssertionError(f"unexpected gateway error {body}")

    def attach(self, device_id: str, payload: str) -> None:
        self.publish(f"/devices/{device_id}/attach", payload)

    def attach_fails(self, device_id: str, payload: str) -> dict[str, Any]:
        """The attach is answered (PUBACK) and an attachment error names the device."""
        self.attach(device_id, payload)
        body = self.error()
        assert body["error_type"] == "GATEWAY_ATTACHMENT_ERROR", body
        assert body["device_id"] == device_id
        assert body["description"]
        return body

    def still_connected(self) -> None:
        """The gateway still gets PUBACKs for its own messages and was never disconnected."""
        self.publish(f"/devices/{self.gateway_id}/events", b"gateway alive")
        assert self.device.disconnects.empty()
        assert self.device.client.is_connected()

    def close(self) -> None:
        self.device.close()


def gateway_registry(server: Server, auth_method: str | None) -> None:
    create_registry(server, REG)
    gateway_config: dict[str, str] = {"gatewayType": "GATEWAY"}
    if auth_method is not None:
        gateway_config["gatewayAuthMethod"] = auth_method
    create_device(server, REG, GW, GATEWAY_KEY, gatewayConfig=gateway_config)


def connect_gateway(server: Server) -> Gateway:
    gateway = Gateway(connect(server, REG, GW, make_jwt(GATEWAY_KEY), subscribe=False))
    gateway.subscribe(gateway.errors_topic, qos=0)
    return gateway


def bind(server: Server, device_id: str) -> None:
    with admin(server) as api:
        r = api.post(
            f"/registries/{REG}:bindDeviceToGateway", json={"gatewayId": GW, "deviceId": device_id}
        )
        assert r.status_code == 200, r.text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def authorization(token: str) -> str:
    return json.dumps({"authorization": token})


GATEWAY_KEY = new_key()


@pytest.mark.parametrize(
    "method", ["ASSOCIATION_ONLY", "DEVICE_AUTH_TOKEN_ONLY", "ASSOCIATION_AND_DEVICE_AUTH_TOKEN"]
)
def test_attach_and_relay(bridge: Server, database: Database, method: str) -> None:
    gateway_registry(bridge, method)
    key, stranger = new_key(), new_key()
    device = create_device(bridge, REG, "dev-1", key, config={"binaryData": b64(b"cfg-for-dev-1")})
    create_device(bridge, REG, "dev-unbound", key)
    needs_binding = method != "DEVICE_AUTH_TOKEN_ONLY"
    needs_token = method != "ASSOCIATION_ONLY"
    if needs_binding:
        bind(bridge, "dev-1")
    gateway = connect_gateway(bridge)
    try:
        # What each method refuses; the gateway stays connected through all of it.
        if needs_binding:
            gateway.attach_fails("dev-unbound", authorization(make_jwt(key)))
        if needs_token:
            gateway.attach_fails("dev-1", "")
            gateway.attach_fails("dev-1", '{"authorization" : ""}')
            gateway.attach_fails("dev-1", authorization(make_jwt(stranger)))
            gateway.attach_fails("dev-1", authorization(make_jwt(key, audience="other-project")))
        gateway.still_connected()
        for topic in ("/devices/dev-1/events", "/devices/dev-1/state"):
            gateway.publish(topic, b"too early")
            assert gateway.error()["error_type"] == "GATEWAY_DEVICE_NOT_FOUND"

        # What each method accepts: every payload shape the samples send.
        if needs_token:
            accepted = [authorization(make_jwt(key))]
        else:
            # The codelab's empty payload, the python sample's empty token, and a token that
            # ASSOCIATION_ONLY ignores.
            accepted = ["", '{"authorization" : ""}', authorization("not.a.jwt")]
        for payload in accepted:
            gateway.attach("dev-1", payload)
            gateway.no_error()
            gateway.publish("/devices/dev-1/events", f"attached with {payload!r}".encode())
            gateway.no_error()
            gateway.publish("/devices/dev-1/detach", b"{}")

        gateway.attach("dev-1", accepted[0])
        gateway.subscribe("/devices/dev-1/config", qos=1)
        config = gateway.expect("/devices/dev-1/config")
        assert config.payload == b"cfg-for-dev-1"
        gateway.subscribe("/devices/dev-1/commands/#", qos=0)
        gateway.publish("/devices/dev-1/events", b"relayed event")
        gateway.publish("/devices/dev-1/events/alerts", b"relayed alert")
        gateway.publish("/devices/dev-1/state", b"relayed state")
        gateway.no_error()

        with admin(bridge) as api:
            r = api.post(
                f"/registries/{REG}/devices/dev-1:sendCommandToDevice",
                json={"binaryData": b64(b"open"), "subfolder": "valve"},
            )
            assert r.status_code == 200, r.text
            assert gateway.expect("/devices/dev-1/commands/valve").payload == b"open"
            r = api.post(
                f"/registries/{REG}/devices/dev-1:modifyCloudToDeviceConfig",
                json={"binaryData": b64(b"cfg-2")},
            )
            assert r.status_code == 200, r.text
            assert gateway.expect("/devices/dev-1/config").payload == b"cfg-2"
            # A command for the gateway itself fails: it never subscribed to its own commands.
            r = api.post(
                f"/registries/{REG}/devices/{GW}:sendCommandToDevice",
                json={"binaryData": b64(b"x")},
            )
            assert r.status_code == 400, r.text
            assert r.json()["error"]["status"] == "FAILED_PRECONDITION"

            def gateway_bookkept() -> dict[str, Any] | None:
                got: dict[str, Any] = api.get(f"/registries/{REG}/devices/dev-1").json()
                accessed = got["gatewayConfig"].get("lastAccessedGatewayTime", EPOCH)
                return got if accessed != EPOCH and got["lastEventTime"] != EPOCH else None

            got = wait_for(gateway_bookkept, timeout=5, what="gatewayConfig.lastAccessedGateway*")
            assert got["gatewayConfig"]["lastAccessedGatewayId"] == GW
            states = api.get(f"/registries/{REG}/devices/dev-1/states").json()["deviceStates"]
            assert base64.b64decode(states[0]["binaryData"]) == b"relayed state"
        gateway.still_connected()
    finally:
        gateway.close()

    logged = {data: (topic, attrs) for topic, data, attrs in events_in_log(bridge, database)}
    topic, attrs = logged[b"relayed event"]
    assert topic == f"projects/{PROJECT}/topics/events"
    assert attrs["deviceId"] == "dev-1"
    assert attrs["deviceNumId"] == device["numId"]
    topic, attrs = logged[b"relayed alert"]
    assert (topic, attrs["deviceId"], attrs["subFolder"]) == (
        f"projects/{PROJECT}/topics/alerts",
        "dev-1",
        "alerts",
    )
    assert logged[b"relayed state"][1]["deviceId"] == "dev-1"
    for payload in accepted:
        assert logged[f"attached with {payload!r}".encode()][1]["deviceId"] == "dev-1"
    assert b"too early" not in logged
    assert logged[b"gateway alive"][1]["deviceId"] == GW


def test_attachment_errors_and_detach(bridge: Server) -> None:
    gateway_registry(bridge, "ASSOCIATION_ONLY")
    key = new_key()
    create_device(bridge, REG, "dev-1", key)
    create_device(bridge, REG, "dev-blocked", key, blocked=True)
    # A gateway cannot be attached to another gateway.
    create_device(bridge, REG, "gw-other", key, gatewayConfig={"gatewayType": "GATEWAY"})
    bind(bridge, "dev-1")
    bind(bridge, "dev-blocked")
    gateway = connect_gateway(bridge)
    try:
        gateway.attach_fails("nobody-here", "")
        gateway.attach_fails("dev-blocked", "")
        gateway.attach_fails("gw-other", "")
        gateway.still_connected()

        # Publishing for a device that is not attached: an error with the message's details.
        gateway.device.client.publish("/devices/dev-1/state", b"s", qos=1).wait_for_publish(5)
        body = gateway.error()
        assert body["error_type"] == "GATEWAY_DEVICE_NOT_FOUND"
        assert body["device_id"] == "dev-1"
        assert body["mqtt_message_info"]["topic"] == "/devices/dev-1/state"
        assert body["mqtt_message_info"]["message_type"] == "PUBLISH"
        gateway.still_connected()

        # Detach with "{}" and with an empty payload: the device is gone again each time.
        for detach in ("{}", ""):
            gateway.attach("dev-1", "")
            gateway.publish("/devices/dev-1/events", b"while attached")
            gateway.no_error()
            gateway.publish("/devices/dev-1/detach", detach)
            gateway.publish("/devices/dev-1/events", b"after detach")
            body = gateway.error()
            assert (body["error_type"], body["device_id"]) == ("GATEWAY_DEVICE_NOT_FOUND", "dev-1")
        gateway.still_connected()

        # A detached device's topics cannot be subscribed to either (SUBACK 128).
        granted: queue.Queue[list[int]] = queue.Queue()

        def on_subscribe(_c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
            granted.put([code.value for code in codes])

        gateway.device.client.on_subscribe = on_subscribe
        gateway.subscribe("/devices/dev-1/config", qos=1)
        assert granted.get(timeout=5) == [0x80]
        gateway.still_connected()
    finally:
        gateway.close()

    # A gateway without a gatewayAuthMethod attaches nothing, bound or not, token or not.
    create_device(bridge, REG, "gw-no-method", key, gatewayConfig={"gatewayType": "GATEWAY"})
    with admin(bridge) as api:
        r = api.post(
            f"/registries/{REG}:bindDeviceToGateway",
            json={"gatewayId": "gw-no-method", "deviceId": "dev-1"},
        )
        assert r.status_code == 200, r.text
    unspecified = Gateway(
        connect(bridge, REG, "gw-no-method", make_jwt(key), subscribe=False), "gw-no-method"
    )
    unspecified.subscribe(unspecified.errors_topic, qos=0)
    try:
        unspecified.attach_fails("dev-1", "")
        unspecified.attach_fails("dev-1", authorization(make_jwt(key)))
        unspecified.still_connected()
    finally:
        unspecified.close()


@pytest.mark.databases("sqlite")
def test_an_attach_payload_nested_too_deeply_carries_no_token(bridge: Server) -> None:
    """An attach payload that is not JSON, deeply nested included, is one without a token:
    ASSOCIATION_ONLY attaches the bound device, and the gateway stays connected."""
    gateway_registry(bridge, "ASSOCIATION_ONLY")
    create_device(bridge, REG, "dev-1", new_key())
    bind(bridge, "dev-1")
    gateway = connect_gateway(bridge)
    try:
        for payload in ("[" * 5000 + "]" * 5000, '{"authorization": ' + "[" * 5000):
            gateway.attach("dev-1", payload)
            gateway.no_error()
            gateway.publish("/devices/dev-1/events", b"attached")
            gateway.no_error()
            gateway.still_connected()
    finally:
        gateway.close()


def test_non_gateway_attach_disconnects_and_blocking_detaches(bridge: Server) -> None:
    gateway_registry(bridge, "ASSOCIATION_ONLY")
    key = new_key()
    create_device(bridge, REG, "dev-1", key)
    create_device(bridge, REG, "dev-plain", key)
    bind(bridge, "dev-1")

    plain = connect(bridge, REG, "dev-plain", make_jwt(key), subscribe=False)
    plain.client.reconnect_delay_set(60, 120)
    try:
        plain.client.publish("/devices/dev-1/attach", b"", qos=1)
        plain.wait_disconnect(timeout=5)
        last_error(bridge, REG, "dev-plain", "attach")
    finally:
        plain.client.loop_stop()

    gateway = connect_gateway(bridge)
    try:
        gateway.attach("dev-1", "")
        gateway.publish("/devices/dev-1/events", b"before block")
        gateway.no_error()
        block_device(bridge, REG, "dev-1")
        body = gateway.error(timeout=2)
        assert (body["error_type"], body["device_id"]) == (
            "GATEWAY_DETACHMENT_DEVICE_ERROR",
            "dev-1",
        )
        gateway.publish("/devices/dev-1/events", b"after block")
        assert gateway.error()["error_type"] == "GATEWAY_DEVICE_NOT_FOUND"
        gateway.still_connected()
        # Blocked devices cannot be attached again.
        gateway.attach_fails("dev-1", "")
        gateway.still_connected()
    finally:
        gateway.close()
