"""The bulk config update (`registries/{r}:modifyCloudToDeviceConfigs`, ironcore's extension)
against the in-process app on SQLite and PostgreSQL: choosing devices, the per-device rules
(64 KB, 10 versions kept, one update a second), refused requests changing nothing, roles."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from ironcore import limits
from tests.api.errors import assert_error
from tests.api.test_devices_api import (
    DEVICES,
    PARENT,
    REGISTRY,
    config_versions,
    created,
    make_registry,
    modify,
)
from tests.conftest import Api, Clock

BULK = f"/ironcore/v1/{PARENT}/registries/{REGISTRY}:modifyCloudToDeviceConfigs"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def bulk(http: httpx.AsyncClient, data: bytes, **choice: Any) -> httpx.Response:
    return await http.post(BULK, json={"binaryData": b64(data), **choice})


async def bulk_ok(api: Api, data: bytes, **choice: Any) -> dict[str, Any]:
    response = await bulk(api.client, data, **choice)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def newest(api: Api, device: str) -> tuple[str, bytes]:
    config = (await config_versions(api, device))[0]
    return config["version"], base64.b64decode(config.get("binaryData", ""))


@pytest.fixture
async def fleet(api: Api) -> list[str]:
    """gw-1 (a gateway) with dev-1 and dev-2 bound to it, and dev-3 on its own."""
    await make_registry(api)
    await created(api, {"id": "gw-1", "gatewayConfig": {"gatewayType": "GATEWAY"}})
    for device_id in ("dev-1", "dev-2", "dev-3"):
        await created(api, {"id": device_id})
    for device_id in ("dev-1", "dev-2"):
        response = await api.client.post(
            f"/v1/{PARENT}/registries/{REGISTRY}:bindDeviceToGateway",
            json={"gatewayId": "gw-1", "deviceId": device_id},
        )
        assert response.status_code == 200, response.text
    return ["dev-1", "dev-2", "dev-3", "gw-1"]


async def test_by_ids_then_all_then_by_gateway(api: Api, fleet: list[str], clock: Clock) -> None:
    result = await bulk_ok(api, b"one", deviceIds=["dev-1", "dev-2"])
    assert result == {
        "cloudUpdateTime": "2026-01-01T00:00:00Z",
        "updatedDevices": 2,
        "versions": [{"version": "2", "devices": 2}],
        "errors": [],
    }
    assert await newest(api, "dev-1") == ("2", b"one")
    assert await newest(api, "dev-2") == ("2", b"one")
    assert await newest(api, "dev-3") == ("1", b"")

    clock.advance(1.5)
    result = await bulk_ok(api, b"two", allDevices=True)
    assert result["updatedDevices"] == 4
    assert result["versions"] == [{"version": "2", "devices": 2}, {"version": "3", "devices": 2}]
    for device in fleet:
        assert (await newest(api, device))[1] == b"two"
    # The device resource shows the new config too, not yet acknowledged.
    device = (await api.client.get(f"{DEVICES}/dev-3")).json()
    assert device["config"]["version"] == "2" and "deviceAckTime" not in device["config"]

    clock.advance(1.5)
    result = await bulk_ok(api, b"three", associationsGatewayId="gw-1")
    assert result["versions"] == [{"version": "4", "devices": 2}]
    assert await newest(api, "dev-2") == ("4", b"three")
    assert await newest(api, "dev-3") == ("2", b"two")
    assert await newest(api, "gw-1") == ("2", b"two")


async def test_unknown_ids_are_named_and_the_others_updated(api: Api, fleet: list[str]) -> None:
    result = await bulk_ok(api, b"x", deviceIds=["dev-1", "no-such-device", "dev-3", "gone-too"])
    assert result["versions"] == [{"version": "2", "devices": 2}]
    assert result["errors"] == [
        {
            "deviceId": device,
            "code": 5,
            "status": "NOT_FOUND",
            "message": "no such device in the registry",
        }
        for device in ("no-such-device", "gone-too")
    ]
    result = await bulk_ok(api, b"x", deviceIds=["nobody"])
    assert result["updatedDevices"] == 0 and result["versions"] == []
    assert [e["deviceId"] for e in result["errors"]] == ["nobody"]


async def test_a_device_updated_within_a_second_is_skipped_and_named(
    api: Api, fleet: list[str], clock: Clock
) -> None:
    assert (await modify(api, "dev-1", b"single")).status_code == 200
    clock.advance(0.5)
    result = await bulk_ok(api, b"bulk", allDevices=True)
    # Version 1 is the device's creation, not an update: the others are not held back.
    assert result["versions"] == [{"version": "2", "devices": 3}]
    assert result["errors"] == [
        {
            "deviceId": "dev-1",
            "code": 8,
            "status": "RESOURCE_EXHAUSTED",
            "message": "its config was updated less than a second ago; try again shortly",
        }
    ]
    assert await newest(api, "dev-1") == ("2", b"single")
    clock.advance(0.6)
    result = await bulk_ok(api, b"bulk", deviceIds=["dev-1"])
    assert result["versions"] == [{"version": "3", "devices": 1}] and result["errors"] == []


async def test_ten_versions_are_kept(api: Api, fleet: list[str], clock: Clock) -> None:
    for i in range(12):
        clock.advance(1.0)
        await bulk_ok(api, f"v{i + 2}".encode(), deviceIds=["dev-1"])
    versions = [c["version"] for c in await config_versions(api, "dev-1")]
    assert versions == [str(v) for v in range(13, 3, -1)]
    assert await newest(api, "dev-2") == ("1", b"")


async def test_64_kb_is_accepted_and_one_byte_more_refused(api: Api, fleet: list[str]) -> None:
    before = await config_versions(api, "dev-1")
    response = await bulk(api.client, b"x" * (limits.CONFIG_BYTES + 1), allDevices=True)
    assert_error(response, 400, "INVALID_ARGUMENT", "binary_data")
    assert await config_versions(api, "dev-1") == before
    result = await bulk_ok(api, b"x" * limits.CONFIG_BYTES, allDevices=True)
    assert result["updatedDevices"] == 4
    assert await newest(api, "dev-1") == ("2", b"x" * limits.CONFIG_BYTES)


@pytest.mark.parametrize(
    ("choice", "field"),
    [
        ({}, "device_ids"),
        ({"deviceIds": []}, "device_ids"),
        ({"allDevices": False}, "device_ids"),
        ({"deviceIds": ["dev-1"], "allDevices": True}, "device_ids"),
        ({"allDevices": True, "associationsGatewayId": "gw-1"}, "device_ids"),
        ({"deviceIds": ["dev-1", "dev-1"]}, "device_ids"),
        ({"deviceIds": ["x"]}, "device_ids"),
        ({"deviceIds": ["dev-1", "no/slash"]}, "device_ids"),
        ({"deviceIds": [f"dev-{i}" for i in range(limits.LIST_DEVICE_IDS_MAX + 1)]}, "device_ids"),
        ({"associationsGatewayId": "dev-3"}, "associations_gateway_id"),
        ({"deviceIds": "dev-1"}, "deviceIds"),
        ({"allDevices": True, "unknownField": 1}, "unknownField"),
    ],
)
async def test_bad_requests_are_refused_and_change_nothing(
    api: Api, fleet: list[str], choice: dict[str, Any], field: str
) -> None:
    before = [await config_versions(api, device) for device in fleet]
    error = assert_error(await bulk(api.client, b"cfg", **choice), 400, "INVALID_ARGUMENT")
    violations = [v["field"] for d in error["details"] for v in d["fieldViolations"]]
    assert any(v.startswith(field) for v in violations), (field, violations)
    assert [await config_versions(api, device) for device in fleet] == before


async def test_bad_base64_and_missing_gateway_and_registry(api: Api, fleet: list[str]) -> None:
    response = await api.client.post(BULK, json={"binaryData": "not base64!", "allDevices": True})
    assert_error(response, 400, "INVALID_ARGUMENT", "binaryData")
    response = await bulk(api.client, b"cfg", associationsGatewayId="no-such-gateway")
    assert "no-such-gateway" in assert_error(response, 404, "NOT_FOUND")["message"]
    response = await api.client.post(
        BULK.replace(REGISTRY, "reg-missing"), json={"binaryData": "", "allDevices": True}
    )
    assert "reg-missing" in assert_error(response, 404, "NOT_FOUND")["message"]


async def test_editors_may_viewers_may_not(api: Api, fleet: list[str]) -> None:
    async with await api.as_role("viewer") as viewer:
        error = assert_error(await bulk(viewer, b"v", allDevices=True), 403, "PERMISSION_DENIED")
        assert "cloudiot.devices.updateConfig" in error["message"]
    assert await newest(api, "dev-1") == ("1", b"")
    async with await api.as_role("editor") as editor:
        response = await bulk(editor, b"e", allDevices=True)
        assert response.status_code == 200, response.text
    assert await newest(api, "dev-1") == ("2", b"e")
