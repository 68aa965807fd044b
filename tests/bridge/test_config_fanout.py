"""The bulk config update end to end: a real `ironcore serve` on SQLite and PostgreSQL, real
HTTP, real MQTT devices subscribed to their config, and their acknowledgements recorded."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from ironcore import limits
from tests.bridge.devices import (
    LOCATION,
    PROJECT,
    Device,
    admin,
    connect,
    create_device,
    create_registry,
    make_jwt,
    new_key,
)
from tests.conftest import Server, wait_for

REG = "reg-fanout"
DEVICES = [f"dev-{i}" for i in range(5)]


def bulk(server: Server, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    url = (
        f"{server.url}/ironcore/v1/projects/{PROJECT}/locations/{LOCATION}/registries/{REG}"
        ":modifyCloudToDeviceConfigs"
    )
    headers = {"Authorization": f"Bearer {token or server.token}"}
    return httpx.post(url, json=body, headers=headers, timeout=30)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_connected_devices_receive_a_bulk_config_and_their_acks_are_recorded(
    bridge: Server,
) -> None:
    create_registry(bridge, REG)
    online: list[Device] = []
    try:
        for device_id in DEVICES:
            key = new_key()
            create_device(bridge, REG, device_id, key)
            device = connect(bridge, REG, device_id, make_jwt(key))
            online.append(device)
            assert device.next_message().payload == b""  # version 1, on subscribing
        # dev-4 is not listed: it must get nothing.
        response = bulk(
            bridge, {"binaryData": b64(b"fleet-v2"), "deviceIds": [*DEVICES[:4], "ghost"]}
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["updatedDevices"] == 4
        assert result["versions"] == [{"version": "2", "devices": 4}]
        assert [(e["deviceId"], e["status"]) for e in result["errors"]] == [("ghost", "NOT_FOUND")]
        for device_id, device in zip(DEVICES[:4], online[:4], strict=True):
            message = device.next_message()
            assert (message.topic, message.payload) == (f"/devices/{device_id}/config", b"fleet-v2")

        with admin(bridge) as api:
            for device_id in DEVICES[:4]:

                def acked(device_id: str = device_id) -> dict[str, Any] | None:
                    got: dict[str, Any] = api.get(f"/registries/{REG}/devices/{device_id}").json()
                    return got if "deviceAckTime" in got["config"] else None

                got = wait_for(acked, what=f"{device_id}'s acknowledgement")
                assert got["config"]["version"] == "2"
                assert got["lastConfigAckTime"] == got["config"]["deviceAckTime"]
                versions = api.get(f"/registries/{REG}/devices/{device_id}/configVersions")
                newest = versions.json()["deviceConfigs"][0]
                assert newest["version"] == "2"
                assert newest["deviceAckTime"] == got["config"]["deviceAckTime"]
            untouched = api.get(f"/registries/{REG}/devices/{DEVICES[4]}").json()
            assert untouched["config"]["version"] == "1"
        assert online[4].messages.empty()
    finally:
        for device in online:
            device.close()


def test_bad_bulk_requests_over_http_change_nothing(bridge: Server) -> None:
    create_registry(bridge, REG)
    create_device(bridge, REG, "dev-a")
    too_many = [f"dev-{i}" for i in range(limits.LIST_DEVICE_IDS_MAX + 1)]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"binaryData": b64(b"x")}, "device_ids"),
        ({"binaryData": b64(b"x" * (limits.CONFIG_BYTES + 1)), "allDevices": True}, "binary_data"),
        ({"binaryData": b64(b"x"), "deviceIds": too_many}, "device_ids"),
        ({"binaryData": b64(b"x"), "deviceIds": ["dev-a", "dev-a"]}, "device_ids"),
    ]
    for body, field in cases:
        response = bulk(bridge, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert field in error["message"], error["message"]
    with httpx.Client(
        base_url=bridge.url, headers={"Authorization": f"Bearer {bridge.token}"}
    ) as owner:
        response = owner.post("/ironcore/v1/tokens", json={"role": "viewer", "name": "read"})
        assert response.status_code == 200, response.text
    viewer = response.json()["token"]
    response = bulk(bridge, {"binaryData": b64(b"x"), "allDevices": True}, token=viewer)
    assert response.status_code == 403, response.text
    with admin(bridge) as api:
        configs = api.get(f"/registries/{REG}/devices/dev-a/configVersions").json()
    assert [c["version"] for c in configs["deviceConfigs"]] == ["1"]
