"""Rollouts end to end against a real `ironcore serve`: devices with a software secure
element (JWT key in slot 0, firmware key locked in slot 15) run the SDK's Updater over the
HTTP bridge. A fleet updates; a tampered image is refused everywhere; a halted rollout stops
at its stage. Also: serving with Range, and device authentication of the download."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from ironcore.cli.main import app as cli_app
from ironcore.device.http import DeviceHttpClient, DeviceHttpError
from ironcore.device.mqtt import DeviceName
from ironcore.device.secure_boot import SecureBoot
from ironcore.device.software_element import SoftwareElement
from ironcore.device.tokens import TokenSource
from ironcore.device.updater import Updater
from ironcore.firmware.signing import sign
from ironcore.formats.firmware import Manifest
from ironcore.pki.keystore import EncryptedFileKey, KeyStore
from tests.conftest import Server
from tests.device.test_sdk_clients import element_pem

PROJECT, LOCATION, MODEL = "fw-project", "us-central1", "sensor-x"


@pytest.fixture(scope="module")
def server(module_server: Server) -> Server:
    """One server for the module: each test makes a registry of its own."""
    return module_server


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    path = tmp_path_factory.mktemp("keys") / "fw.key"
    return EncryptedFileKey.generate(path, ec.SECP256R1(), b"passphrase")


def release(key: KeyStore, version: int, model: str = MODEL) -> tuple[bytes, dict[str, Any]]:
    image = f"{model} firmware {version}\n".encode() * 2000
    return image, sign(key, Manifest.for_image(model, version, image, version)).to_json()


def admin(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30
    )


def registry_path(registry: str) -> str:
    return f"/projects/{PROJECT}/locations/{LOCATION}/registries/{registry}"


@dataclass
class SimDevice:
    device_id: str
    http: DeviceHttpClient
    updater: Updater
    boot: SecureBoot
    config_version: int = 0

    def poll(self) -> None:
        """What device code does: fetch a newer config, act on it, report the outcome."""
        config = self.http.get_config(self.config_version)
        if config.data is None:
            return
        self.config_version = config.version
        state = self.updater.apply(config.data)
        if state is not None:
            try:
                self.http.set_state(json.dumps(state).encode())
            except DeviceHttpError as error:
                # The bridge takes one state a second per device, as Cloud IoT Core did.
                assert error.status_code == 429
                time.sleep(1.1)
                self.http.set_state(json.dumps(state).encode())


def make_fleet(
    server: Server, key: KeyStore, tmp_path: Path, registry: str, count: int
) -> list[SimDevice]:
    factory_image, factory_manifest = release(key, 1)
    devices = []
    with admin(server) as api:
        response = api.post(
            f"/v1/projects/{PROJECT}/locations/{LOCATION}/registries", json={"id": registry}
        )
        assert response.status_code == 200, response.text
        for n in range(count):
            device_id = f"dev-{n:03d}"
            element = SoftwareElement.provision(tmp_path / f"{device_id}.se")
            credentials = [{"publicKey": {"format": "ES256_PEM", "key": element_pem(element)}}]
            response = api.post(
                f"/v1{registry_path(registry)}/devices",
                json={
                    "id": device_id,
                    "credentials": credentials,
                    "config": {"binaryData": base64.b64encode(b'{"interval": 30}').decode()},
                },
            )
            assert response.status_code == 200, response.text
            boot = SecureBoot.provision(element, tmp_path / device_id, MODEL, key.public_key())
            boot.install(factory_image, json.dumps(factory_manifest).encode())
            assert boot.boot() == 1
            tokens = TokenSource.for_element(element, PROJECT)
            name = DeviceName(PROJECT, LOCATION, registry, device_id)
            http = DeviceHttpClient(server.url, name, tokens)
            updater = Updater(server.url, tokens, boot, tmp_path / device_id / "download")
            devices.append(SimDevice(device_id, http, updater, boot))
            http.set_state(json.dumps({"firmware": boot.state()}).encode())
    return devices


def upload(server: Server, image: bytes, manifest: dict[str, Any]) -> str:
    with admin(server) as api:
        body = {"image": base64.b64encode(image).decode(), "manifest": manifest}
        response = api.post(f"/ironcore/v1/projects/{PROJECT}/firmware", json=body)
        assert response.status_code == 200, response.text
        sha: str = response.json()["sha256"]
        return sha


def start(server: Server, registry: str, sha: str, **body: Any) -> str:
    with admin(server) as api:
        response = api.post(
            f"/ironcore/v1{registry_path(registry)}/rollouts", json={"sha256": sha, **body}
        )
        assert response.status_code == 200, response.text
        rollout_id: str = response.json()["id"]
        return rollout_id


def status(server: Server, registry: str, rollout_id: str) -> dict[str, Any]:
    with admin(server) as api:
        response = api.get(f"/ironcore/v1{registry_path(registry)}/rollouts/{rollout_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def run(server: Server, registry: str, rollout_id: str, fleet: list[SimDevice]) -> dict[str, Any]:
    """Let the devices poll and the rollout evaluate until it stops moving."""
    for _round in range(10):
        for device in fleet:
            device.poll()
        current = status(server, registry, rollout_id)
        if current["state"] != "RUNNING":
            return current
    return current


def test_a_fleet_updates_stage_by_stage(server: Server, key: KeyStore, tmp_path: Path) -> None:
    fleet = make_fleet(server, key, tmp_path, "reg-update", 12)
    sha = upload(server, *release(key, 2))
    rollout_id = start(server, "reg-update", sha, stages=[10, 50, 100])
    first = status(server, "reg-update", rollout_id)
    assert first["devices"]["inStage"] < 12 and first["versions"] == {"1": 12}
    final = run(server, "reg-update", rollout_id, fleet)
    assert final["state"] == "SUCCEEDED", final
    assert final["versions"] == {"2": 12} and final["failures"] == []
    for device in fleet:
        assert device.boot.state()["version"] == 2
        # The user's own config survived the firmware key.
        assert json.loads(device.http.get_config().data or b"")["interval"] == 30


def test_a_tampered_image_is_refused_everywhere(
    server: Server, key: KeyStore, tmp_path: Path
) -> None:
    fleet = make_fleet(server, key, tmp_path, "reg-tamper", 6)
    image, manifest = release(key, 2)
    sha = upload(server, image, manifest)
    # Someone with access to the server's disk (or on the path) changes the image.
    stored = server.data_dir / "firmware" / sha
    stored.write_bytes(image.replace(b"firmware", b"FIRMWARE", 1))
    rollout_id = start(server, "reg-tamper", sha, stages=[100], failureThreshold=0.5)
    final = run(server, "reg-tamper", rollout_id, fleet)
    assert final["state"] == "HALTED", final
    assert final["versions"] == {"1": 6}
    assert {f["reason"] for f in final["failures"]} == {"DIGEST_MISMATCH"}
    assert len(final["failures"]) >= 4
    for device in fleet:
        assert device.boot.state()["version"] == 1


def test_a_halted_rollout_stops_at_its_stage(server: Server, key: KeyStore, tmp_path: Path) -> None:
    fleet = make_fleet(server, key, tmp_path, "reg-halt", 12)
    # Genuine, but for another model: every device that tries it refuses it.
    sha = upload(server, *release(key, 2, model="sensor-y"))
    rollout_id = start(server, "reg-halt", sha, stages=[25, 100], failureThreshold=0.2)
    final = run(server, "reg-halt", rollout_id, fleet)
    assert (final["state"], final["stage"]) == ("HALTED", 0), final
    in_stage = final["devices"]["inStage"]
    assert 1 <= in_stage < 12
    assert {f["reason"] for f in final["failures"]} == {"WRONG_MODEL"}
    told = [d for d in fleet if "firmware" in json.loads(d.http.get_config().data or b"{}")]
    assert len(told) == in_stage
    assert all(d.boot.state()["version"] == 1 for d in fleet)


def test_images_are_served_with_range_to_their_devices_only(
    server: Server, key: KeyStore, tmp_path: Path
) -> None:
    fleet = make_fleet(server, key, tmp_path, "reg-serve", 2)
    image, manifest = release(key, 3)
    sha = upload(server, image, manifest)
    a, b = fleet
    url = (
        f"{server.url}/ironcore/v1{registry_path('reg-serve')}/devices/{a.device_id}/firmware/{sha}"
    )
    auth = {"Authorization": f"Bearer {a.http.tokens.token()}"}
    full = httpx.get(url, headers=auth)
    assert full.status_code == 200 and full.content == image
    part = httpx.get(url, headers={**auth, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == image[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(image)}"
    beyond = httpx.get(url, headers={**auth, "Range": f"bytes={len(image) + 5}-"})
    assert beyond.status_code == 416
    # No token, another device's token, an unknown device, an unknown image.
    assert httpx.get(url).status_code == 401
    other = {"Authorization": f"Bearer {b.http.tokens.token()}"}
    assert httpx.get(url, headers=other).status_code == 401
    assert httpx.get(url.replace(a.device_id, "nobody"), headers=auth).status_code == 404
    assert httpx.get(url.replace(sha, "0" * 64), headers=auth).status_code == 404
    # An interrupted download resumes where it stopped: the updater finds half the image.
    download = tmp_path / a.device_id / "download"
    download.mkdir(parents=True, exist_ok=True)
    (download / f"{sha}.partial").write_bytes(image[: len(image) // 2])
    config = {
        "firmware": {"rollout": "x", "url": url.removeprefix(server.url), "manifest": manifest}
    }
    state = a.updater.apply(json.dumps(config).encode())
    assert state is not None and state["firmware"]["result"] == "ok", state
    assert a.boot.state()["version"] == 3


def test_the_cli_uploads_rolls_out_and_shows_status(
    server: Server, key: KeyStore, tmp_path: Path
) -> None:
    make_fleet(server, key, tmp_path, "reg-cli", 3)
    image, manifest = release(key, 5)
    (tmp_path / "app.bin").write_bytes(image)
    (tmp_path / "app.manifest.json").write_text(json.dumps(manifest))
    base = ["--server", server.url, "--token", server.token, "--project", PROJECT]

    def cli(*args: str) -> dict[str, Any]:
        result = CliRunner().invoke(cli_app, [*base, "--json", "firmware", *args])
        assert result.exit_code == 0, result.output
        output: dict[str, Any] = json.loads(result.output)
        return output

    uploaded = cli("upload", str(tmp_path / "app.bin"), str(tmp_path / "app.manifest.json"))
    started = cli(
        "rollout", "-r", "reg-cli", "--model", MODEL, "--version", "5", "--stages", "50,100"
    )
    assert started["image"]["sha256"] == uploaded["sha256"] and started["stages"] == [50, 100]
    shown = cli("status", "-r", "reg-cli")
    assert [r["id"] for r in shown["rollouts"]] == [started["id"]]
    assert shown["versions"] == {"1": 3}
    table = CliRunner().invoke(
        cli_app, [*base, "firmware", "status", "-r", "reg-cli", "--rollout", started["id"]]
    )
    assert table.exit_code == 0 and "RUNNING" in table.output, table.output
