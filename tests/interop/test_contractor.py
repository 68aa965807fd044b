"""The issue's "done when": a contractor's service account given
roles/cloudiot.deviceController on one registry, with the CLI, pushes configs and commands
there with Google's client and its key file, and can do nothing else; taking the binding away
takes the access away. Against a real server over gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions
from google.cloud import iot_v1

from tests.conftest import Server
from tests.interop.test_service_accounts import (
    PARENT,
    PROJECT,
    credentials,
    iot_client,
    new_account,
    new_key,
    server,
)

__all__ = ["server"]
CONTROLLER = "roles/cloudiot.deviceController"


def cli(server: Server, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCORE_")}
    env |= {"HOME": str(tmp_path), "IRONCORE_TOKEN": server.token}
    return subprocess.run(
        [sys.executable, "-m", "ironcore", "--server", server.url, "--project", PROJECT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def owner(server: Server, path: str, body: object) -> None:
    response = httpx.post(
        f"{server.url}/v1/{path}", json=body, headers={"Authorization": f"Bearer {server.token}"}
    )
    assert response.status_code == 200, response.text


def test_contractor_with_device_controller_on_one_registry(server: Server, tmp_path: Path) -> None:
    for registry in ("contract-a", "contract-b"):
        owner(server, f"{PARENT}/registries", {"id": registry})
        owner(server, f"{PARENT}/registries/{registry}/devices", {"id": "dev-1"})
    mine, other = f"{PARENT}/registries/contract-a", f"{PARENT}/registries/contract-b"
    email = new_account(server, [])
    member = f"serviceAccount:{email}"
    granted = cli(
        server, tmp_path, "iam", "add-binding", "--registry", "contract-a",
        "--role", CONTROLLER, "--member", member,
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    shown = cli(server, tmp_path, "--json", "iam", "get-policy", "--registry", "contract-a")
    assert json.loads(shown.stdout)["bindings"] == [{"role": CONTROLLER, "members": [member]}]

    client = iot_client(server, credentials(new_key(server, email)))
    try:
        device = f"{mine}/devices/dev-1"
        client.modify_cloud_to_device_config(name=device, binary_data=b"v2")
        assert client.get_device(name=device).config.binary_data == b"v2"
        # Allowed, and refused only because the device is not connected.
        with pytest.raises(exceptions.FailedPrecondition):
            client.send_command_to_device(name=device, binary_data=b"reboot")
        held = client.test_iam_permissions(
            resource=mine,
            permissions=[
                "cloudiot.devices.updateConfig",
                "cloudiot.devices.sendCommand",
                "cloudiot.devices.create",
                "cloudiot.devices.delete",
                "cloudiot.registries.setIamPolicy",
            ],
        )
        assert list(held.permissions) == [
            "cloudiot.devices.updateConfig",
            "cloudiot.devices.sendCommand",
        ]
        assert not client.test_iam_permissions(
            resource=other, permissions=["cloudiot.devices.updateConfig"]
        ).permissions
        refused: list[tuple[Callable[[], object], str]] = [
            (
                lambda: client.create_device(parent=mine, device=iot_v1.Device(id="dev-2")),
                "devices.create",
            ),
            (lambda: client.delete_device(name=device), "devices.delete"),
            (lambda: client.delete_device_registry(name=mine), "registries.delete"),
            (lambda: client.get_iam_policy(resource=mine), "registries.getIamPolicy"),
            (lambda: client.list_device_registries(parent=PARENT), "registries.list"),
            (
                lambda: client.modify_cloud_to_device_config(
                    name=f"{other}/devices/dev-1", binary_data=b"x"
                ),
                "devices.updateConfig",
            ),
            (lambda: client.get_device(name=f"{other}/devices/dev-1"), "devices.get"),
        ]
        for call, permission in refused:
            with pytest.raises(exceptions.PermissionDenied) as denied:
                call()
            assert f"cloudiot.{permission}" in str(denied.value.message)

        taken = cli(
            server, tmp_path, "iam", "remove-binding", "--registry", "contract-a",
            "--role", CONTROLLER, "--member", member,
        )  # fmt: skip
        assert taken.returncode == 0, taken.stderr
        with pytest.raises(exceptions.PermissionDenied):
            client.modify_cloud_to_device_config(name=device, binary_data=b"v3")
    finally:
        client.transport.close()


def test_project_binding_grants_in_the_project_only(server: Server, tmp_path: Path) -> None:
    email = new_account(server, [])
    granted = cli(
        server, tmp_path, "iam", "add-binding", "--role", "roles/cloudiot.viewer",
        "--member", f"serviceAccount:{email}",
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    client = iot_client(server, credentials(new_key(server, email)))
    try:
        client.list_device_registries(parent=PARENT)
        with pytest.raises(exceptions.PermissionDenied):
            client.list_device_registries(parent="projects/elsewhere/locations/us-central1")
        with pytest.raises(exceptions.PermissionDenied):
            client.create_device_registry(
                parent=PARENT, device_registry=iot_v1.DeviceRegistry(id="nope-nope")
            )
    finally:
        client.transport.close()
    bad = cli(server, tmp_path, "iam", "add-binding", "--role", "roles/nonesuch", "--member", "x")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
