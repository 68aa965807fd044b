"""The discovery document generated from the route table: served without a token, and in
step with the routes (every Cloud IoT Core route is in it, every method in it is a route)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx

from ironcore.api.discovery import ROUTE_PREFIX, api_routes
from ironcore.registry.service import DeviceManager
from ironcore.runtime.inprocess import admin_api

REGISTRY_METHODS = (
    "create delete get list patch getIamPolicy setIamPolicy testIamPermissions "
    "bindDeviceToGateway unbindDeviceFromGateway"
)
DEVICE_METHODS = "create delete get list patch modifyCloudToDeviceConfig sendCommandToDevice"
REGISTRIES = "cloudiot.projects.locations.registries"
# Cloud IoT Core v1's own methods, by the ids its discovery document gave them.
GOOGLE_METHODS = {
    *(f"{REGISTRIES}.{m}" for m in REGISTRY_METHODS.split()),
    *(f"{REGISTRIES}.devices.{m}" for m in DEVICE_METHODS.split()),
    f"{REGISTRIES}.devices.configVersions.list",
    f"{REGISTRIES}.devices.states.list",
    *(f"{REGISTRIES}.groups.{m}" for m in ["getIamPolicy", "setIamPolicy", "testIamPermissions"]),
}


def methods(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from node.get("methods", {}).values()
    for child in node.get("resources", {}).values():
        yield from methods(child)


async def fetch(manager: DeviceManager, path: str) -> httpx.Response:
    # No Authorization header: the document is public.
    transport = httpx.ASGITransport(app=admin_api(manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://ironcore:9") as client:
        return await client.get(path)


async def test_served_without_token_at_both_addresses(manager: DeviceManager) -> None:
    first = await fetch(manager, "/$discovery/rest?version=v1")
    second = await fetch(manager, "/discovery/v1/apis/cloudiot/v1/rest")
    assert first.status_code == 200, first.text
    assert first.json() == second.json()
    document = first.json()
    assert (document["name"], document["version"]) == ("cloudiot", "v1")
    assert document["rootUrl"] == "http://ironcore:9/"
    assert (await fetch(manager, "/$discovery/rest?version=v2")).status_code == 404


async def test_google_methods_are_all_there(manager: DeviceManager) -> None:
    document = (await fetch(manager, "/$discovery/rest?version=v1")).json()
    ids = {m["id"] for m in methods(document)}
    assert ids >= GOOGLE_METHODS
    device = document["resources"]["projects"]["resources"]["locations"]["resources"]["registries"][
        "resources"
    ]["devices"]["methods"]
    assert device["create"]["path"] == "v1/{+parent}/devices"
    assert device["create"]["request"] == {"$ref": "Device"}
    assert device["get"]["parameters"]["name"]["location"] == "path"
    assert device["list"]["parameters"]["pageSize"]["location"] == "query"
    modify = device["modifyCloudToDeviceConfig"]
    assert modify["path"] == "v1/{+name}:modifyCloudToDeviceConfig"
    request = document["schemas"][modify["request"]["$ref"]]
    assert request["properties"]["binaryData"] == {"type": "string", "format": "byte"}
    registry = document["resources"]["projects"]["resources"]["locations"]["resources"][
        "registries"
    ]
    group_get = registry["resources"]["groups"]["resources"]["devices"]["methods"]["get"]
    assert group_get["description"] == device["get"]["description"] == "GetDevice"
    assert device["list"]["response"] == {"$ref": "ListDevicesResponse"}
    assert all(schema_id[0].isupper() for schema_id in document["schemas"])
    log_level = document["schemas"]["Device"]["properties"]["logLevel"]
    assert log_level["enum"][:2] == ["LOG_LEVEL_UNSPECIFIED", "NONE"]
    for method in methods(document):
        for ref in (method.get("request"), method["response"]):
            assert ref is None or ref["$ref"] in document["schemas"], method["id"]


async def test_document_and_routes_agree(manager: DeviceManager) -> None:
    app = admin_api(manager)
    document = (await fetch(manager, "/$discovery/rest?version=v1")).json()
    served = {
        (method, route.path)
        for route in api_routes(app.routes)
        if route.path.startswith(ROUTE_PREFIX)
        for method in route.methods or ()
    }
    described = set()
    for method in methods(document):
        (parameter,) = method["parameterOrder"]
        # A resource name its pattern accepts, put in the path as the client does.
        name = method["parameters"][parameter]["pattern"].strip("^$").replace("[^/]+", "x")
        expanded = "/" + method["path"].replace("{+" + parameter + "}", name)
        matching = {
            (http, path)
            for http, path in served
            if http == method["httpMethod"] and re.sub(r"\{[^}]+\}", "x", path) == expanded
        }
        assert len(matching) == 1, (method["id"], matching)
        described |= matching
    assert described == served
