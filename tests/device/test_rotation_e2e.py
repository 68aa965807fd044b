"""Key rotation end to end: a device on a software secure element, a real server, and each
failure injected between the steps. After every one the device can still connect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ironcore.device.mqtt import DeviceClient, DeviceName, Endpoint
from ironcore.device.rotation import KeyRotator
from ironcore.device.software_element import SoftwareElement
from tests.bridge.devices import LOCATION, PROJECT, admin, create_registry
from tests.conftest import Server, start_server, stop_server, wait_for
from tests.device.test_sdk_clients import element_pem, register

ROTATION = f"/ironcore/v1/projects/{PROJECT}/locations/{LOCATION}/registries/reg-sdk/devices"


@pytest.fixture(params=[1, 2], ids=["1-process", "2-processes"])
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """With 2 processes (`--mqtt-workers 2`) the device lands on either at each connect, so the
    rotation's steps cross processes (a rotation started through the primary, an offer taken
    by a worker, the reconnect with the new key on either)."""
    running = start_server(tmp_path / "data", None, ["--mqtt-workers", str(request.param)])
    create_registry(running, "reg-sdk")
    yield running
    stop_server(running)


def rotation_state(server: Server, device_id: str) -> str:
    r = httpx.get(
        f"{server.url}{ROTATION}/{device_id}/keyRotation",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    state: str = r.json().get("state", "")
    return state


def start_rotation(server: Server, device_id: str, grace: int = 3600) -> None:
    r = httpx.post(
        f"{server.url}{ROTATION}/{device_id}:rotateKey",
        json={"graceSeconds": grace},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert r.status_code == 200, r.text


def device(
    server: Server, tmp_path: Path, device_id: str
) -> tuple[SoftwareElement, KeyRotator, DeviceClient]:
    path = tmp_path / f"{device_id}.se"
    element = SoftwareElement.open(path) if path.exists() else SoftwareElement.provision(path)
    rotator = KeyRotator(element, tmp_path / f"{device_id}.keys.json", PROJECT)
    client = DeviceClient(
        Endpoint("localhost", server.mqtt_port, str(server.ca_file)),
        DeviceName(PROJECT, LOCATION, "reg-sdk", device_id),
        rotator.tokens,
    )
    rotator.attach(client)
    return element, rotator, client


def credentials(server: Server, device_id: str) -> list[dict[str, Any]]:
    with admin(server) as api:
        found: list[dict[str, Any]] = api.get(f"/registries/reg-sdk/devices/{device_id}").json()[
            "credentials"
        ]
        return found


def test_rotation_completes_and_the_old_key_expires_after_grace(
    server: Server, tmp_path: Path
) -> None:
    element = SoftwareElement.provision(tmp_path / "rot-ok.se")
    register(server, "rot-ok", element_pem(element))
    _, rotator, client = device(server, tmp_path, "rot-ok")
    client.start()
    try:
        start_rotation(server, "rot-ok")
        wait_for(lambda: rotation_state(server, "rot-ok") == "COMPLETED", 20, "completion")
        assert rotator.state.active in (2, 3, 4)
        wait_for(lambda: client.connected, 10, "the connection with the new key")
        creds = credentials(server, "rot-ok")
        assert len(creds) == 2
        old, new = creds
        assert old["publicKey"]["key"] == element_pem(element, 0)
        assert old["expirationTime"] != "1970-01-01T00:00:00Z"
        assert new["publicKey"]["key"] == element_pem(rotator.element, rotator.state.active)
        assert new["expirationTime"] == "1970-01-01T00:00:00Z"
        client.publish_event(b"signed with the new key")
        wait_for(lambda: rotator.state.pending_slot is None, 10, "the device to finish")
    finally:
        client.stop()
    # The audit log has the device's creation, the operator's start and the device's own
    # steps, whichever process took them, from the device's address.
    answer = httpx.get(
        f"{server.url}/ironcore/v1/projects/{PROJECT}/auditLogs",
        params={"filter": f"resource:{ROTATION.removeprefix('/ironcore/v1/')}/rot-ok"},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert answer.status_code == 200, answer.text
    steps = [(e["method"], e["principal"]) for e in reversed(answer.json()["auditLogs"])]
    device_name = f"device:{ROTATION.removeprefix('/ironcore/v1/')}/rot-ok"
    owner = f"adminToken:{server.token.split('_')[1]}"
    assert steps[:2] == [("CreateDevice", owner), ("StartKeyRotation", owner)]
    assert ("OfferRotationKey", device_name) in steps
    assert ("CompleteKeyRotation", device_name) in steps
    for entry in answer.json()["auditLogs"]:
        if entry["wire"] == "mqtt":
            assert entry["clientAddress"] == "127.0.0.1"
            assert entry["authentication"] == "deviceJwt"


def test_all_slots_busy_fails_cleanly(server: Server, tmp_path: Path) -> None:
    element = SoftwareElement.provision(tmp_path / "rot-busy.se")
    for slot in (2, 3, 4):
        element.lock_slot(slot)
    register(server, "rot-busy", element_pem(element))
    _, rotator, client = device(server, tmp_path, "rot-busy")
    client.start()
    try:
        start_rotation(server, "rot-busy")
        wait_for(lambda: rotation_state(server, "rot-busy") == "FAILED", 20, "the failure")
        assert rotator.state.active == 0 and client.connected
        assert len(credentials(server, "rot-busy")) == 1
        client.publish_event(b"still fine")
    finally:
        client.stop()


def test_refused_new_key_falls_back_to_the_old_one(server: Server, tmp_path: Path) -> None:
    element = SoftwareElement.provision(tmp_path / "rot-ref.se")
    register(server, "rot-ref", element_pem(element))
    _, rotator, client = device(server, tmp_path, "rot-ref")
    # The operator removes the new key the moment it is added, before the device switches.
    original = rotator._switch

    def switch_after_removal(rotation: str) -> None:
        with admin(server) as api:
            old_only = [
                c
                for c in credentials(server, "rot-ref")
                if c["publicKey"]["key"] == element_pem(element, 0)
            ]
            api.patch(
                "/registries/reg-sdk/devices/rot-ref",
                params={"updateMask": "credentials"},
                json={"credentials": old_only},
            ).raise_for_status()
        original(rotation)

    rotator._switch = switch_after_removal  # type: ignore[method-assign]
    client.start()
    try:
        start_rotation(server, "rot-ref")
        wait_for(lambda: "REVERTED" in rotator.events, 30, "the fallback to the old key")
        wait_for(lambda: client.connected, 30, "a connection with the old key")
        assert rotator.state.active == 0
        client.publish_event(b"on the old key")
        # The device gives the rotation up; ironcore marks it failed, the old key untouched.
        wait_for(lambda: rotation_state(server, "rot-ref") == "FAILED", 20, "the failure")
        kept = credentials(server, "rot-ref")
        assert [c["publicKey"]["key"] for c in kept] == [element_pem(element, 0)]
        assert kept[0]["expirationTime"] == "1970-01-01T00:00:00Z"
        wait_for(lambda: rotator.state.pending_rotation == "", 10, "the device to give up")
        assert rotator.state.active == 0
    finally:
        client.stop()


def test_server_restart_and_device_crash_mid_rotation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    create_registry(server, "reg-sdk")
    element = SoftwareElement.provision(tmp_path / "rot-crash.se")
    register(server, "rot-crash", element_pem(element))
    # The device is offline when the rotation starts; the server restarts before it comes.
    start_rotation(server, "rot-crash")
    stop_server(server)
    server = start_server(data)
    try:
        _, rotator, client = device(server, tmp_path, "rot-crash")
        # The device "crashes" right after making its key: it never offers it.
        rotator._publish = lambda body: None  # type: ignore[method-assign]
        client.start()
        wait_for(lambda: rotator.state.pending_slot is not None, 20, "the new key")
        pending = rotator.state.pending_slot
        client.stop()
        assert rotation_state(server, "rot-crash") == "REQUESTED"
        # It boots again from its state file and element: same key, offered this time.
        _, rotator, client = device(server, tmp_path, "rot-crash")
        assert rotator.state.pending_slot == pending
        client.start()
        wait_for(lambda: rotation_state(server, "rot-crash") == "COMPLETED", 20, "completion")
        assert rotator.state.active == pending
        client.stop()
    finally:
        stop_server(server)


def test_rollback_of_a_rotation_the_device_never_saw(server: Server, tmp_path: Path) -> None:
    element = SoftwareElement.provision(tmp_path / "rot-rb.se")
    register(server, "rot-rb", element_pem(element))
    start_rotation(server, "rot-rb")
    headers = {"Authorization": f"Bearer {server.token}"}
    r = httpx.post(f"{server.url}{ROTATION}/rot-rb:rotateKey", json={}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"
    r = httpx.post(f"{server.url}{ROTATION}/rot-rb:rollbackKeyRotation", headers=headers)
    assert r.status_code == 200 and r.json()["state"] == "ROLLED_BACK"
    assert len(credentials(server, "rot-rb")) == 1
    _, rotator, client = device(server, tmp_path, "rot-rb")
    client.start()
    try:
        client.publish_event(b"nothing to rotate")
        assert rotator.state.active == 0 and rotator.state.pending_rotation == ""
    finally:
        client.stop()


def test_rotate_key_cli(server: Server, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    element = SoftwareElement.provision(tmp_path / "rot-cli.se")
    register(server, "rot-cli", element_pem(element))
    env = {**os.environ, "IRONCORE_TOKEN": server.token}
    base = [
        sys.executable,
        "-m",
        "ironcore",
        "--server",
        server.url,
        "--project",
        PROJECT,
        "--json",
    ]

    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [*base, "devices", "rotate-key", "rot-cli", "-r", "reg-sdk", *args],
            capture_output=True,
            env=env,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    assert cli("--grace", "60")["state"] == "REQUESTED"
    assert cli("--status")["graceSeconds"] == 60
    assert cli("--rollback")["state"] == "ROLLED_BACK"
    refused = subprocess.run(
        [*base, "devices", "rotate-key", "rot-cli", "-r", "reg-sdk", "--rollback"],
        capture_output=True,
        env=env,
        text=True,
    )
    assert refused.returncode != 0 and "FAILED_PRECONDITION" in refused.stderr
