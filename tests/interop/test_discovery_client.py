"""`googleapiclient.discovery.build("cloudiot", "v1")` from ironcore's discovery document,
against a real ironcore process: the client older backends built, with only the discovery URL
changed."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.oauth2.credentials import Credentials
from googleapiclient import discovery
from googleapiclient.errors import HttpError

from tests.conftest import Server, start_server, stop_server

PARENT = "projects/discovery-project/locations/us-central1"


@pytest.fixture(scope="module")
def cloudiot(module_server: Server) -> Any:
    return discovery.build(
        "cloudiot",
        "v1",
        discoveryServiceUrl=f"{module_server.url}/$discovery/rest?version={{apiVersion}}",
        credentials=Credentials(token=module_server.token),
        static_discovery=False,
    )


def test_registry_device_config(cloudiot: Any) -> None:
    registries = cloudiot.projects().locations().registries()
    registry = registries.create(parent=PARENT, body={"id": "disc-reg"}).execute()
    assert registry["name"] == f"{PARENT}/registries/disc-reg"
    devices = registries.devices()
    device = devices.create(parent=registry["name"], body={"id": "disc-dev"}).execute()
    assert device["id"] == "disc-dev"
    name = f"{registry['name']}/devices/disc-dev"
    payload = base64.b64encode(b'{"led": "on"}').decode()
    config = devices.modifyCloudToDeviceConfig(name=name, body={"binaryData": payload}).execute()
    assert config["version"] == "2"
    versions = devices.configVersions().list(name=name).execute()
    assert [base64.b64decode(c.get("binaryData", "")) for c in versions["deviceConfigs"]] == [
        b'{"led": "on"}',
        b"",
    ]
    got = devices.get(name=name).execute()
    assert got["config"]["binaryData"] == payload
    listed = devices.list(parent=registry["name"], pageSize=10).execute()
    assert [d["id"] for d in listed["devices"]] == ["disc-dev"]
    blocked = devices.patch(name=name, updateMask="blocked", body={"blocked": True}).execute()
    assert blocked["blocked"] is True
    policy = {"bindings": [{"role": "roles/viewer", "members": ["user:a@example.com"]}]}
    registries.setIamPolicy(resource=registry["name"], body={"policy": policy}).execute()
    got_policy = registries.getIamPolicy(resource=registry["name"], body={}).execute()
    assert got_policy["bindings"] == policy["bindings"]
    assert devices.delete(name=name).execute() == {}
    assert registries.delete(name=registry["name"]).execute() == {}


def test_not_found_is_http_error(cloudiot: Any) -> None:
    devices = cloudiot.projects().locations().registries().devices()
    with pytest.raises(HttpError) as caught:
        devices.get(name=f"{PARENT}/registries/none/devices/none").execute()
    assert caught.value.status_code == 404


def test_public_url_is_the_root_url(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", extra=["--public-url", "https://iot.example.com"])
    try:
        document = httpx.get(f"{server.url}/discovery/v1/apis/cloudiot/v1/rest").json()
    finally:
        stop_server(server)
    assert document["rootUrl"] == "https://iot.example.com/"
