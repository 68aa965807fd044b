"""The MQTT bridge end to end: a real `ironcore serve`, real TLS, real paho-mqtt clients."""

from __future__ import annotations

import base64
import hashlib
import queue
import time
from typing import Any

import httpx
import pytest

from ironcore.registry.wire import parse_timestamp
from tests.bridge.devices import (
    PROJECT,
    admin,
    assert_refused,
    connect,
    create_device,
    create_registry,
    last_error,
    make_jwt,
    new_key,
)
from tests.conftest import Database, Server, events_in_log, wait_for
from tests.keys import rsa_key


def test_device_round_trip(bridge: Server, database: Database) -> None:
    create_registry(bridge, "reg-e2e")
    key = new_key()
    created = create_device(bridge, "reg-e2e", "dev-e2e", key)
    device = connect(bridge, "reg-e2e", "dev-e2e", make_jwt(key))
    try:
        first = device.next_message()
        assert first.topic == "/devices/dev-e2e/config"
        assert first.payload == b""

        device.publish("/devices/dev-e2e/events", b"temp=21")
        device.publish("/devices/dev-e2e/events/alerts", b"fire")
        device.publish("/devices/dev-e2e/events/other/deep", b"x")
        device.publish("/devices/dev-e2e/state", b"state-1")
        # A second state within the second waits for its turn, then is acknowledged and stored
        # (the same rule as the HTTP bridge's, bridge/channel.py).
        device.publish("/devices/dev-e2e/state", b"state-2")

        with admin(bridge) as api:
            r = api.post(
                "/registries/reg-e2e/devices/dev-e2e:modifyCloudToDeviceConfig",
                json={"binaryData": base64.b64encode(b"cfg-2").decode()},
            )
            assert r.status_code == 200, r.text
            pushed = device.next_message()
            assert (pushed.topic, pushed.payload) == ("/devices/dev-e2e/config", b"cfg-2")

            r = api.post(
                "/registries/reg-e2e/devices/dev-e2e:sendCommandToDevice",
                json={"binaryData": base64.b64encode(b"reboot").decode(), "subfolder": "sys"},
            )
            assert r.status_code == 200, r.text
            command = device.next_message()
            assert (command.topic, command.payload) == ("/devices/dev-e2e/commands/sys", b"reboot")
            # Sent, so recorded as such; the command's bytes by their size and hash only.
            [sent] = httpx.get(
                f"{bridge.url}/ironcore/v1/projects/{PROJECT}/auditLogs",
                params={"filter": "method=SendCommandToDevice"},
                headers={"Authorization": f"Bearer {bridge.token}"},
            ).json()["auditLogs"]
            assert sent["status"] == "OK"
            assert sent["resource"].endswith("/registries/reg-e2e/devices/dev-e2e")
            assert sent["request"]["body"] == {
                "binaryData": {"size": 6, "sha256": hashlib.sha256(b"reboot").hexdigest()},
                "subfolder": "sys",
            }

            def acked() -> dict[str, Any] | None:
                versions = api.get("/registries/reg-e2e/devices/dev-e2e/configVersions").json()
                newest = versions["deviceConfigs"][0]
                return newest if "deviceAckTime" in newest else None

            assert wait_for(acked, what="config ack")["version"] == "2"
            states = api.get("/registries/reg-e2e/devices/dev-e2e/states").json()["deviceStates"]
            assert [base64.b64decode(s["binaryData"]) for s in states] == [b"state-2", b"state-1"]
            # Stored a second apart (less the first write's own latency, hence the margin).
            newer, older = (parse_timestamp(s["updateTime"]) for s in states)
            assert (newer - older).total_seconds() > 0.9

            def bookkept() -> dict[str, Any] | None:
                got = api.get("/registries/reg-e2e/devices/dev-e2e").json()
                return got if got["lastEventTime"] != "1970-01-01T00:00:00Z" else None

            got = wait_for(bookkept, what="lastEventTime")
            assert got["lastConfigAckTime"] != "1970-01-01T00:00:00Z"
            assert got["lastConfigSendTime"] != "1970-01-01T00:00:00Z"
            assert got["lastStateTime"] != "1970-01-01T00:00:00Z"
    finally:
        device.close()

    logged = events_in_log(bridge, database)
    by_payload = {data: (topic, attrs) for topic, data, attrs in logged}
    topic, attrs = by_payload[b"temp=21"]
    assert topic == f"projects/{PROJECT}/topics/events"
    assert attrs == {
        "deviceId": "dev-e2e",
        "deviceNumId": created["numId"],
        "deviceRegistryId": "reg-e2e",
        "deviceRegistryLocation": "us-central1",
        "projectId": PROJECT,
    }
    assert by_payload[b"fire"][0] == f"projects/{PROJECT}/topics/alerts"
    assert by_payload[b"fire"][1]["subFolder"] == "alerts"
    assert by_payload[b"x"][0] == f"projects/{PROJECT}/topics/events"
    assert by_payload[b"x"][1]["subFolder"] == "other/deep"
    assert by_payload[b"state-1"][0] == f"projects/{PROJECT}/topics/state"


