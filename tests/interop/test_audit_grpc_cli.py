"""The audit log against a real `ironcore serve`: changes and refusals over gRPC (the official
google-cloud-iot client), read back with `ironcore audit list` (table and `--json`), and
written to the server's log as well."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions
from google.cloud import iot_v1
from google.protobuf import field_mask_pb2

from tests.cli.test_cli import Cli
from tests.conftest import Server
from tests.interop.iot_clients import PARENT, PROJECT, client_for

pytestmark = pytest.mark.databases("sqlite")


@pytest.fixture
def client(grpc_server: Server) -> Iterator[iot_v1.DeviceManagerClient]:
    manager = client_for(grpc_server, grpc_server.token)
    yield manager
    manager.transport.close()


def test_grpc_changes_and_refusals_are_recorded_and_listed(
    grpc_server: Server, client: iot_v1.DeviceManagerClient, tmp_path: Path
) -> None:
    registry = client.create_device_registry(
        parent=PARENT, device_registry={"id": "reg-audit"}
    ).name
    device = client.create_device(parent=registry, device={"id": "dev-1"})
    client.update_device(
        device={"name": device.name, "blocked": True},
        update_mask=field_mask_pb2.FieldMask(paths=["blocked"]),
    )
    client.get_device(name=device.name)  # a read: no entry

    guess = "ic_feedfacefeedface_not-a-real-token"
    stranger = client_for(grpc_server, guess)
    with pytest.raises(exceptions.Unauthenticated):
        stranger.create_device(parent=registry, device={"id": "dev-2"})
    stranger.transport.close()

    cli = Cli(grpc_server, tmp_path)
    viewer_token = cli.json("tokens", "create", "--role", "viewer")["token"]
    viewer = client_for(grpc_server, viewer_token)
    with pytest.raises(exceptions.PermissionDenied):
        viewer.delete_device(name=device.name)
    viewer.transport.close()

    listed = cli.json("audit", "list", "--project", PROJECT)["auditLogs"]
    denied = listed.pop(0)
    assert (denied["method"], denied["status"]) == ("DeleteDevice", "PERMISSION_DENIED")
    assert denied["resource"] == device.name
    assert denied["principal"] == f"adminToken:{viewer_token.split('_')[1]}"
    assert [(e["method"], e["status"]) for e in listed] == [
        ("CreateDevice", "UNAUTHENTICATED"),
        ("UpdateDevice", "OK"),
        ("CreateDevice", "OK"),
        ("CreateDeviceRegistry", "OK"),
    ]
    refused, update, create, _ = listed
    assert {e["wire"] for e in listed} == {"grpc"}
    assert {e["clientAddress"] for e in listed} == {"127.0.0.1"}
    assert refused["principal"] == "" and refused["authentication"] == "adminToken"
    assert create["resource"] == f"{registry}/devices/dev-1"  # what it created
    assert create["request"]["body"]["device"] == {"id": "dev-1"}
    assert update["resource"] == device.name
    assert update["changes"] == {"blocked": {"before": None, "after": True}}
    assert update["principal"].startswith("adminToken:")

    filtered = cli.json(
        "audit", "list", "--project", PROJECT, "--filter", "status=OK AND method=CreateDevice"
    )["auditLogs"]
    assert [e["id"] for e in filtered] == [create["id"]]
    assert len(cli.json("audit", "list", "--project", PROJECT, "--limit", "2")["auditLogs"]) == 2

    table = cli.ok("audit", "list", "--project", PROJECT).out
    assert "UpdateDevice" in table and "UNAUTHENTICATED" in table and "127.0.0.1" in table
    bad = cli.run("audit", "list", "--project", PROJECT, "--filter", "colour=red")
    assert "colour" in bad.error_line

    logged = [
        json.loads(line.partition("audit ")[2])
        for line in grpc_server.log.read_text().splitlines()
        if "audit {" in line
    ]
    assert [e["method"] for e in logged] == [
        "CreateDeviceRegistry",
        "CreateDevice",
        "UpdateDevice",
        "CreateDevice",
        "CreateToken",
        "DeleteDevice",
    ]
    assert guess not in grpc_server.log.read_text()
    assert viewer_token not in grpc_server.log.read_text()
    # Without --trusted-proxies nobody's X-Forwarded-For is believed, not even loopback's: the
    # address recorded is the peer's (tests/ops/test_client_addresses.py: behind HAProxy).
    forwarded = httpx.post(
        f"{grpc_server.url}/v1/{PARENT}/registries",
        json={"id": "reg-forwarded"},
        headers={
            "Authorization": f"Bearer {grpc_server.token}",
            "X-Forwarded-For": "203.0.113.7",
        },
    )
    assert forwarded.status_code == 200, forwarded.text
    [entry] = [
        e
        for e in cli.json("audit", "list", "--project", PROJECT)["auditLogs"]
        if e["request"].get("body", {}).get("id") == "reg-forwarded"
    ]
    assert (entry["method"], entry["wire"]) == ("CreateDeviceRegistry", "rest")
    assert entry["clientAddress"] == "127.0.0.1"
