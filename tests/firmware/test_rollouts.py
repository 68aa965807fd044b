"""Rollouts in process, on SQLite and PostgreSQL: upload validation, stage membership,
config merge, status counts, advancing and halting (docs/firmware.md, Rollouts)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given
from hypothesis import strategies as st

from ironcore.access.tokens import AdminTokens
from ironcore.errors import FailedPrecondition
from ironcore.firmware.rollout import Firmware, bucket, merge_config, outcome, stage_members
from ironcore.firmware.signing import sign
from ironcore.formats.firmware import Manifest
from ironcore.pki.keystore import EncryptedFileKey, KeyStore
from ironcore.registry.names import RegistryName
from ironcore.registry.resources import Device, DeviceRegistry
from ironcore.registry.service import DeviceManager
from ironcore.registry.store.firmware import FirmwareStore
from ironcore.runtime.inprocess import admin_api

MODEL = "sensor-x"
PROJECT, LOCATION, REGISTRY = "p1", "us-central1", "reg-1"
ROLLOUTS = f"/ironcore/v1/projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}/rollouts"
UPLOAD = f"/ironcore/v1/projects/{PROJECT}/firmware"


def release(key: KeyStore, version: int, model: str = MODEL) -> tuple[bytes, dict[str, Any]]:
    image = f"{model} firmware {version}\n".encode() * 300
    signed = sign(key, Manifest.for_image(model, version, image, version))
    return image, signed.to_json()


@pytest.fixture
def key(tmp_path: Path) -> KeyStore:
    return EncryptedFileKey.generate(tmp_path / "fw.key", ec.SECP256R1(), b"passphrase")


@pytest.fixture
async def client(manager: DeviceManager, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    token = await AdminTokens(manager.store, manager.clock).create("editor", "test editor")
    firmware = Firmware(FirmwareStore(manager.store), manager, tmp_path / "firmware")
    app = admin_api(manager, firmware)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://ironcore",
        headers={"Authorization": f"Bearer {token}"},
    ) as http:
        yield http


async def fleet(manager: DeviceManager, count: int, config: bytes = b"") -> list[str]:
    parent = RegistryName.parse(PROJECT, LOCATION, REGISTRY)
    await manager.create_registry(parent.location, DeviceRegistry(id=REGISTRY))
    ids = [f"dev-{n:03d}" for n in range(count)]
    for device_id in ids:
        await manager.create_device(parent, Device(id=device_id))
        if config:
            ref = await _ref(manager, device_id)
            await manager.store.configs.modify_config(ref, 1, config, manager.clock(), 10)
    return ids


async def _ref(manager: DeviceManager, device_id: str) -> int:
    parent = RegistryName.parse(PROJECT, LOCATION, REGISTRY)
    record = await manager.store.devices.get_device(parent, device_id, None)
    assert record is not None
    return record.device.num_id


async def config_of(manager: DeviceManager, device_id: str) -> dict[str, Any]:
    configs = await manager.store.configs.list_configs(await _ref(manager, device_id), 1)
    data = configs[0].binary_data
    return json.loads(data) if data else {}


async def report(manager: DeviceManager, device_id: str, firmware: dict[str, Any]) -> None:
    data = json.dumps({"firmware": firmware}).encode()
    await manager.store.configs.add_state(await _ref(manager, device_id), data, manager.clock(), 10)


async def upload(client: httpx.AsyncClient, image: bytes, manifest: Any, **extra: Any) -> Any:
    body = {"image": base64.b64encode(image).decode(), "manifest": manifest, **extra}
    return await client.post(UPLOAD, json=body)


# Pure rules


def test_stage_membership_is_deterministic_nested_and_sized() -> None:
    ids = [f"dev-{n}" for n in range(1000)]
    assert bucket("dev-1") == bucket("dev-1") and 0 <= bucket("dev-1") < 10_000
    one, ten, everyone = (stage_members(ids, p, 1) for p in (1, 10, 100))
    assert stage_members(list(reversed(ids)), 10, 1) == ten
    assert one == ten[: len(one)] and ten == everyone[: len(ten)]
    assert 3 <= len(one) <= 20 and 70 <= len(ten) <= 130 and len(everyone) == 1000
    # A stage is never smaller than the minimum, nor larger than the fleet.
    assert len(stage_members(ids[:5], 1, 3)) == 3
    assert len(stage_members(ids[:2], 1, 3)) == 2


def test_config_merge_keeps_the_users_keys() -> None:
    merged = json.loads(merge_config(b'{"interval": 30, "firmware": "old"}', {"rollout": "1"}))
    assert merged == {"interval": 30, "firmware": {"rollout": "1"}}
    assert json.loads(merge_config(b"", {"rollout": "1"})) == {"firmware": {"rollout": "1"}}
    for data in (b"interval=30", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(FailedPrecondition):
            merge_config(data, {"rollout": "1"})


@given(st.binary(max_size=200))
@example(b"[" * 5000 + b"]" * 5000)
@example(b'{"firmware": ' + b"[" * 5000)
@example(b'{"a": ' * 5000 + b"0" + b"}" * 5000)
def test_any_state_or_config_is_read_without_error(data: bytes) -> None:
    """A device's state (what it wrote, nested as deep as it likes) is an outcome, and a
    config either merges or is refused as not JSON; nothing else is raised."""
    assert outcome(data, "1", 2).kind in ("succeeded", "failed", "pending")
    with contextlib.suppress(FailedPrecondition):
        merge_config(data, {"rollout": "1"})


def test_outcome_reads_the_state() -> None:
    def state(**firmware: Any) -> bytes:
        return json.dumps({"firmware": firmware}).encode()

    assert outcome(state(version=2), "1", 2).kind == "succeeded"
    assert outcome(state(version=3), "1", 2).kind == "succeeded"
    refused = outcome(
        state(version=1, rollout="1", result="refused", reason="BAD_SIGNATURE"), "1", 2
    )
    assert (refused.kind, refused.reason) == ("failed", "BAD_SIGNATURE")
    # A refusal reported for another rollout is not held against this one.
    assert outcome(state(version=1, rollout="0", result="refused"), "1", 2).kind == "pending"
    assert outcome(None, "1", 2).kind == "pending"
    assert outcome(b"not json", "1", 2).kind == "pending"


# Upload


async def test_upload_stores_the_image_durably(
    client: httpx.AsyncClient, key: KeyStore, tmp_path: Path
) -> None:
    image, manifest = release(key, 2)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    response = await upload(client, image, manifest, publicKey=public.decode())
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["size"]) == (MODEL, 2, str(len(image)))
    assert (tmp_path / "firmware" / body["sha256"]).read_bytes() == image
    # The same upload again is accepted; the listing shows the image once.
    assert (await upload(client, image, json.dumps(manifest))).status_code == 200
    listing = (await client.get(UPLOAD)).json()
    assert [i["sha256"] for i in listing["images"]] == [body["sha256"]]


async def test_bad_uploads_are_refused_and_write_nothing(
    client: httpx.AsyncClient, key: KeyStore, tmp_path: Path
) -> None:
    image, manifest = release(key, 2)
    other = EncryptedFileKey.generate(tmp_path / "other.key", ec.SECP256R1(), b"passphrase")
    other_pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cases = [
        (image + b"x", manifest, {}, "the manifest says"),
        (image[:-1], manifest, {}, "the manifest says"),
        (image[:-1] + b"?", manifest, {}, "SHA-256"),
        (image, {**manifest, "signature": "AAAA"}, {}, "signature is 3 bytes"),
        (image, "not json", {}, "not JSON"),
        (image, manifest, {"publicKey": other_pem.decode()}, "UNKNOWN_KEY"),
        (image, manifest, {"publicKey": "junk"}, "PEM"),
    ]
    for data, document, extra, words in cases:
        response = await upload(client, data, document, **extra)
        assert response.status_code == 400, response.text
        assert words in response.json()["error"]["message"]
    assert not (tmp_path / "firmware").exists() or not list((tmp_path / "firmware").iterdir())
    assert (await client.get(UPLOAD)).json() == {"images": []}


async def test_another_image_for_the_same_version_is_refused(
    client: httpx.AsyncClient, key: KeyStore
) -> None:
    image, manifest = release(key, 2)
    assert (await upload(client, image, manifest)).status_code == 200
    image2 = image + b"patched"
    manifest2 = sign(key, Manifest.for_image(MODEL, 2, image2, 2)).to_json()
    response = await upload(client, image2, manifest2)
    assert response.status_code == 409, response.text


# Rollouts


async def start(client: httpx.AsyncClient, key: KeyStore, **body: Any) -> dict[str, Any]:
    image, manifest = release(key, 2)
    sha = (await upload(client, image, manifest)).json()["sha256"]
    response = await client.post(ROLLOUTS, json={"sha256": sha, **body})
    assert response.status_code == 200, response.text
    rollout: dict[str, Any] = response.json()
    return rollout


async def test_a_rollout_tells_its_first_stage_through_the_config(
    client: httpx.AsyncClient, manager: DeviceManager, key: KeyStore
) -> None:
    ids = await fleet(manager, 20, config=b'{"interval": 30}')
    rollout = await start(client, key, stages=[10, 50, 100], failureThreshold=0.2)
    assert (rollout["state"], rollout["stage"], rollout["stagePercent"]) == ("RUNNING", 0, 10)
    first = stage_members(ids, 10, 1)
    assert rollout["devices"]["inStage"] == len(first) and rollout["devices"]["targeted"] == 20
    for device_id in ids:
        config = await config_of(manager, device_id)
        assert config["interval"] == 30
        if device_id in first:
            firmware = config["firmware"]
            assert firmware["rollout"] == rollout["id"]
            assert firmware["url"] == (
                f"/ironcore/v1/projects/{PROJECT}/locations/{LOCATION}/registries/{REGISTRY}"
                f"/devices/{device_id}/firmware/{rollout['image']['sha256']}"
            )
            assert set(firmware["manifest"]) == {"protected", "payload", "signature"}
        else:
            assert "firmware" not in config
    # A second running rollout in the registry would fight over the same config key.
    response = await client.post(ROLLOUTS, json={"sha256": rollout["image"]["sha256"]})
    assert response.status_code == 400
    assert "already has a running rollout" in response.json()["error"]["message"]


async def test_a_rollout_advances_counts_versions_and_succeeds(
    client: httpx.AsyncClient, manager: DeviceManager, key: KeyStore
) -> None:
    ids = await fleet(manager, 20)
    rollout = await start(client, key, stages=[10, 100])
    url = f"{ROLLOUTS}/{rollout['id']}"
    first = stage_members(ids, 10, 1)
    for device_id in ids:
        await report(manager, device_id, {"version": 1})
    for device_id in first[:-1]:
        await report(manager, device_id, {"version": 2, "rollout": rollout["id"], "result": "ok"})
    status = (await client.get(url)).json()
    assert (status["state"], status["stage"]) == ("RUNNING", 0)
    assert status["versions"] == {"1": 20 - len(first) + 1, "2": len(first) - 1}
    await report(manager, first[-1], {"version": 2, "rollout": rollout["id"], "result": "ok"})
    status = (await client.get(url)).json()
    assert (status["state"], status["stage"], status["devices"]["inStage"]) == ("RUNNING", 1, 20)
    assert "firmware" in await config_of(manager, ids[-1]) or ids[-1] in first
    for device_id in ids:
        await report(manager, device_id, {"version": 2, "rollout": rollout["id"], "result": "ok"})
    status = (await client.get(url)).json()
    assert status["state"] == "SUCCEEDED" and status["versions"] == {"2": 20}
    listing = (await client.get(ROLLOUTS)).json()
    assert [r["id"] for r in listing["rollouts"]] == [rollout["id"]]
    assert listing["versions"] == {"2": 20}


async def test_a_rollout_halts_when_failures_pass_the_threshold(
    client: httpx.AsyncClient, manager: DeviceManager, key: KeyStore
) -> None:
    ids = await fleet(manager, 30)
    rollout = await start(client, key, stages=[20, 100], failureThreshold=0.25)
    url = f"{ROLLOUTS}/{rollout['id']}"
    first = stage_members(ids, 20, 1)
    assert len(first) >= 4
    refused = {"version": 1, "rollout": rollout["id"], "result": "refused"}
    # One failure of four reports is 25%: not above the threshold.
    for device_id in first[:3]:
        await report(manager, device_id, {"version": 2, "rollout": rollout["id"], "result": "ok"})
    await report(manager, first[3], {**refused, "reason": "DIGEST_MISMATCH"})
    assert (await client.get(url)).json()["state"] == "RUNNING"
    await report(manager, first[4 % len(first)], {**refused, "reason": "BAD_SIGNATURE"})
    status = (await client.get(url)).json()
    assert (status["state"], status["stage"]) == ("HALTED", 0)
    assert "above the failure threshold" in status["reason"]
    assert {f["reason"] for f in status["failures"]} == {"DIGEST_MISMATCH", "BAD_SIGNATURE"}
    # Nothing beyond the first stage was told, and a halted rollout stays where it stopped.
    for device_id in set(ids) - set(first):
        assert "firmware" not in await config_of(manager, device_id)
    for device_id in first:
        await report(manager, device_id, {"version": 2, "rollout": rollout["id"], "result": "ok"})
    assert (await client.get(url)).json()["stage"] == 0


async def test_devices_with_a_config_that_is_not_json_are_skipped(
    client: httpx.AsyncClient, manager: DeviceManager, key: KeyStore
) -> None:
    ids = await fleet(manager, 3, config=b"interval=30")
    rollout = await start(client, key, stages=[100])
    assert rollout["devices"]["skipped"] == 3
    assert rollout["skipped"][0] == {"deviceId": ids[0], "reason": "its config is not JSON"}
    assert (await config_of_raw(manager, ids[0])) == b"interval=30"


async def config_of_raw(manager: DeviceManager, device_id: str) -> bytes:
    return (await manager.store.configs.list_configs(await _ref(manager, device_id), 1))[
        0
    ].binary_data


async def test_an_operator_halts_and_a_device_list_targets_only_those(
    client: httpx.AsyncClient, manager: DeviceManager, key: KeyStore
) -> None:
    ids = await fleet(manager, 10)
    rollout = await start(client, key, deviceIds=ids[:2], stages=[100])
    assert rollout["devices"]["targeted"] == 2 and rollout["target"] == {"deviceIds": ids[:2]}
    assert "firmware" not in await config_of(manager, ids[5])
    response = await client.post(f"{ROLLOUTS}/{rollout['id']}:halt", json={"reason": "oops"})
    assert response.json()["state"] == "HALTED" and "oops" in response.json()["reason"]
    assert (await client.post(f"{ROLLOUTS}/{rollout['id']}:halt", json={})).status_code == 400


async def test_rollout_requests_are_checked(
    client: httpx.AsyncClient, manager: DeviceManager, key: KeyStore
) -> None:
    await fleet(manager, 2)
    image, manifest = release(key, 2)
    sha = (await upload(client, image, manifest)).json()["sha256"]
    for body, status in [
        ({}, 400),
        ({"sha256": "0" * 64}, 404),
        ({"sha256": "xyz"}, 400),
        ({"model": MODEL, "version": 9}, 404),
        ({"sha256": sha, "stages": [10, 5]}, 400),
        ({"sha256": sha, "stages": []}, 400),
        ({"sha256": sha, "failureThreshold": 2}, 400),
        ({"sha256": sha, "deviceIds": ["nope"]}, 404),
    ]:
        response = await client.post(ROLLOUTS, json=body)
        assert response.status_code == status, (body, response.text)
    assert (await client.get(f"{ROLLOUTS}/42")).status_code == 404
    assert (await client.get(f"{ROLLOUTS}/x")).status_code == 404
    by_version = await client.post(ROLLOUTS, json={"model": MODEL, "version": 2})
    assert by_version.status_code == 200 and by_version.json()["image"]["sha256"] == sha