def test_rs256_device(bridge: Server, database: Database) -> None:
    create_registry(bridge, "reg-rsa")
    key = rsa_key()
    created = create_device(bridge, "reg-rsa", "dev-rsa", key, key_format="RSA_PEM")
    device = connect(bridge, "reg-rsa", "dev-rsa", make_jwt(key, alg="RS256"))
    try:
        first = device.next_message()
        assert (first.topic, first.payload) == ("/devices/dev-rsa/config", b"")
        device.publish("/devices/dev-rsa/events", b"hello")
    finally:
        device.close()
    # PUBACKed means appended: the event is in the log, from this device.
    assert events_in_log(bridge, database) == [
        (
            f"projects/{PROJECT}/topics/events",
            b"hello",
            {
                "deviceId": "dev-rsa",
                "deviceNumId": created["numId"],
                "deviceRegistryId": "reg-rsa",
                "deviceRegistryLocation": "us-central1",
                "projectId": PROJECT,
            },
        )
    ]


def test_unknown_device_and_bad_token_get_connack_5(bridge: Server) -> None:
    create_registry(bridge, "reg-bad")
    key = new_key()
    create_device(bridge, "reg-bad", "dev-bad", key)
    other = new_key()
    for device_id, token in [
        ("nobody-here", make_jwt(key)),
        ("dev-bad", make_jwt(other)),
        ("dev-bad", make_jwt(key, audience="another-project")),
        ("dev-bad", "not.a.jwt"),
    ]:
        device = connect(bridge, "reg-bad", device_id, token, wait=False)
        try:
            assert device.wait_connack() == 5
        finally:
            device.client.loop_stop()
    assert last_error(bridge, "reg-bad", "dev-bad", "JWT")["code"] == 16


def test_live_enforcement_block_disconnects_within_a_second(bridge: Server) -> None:
    create_registry(bridge, "reg-live")
    key = new_key()
    create_device(bridge, "reg-live", "dev-live", key)
    device = connect(bridge, "reg-live", "dev-live", make_jwt(key))
    device.client.reconnect_delay_set(60, 120)
    try:
        with admin(bridge) as api:
            started = time.monotonic()
            r = api.patch(
                "/registries/reg-live/devices/dev-live",
                params={"updateMask": "blocked"},
                json={"blocked": True},
            )
            assert r.status_code == 200
            device.wait_disconnect(timeout=2)
            assert time.monotonic() - started < 1.0
            assert_refused(bridge, "reg-live", "dev-live", key)
    finally:
        device.client.loop_stop()


def test_second_connection_takes_over(bridge: Server) -> None:
    create_registry(bridge, "reg-dup")
    key = new_key()
    create_device(bridge, "reg-dup", "dev-dup", key)
    first = connect(bridge, "reg-dup", "dev-dup", make_jwt(key))
    first.client.reconnect_delay_set(60, 120)
    second = connect(bridge, "reg-dup", "dev-dup", make_jwt(key))
    try:
        first.wait_disconnect(timeout=5)
        second.publish("/devices/dev-dup/events", b"still here")
        last_error(bridge, "reg-dup", "dev-dup", "another active connection")
    finally:
        first.client.loop_stop()
        second.close()


def test_publish_to_foreign_topic_disconnects(bridge: Server) -> None:
    create_registry(bridge, "reg-topic")
    key = new_key()
    create_device(bridge, "reg-topic", "dev-topic", key)
    device = connect(bridge, "reg-topic", "dev-topic", make_jwt(key))
    device.client.reconnect_delay_set(60, 120)
    try:
        device.client.publish("/devices/someone-else/events", b"x", qos=1)
        device.wait_disconnect(timeout=5)
        with pytest.raises(queue.Empty):
            device.connack.get(timeout=0.3)
    finally:
        device.client.loop_stop()
