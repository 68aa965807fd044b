"""Manifest import into a registry: real Microchip manifests, factory reels, and bad input."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ironcore import jose
from ironcore.bridge.devices import DeviceAuthenticator
from ironcore.device.software_element import SoftwareElement
from ironcore.factory.importer import import_manifest
from ironcore.factory.manifest import ManifestError, PublicJwk
from ironcore.pki.ca import ec_public_key
from ironcore.registry.names import DeviceRef, LocationName, RegistryName
from ironcore.registry.provenance import signer_key_id
from ironcore.registry.resources import (
    Device,
    DeviceRegistry,
    PublicKeyCertificate,
    RegistryCredential,
)
from ironcore.registry.revocation import Revocations, RevokedSigners
from ironcore.registry.service import DeviceManager
from tests.factory.owner import VECTORS, Owner, decode, sign_with_dummy
from tests.keys import es256_key, public_pem

GENUINE = VECTORS / "manifest_ATECC608A-MAH4I.json"
EXAMPLE = VECTORS / "self-signed-example" / "manifest.json"
DUMMY_CERT = (VECTORS / "self-signed-example" / "dummy_signer-ca.crt").read_text()
LOCATION = LocationName("p", "us-central1")


async def _registry(
    manager: DeviceManager, name: str = "reg", ca_pems: tuple[str, ...] = ()
) -> RegistryName:
    credentials = [
        RegistryCredential(public_key_certificate=PublicKeyCertificate(certificate=p))
        for p in ca_pems
    ]
    await manager.create_registry(LOCATION, DeviceRegistry(id=name, credentials=credentials))
    return RegistryName(LOCATION, name)


def _statuses(report: Any) -> list[str]:
    return [entry.status for entry in report.entries]


async def test_genuine_microchip_manifest_imports_once(manager: DeviceManager) -> None:
    registry = await _registry(manager)
    report = await import_manifest(manager, registry, GENUINE.read_bytes())
    assert _statuses(report) == ["imported", "imported"]
    device = (await manager.device_record(DeviceRef(registry, "d01230390B3D1450C01", None))).device
    credential = device.credentials[0].public_key
    assert credential is not None and credential.format.name == "ES256_X509_PEM"
    certificate = x509.load_pem_x509_certificate(credential.key.encode())
    assert certificate.subject.rfc4514_string() == (
        "CN=sn01230390B3D1450C01,O=Microchip Technology Inc"
    )
    assert device.metadata["uniqueId"] == "01230390b3d1450c01"
    assert device.metadata["partNumber"] == "ATECC608A-MAH4I"
    assert device.metadata["groupId"] == "1"
    assert device.metadata["provisioningTime"] == "2020-06-09T22:49:52.470000Z"
    assert "Log Signer 002" in device.metadata["manifestSigner"]
    assert "Signer 2C00" in device.metadata["certificateSigner"]
    assert signer_key_id(certificate) == device.metadata["certificateSignerKeyId"]

    again = await import_manifest(manager, registry, GENUINE.read_bytes())
    assert _statuses(again) == ["unchanged", "unchanged"]
    assert again.entries[0].reason == "already imported"
    page = await manager.list_devices(registry)
    assert len(page.items) == 2


async def test_self_signed_example(manager: DeviceManager) -> None:
    """pytrustplatform's example predates its own signer: refused for exactly that reason,
    and its payload re-signed with the published key round-trips."""
    registry = await _registry(manager)
    report = await import_manifest(manager, registry, EXAMPLE.read_bytes())
    assert report.entries[0].reason.startswith("unknown manifest signer")
    report = await import_manifest(
        manager, registry, EXAMPLE.read_bytes(), trust_signers=[DUMMY_CERT]
    )
    assert "was not valid at provisioning time 2020-06-09" in report.entries[0].reason

    payload = decode(json.loads(EXAMPLE.read_text())[0]["payload"])
    payload["provisioningTimestamp"] = "2021-01-01T00:00:00.000Z"
    manifest = json.dumps([sign_with_dummy(payload)])
    report = await import_manifest(manager, registry, manifest, trust_signers=[DUMMY_CERT])
    assert _statuses(report) == ["imported"]
    assert report.entries[0].device_id == "d01232B4E0931D16901"


async def test_factory_reel_imports_and_its_elements_connect(
    manager: DeviceManager, tmp_path: Path
) -> None:
    owner = Owner.create(tmp_path / "pki")
    reel = owner.reel(tmp_path / "reel", 3)
    registry = await _registry(manager, ca_pems=(owner.root_pem,))
    data = reel.manifest.read_text()
    dry = await import_manifest(
        manager, registry, data, trust_signers=[owner.manifest_signer_pem], dry_run=True
    )
    assert dry.dry_run and _statuses(dry) == ["imported"] * 3
    assert not (await manager.list_devices(registry)).items
    report = await import_manifest(
        manager, registry, data, trust_signers=[owner.manifest_signer_pem]
    )
    assert _statuses(report) == ["imported"] * 3

    serial = reel.serials[0]
    element = SoftwareElement.open(tmp_path / "reel" / "elements" / f"{serial.hex()}.json")
    token = _jwt(element, "p")
    ref = DeviceRef(registry, f"d{serial.hex().upper()}", None)
    authenticated = await DeviceAuthenticator(manager.store).authenticate(ref, token, "mqtt")
    assert authenticated.context.device.id == ref.device_id
    stored = authenticated.context.device.credentials[0].public_key
    assert stored is not None
    assert x509.load_pem_x509_certificate(stored.key.encode()).public_bytes(
        serialization.Encoding.DER
    ) == element.read_cert(10)


async def test_registry_ca_certificates_decide_the_chain(
    manager: DeviceManager, tmp_path: Path
) -> None:
    owner = Owner.create(tmp_path / "pki", ("b1", "b2"))
    reel = owner.reel(tmp_path / "reel", 2, "b2")
    signers = [owner.manifest_signer_pem]
    # No registry CA and no trusted root: the owner's chain is unknown.
    open_registry = await _registry(manager, "open")
    report = await import_manifest(
        manager, open_registry, reel.manifest.read_text(), trust_signers=signers
    )
    assert "does not chain to a trusted root" in report.entries[0].reason
    # A registry that trusts batch b1 only refuses b2's devices; one that trusts b2 takes them.
    b1_only = await _registry(manager, "b1only", (owner.signer_pem("b1"),))
    report = await import_manifest(
        manager, b1_only, reel.manifest.read_text(), trust_signers=signers
    )
    assert "does not chain to a trusted root" in report.entries[0].reason
    b2 = await _registry(manager, "b2only", (owner.signer_pem("b2"),))
    report = await import_manifest(manager, b2, reel.manifest.read_text(), trust_signers=signers)
    assert _statuses(report) == ["imported", "imported"]
    # Genuine Microchip devices do not chain to the owner's CA either.
    report = await import_manifest(manager, b2, GENUINE.read_bytes())
    assert "does not chain to the registry's CA certificates" in report.entries[0].reason


async def test_revoked_signer(manager: DeviceManager, tmp_path: Path) -> None:
    owner = Owner.create(tmp_path / "pki")
    reel = owner.reel(tmp_path / "reel", 2)
    registry = await _registry(manager, ca_pems=(owner.root_pem,))
    signers = RevokedSigners(manager.store)
    revocations = Revocations(manager.store, signers, manager.clock)
    record, created = await revocations.revoke_signer(owner.signer_pem(), "keyCompromise")
    assert created and record.key_id == jose.key_id(ec_public_key(owner.ca.signer("b1"))).hex()
    _, again = await revocations.revoke_signer(owner.signer_pem(), "keyCompromise")
    assert not again
    report = await import_manifest(
        manager, registry, reel.manifest.read_text(), trust_signers=[owner.manifest_signer_pem]
    )
    assert all("is revoked" in entry.reason for entry in report.entries)

    payload = decode(json.loads(reel.manifest.read_text())[0]["payload"])
    device_der = base64.b64decode(payload["publicKeySet"]["keys"][0]["x5c"][0])
    certificate = x509.load_der_x509_certificate(device_der)
    await signers.fresh()
    assert signers.get(signer_key_id(certificate) or "") == record
    assert await revocations.is_revoked(record.fingerprint) == record
    with pytest.raises(Exception, match="not a CA certificate"):
        await revocations.revoke_signer(
            certificate.public_bytes(serialization.Encoding.PEM).decode(), ""
        )


def test_signer_key_id_reads_certificates_cryptography_refuses() -> None:
    path = VECTORS / "certs" / "ATECC608B-TNGTLS_device_template.crt"
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    with pytest.raises(ValueError):
        _ = certificate.extensions
    assert signer_key_id(certificate) is not None
    assert len(signer_key_id(certificate) or "") == 40


async def test_bad_entries_are_rejected_one_by_one(manager: DeviceManager, tmp_path: Path) -> None:
    owner = Owner.create(tmp_path / "pki")
    reel = owner.reel(tmp_path / "reel", 6)
    registry = await _registry(manager, ca_pems=(owner.root_pem,))
    entries = json.loads(reel.manifest.read_text())
    forged = copy.deepcopy(entries[1])
    payload = decode(forged["payload"])
    payload["groupId"] = "tampered"
    forged["payload"] = jose.b64url_encode(json.dumps(payload).encode())
    entries[1] = forged
    entries[2]["header"]["uniqueId"] = entries[3]["header"]["uniqueId"]
    short = jose.b64url_decode(entries[4]["signature"], "signature")[:-3]
    entries[4]["signature"] = jose.b64url_encode(short)
    entries.append({"payload": "x"})
    entries.append("not an object")
    report = await import_manifest(
        manager, registry, json.dumps(entries), trust_signers=[owner.manifest_signer_pem]
    )
    assert _statuses(report) == [
        "imported",
        "rejected",
        "rejected",
        "imported",
        "rejected",
        "imported",
        "rejected",
        "rejected",
    ]
    reasons = [entry.reason for entry in report.entries]
    assert "signature does not verify" in reasons[1]
    assert "header.uniqueId" in reasons[2] and "differs from the signed uniqueId" in reasons[2]
    assert "64 bytes" in reasons[4]
    assert "no protected string" in reasons[6]
    assert "not a JSON string" in reasons[7]
    assert len((await manager.list_devices(registry)).items) == 3


async def test_whole_file_problems(manager: DeviceManager, tmp_path: Path) -> None:
    registry = await _registry(manager)
    text = GENUINE.read_text()
    with pytest.raises(ManifestError, match="truncated"):
        await import_manifest(manager, registry, text[: len(text) // 2])
    with pytest.raises(ManifestError, match="the manifest is not JSON"):
        await import_manifest(manager, registry, "{nope")
    with pytest.raises(ManifestError, match="not a JSON object"):
        await import_manifest(manager, registry, "{}")
    with pytest.raises(ManifestError, match="no entries"):
        await import_manifest(manager, registry, "[]")
    with pytest.raises(ManifestError, match="UTF-8"):
        await import_manifest(manager, registry, b"\xff\xfe[]")
    assert not (await manager.list_devices(registry)).items


async def test_expired_signer_and_lite_entries(manager: DeviceManager) -> None:
    registry = await _registry(manager)
    base = {
        "version": 2,
        "model": "ECC608",
        "partNumber": "ECC608-TMNGTLS",
        "distributer": {"organizationName": "Microchip", "organizationalUnitName": "Direct"},
        "groupId": "G1",
        "provisioningTimestamp": "2024-01-01T00:00:00.000Z",
        "uniqueId": "0123aabbccddeeff01",
    }
    old = dict(base, uniqueId="0123aabbccddee0001", provisioningTimestamp="2019-01-01T00:00:00Z")
    manifest = json.dumps([sign_with_dummy(base), sign_with_dummy(old)])
    report = await import_manifest(manager, registry, manifest, trust_signers=[DUMMY_CERT])
    assert _statuses(report) == ["imported", "rejected"]
    assert "not valid at provisioning time 2019-01-01" in report.entries[1].reason
    lite = (await manager.device_record(DeviceRef(registry, "d0123AABBCCDDEEFF01", None))).device
    assert lite.credentials == [] and lite.metadata["partNumber"] == "ECC608-TMNGTLS"
    report = await import_manifest(manager, registry, manifest, trust_signers=[DUMMY_CERT])
    assert _statuses(report) == ["unchanged", "rejected"]


async def test_conflicts_are_reported_and_left_alone(manager: DeviceManager) -> None:
    registry = await _registry(manager)
    taken = es256_key()
    await manager.create_device(
        registry,
        Device.model_validate(
            {
                "id": "d01230390B3D1450C01",
                "credentials": [{"publicKey": {"format": "ES256_PEM", "key": public_pem(taken)}}],
            }
        ),
    )
    # Another device already holds the second element's slot 0 key.
    genuine = json.loads(GENUINE.read_text())
    jwk = decode(genuine[1]["payload"])["publicKeySet"]["keys"][0]
    x, y = (base64.urlsafe_b64decode(jwk[c] + "=") for c in ("x", "y"))
    key_pem = (
        PublicJwk(0, x, y)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    await manager.create_device(
        registry,
        Device.model_validate(
            {
                "id": "someone-else",
                "credentials": [{"publicKey": {"format": "ES256_PEM", "key": key_pem}}],
            }
        ),
    )
    report = await import_manifest(manager, registry, GENUINE.read_bytes())
    assert _statuses(report) == ["rejected", "rejected"]
    assert "already exists with other credentials" in report.entries[0].reason
    assert "already a credential of device someone-else" in report.entries[1].reason
    kept = (await manager.device_record(DeviceRef(registry, "d01230390B3D1450C01", None))).device
    assert kept.credentials[0].public_key is not None
    assert kept.credentials[0].public_key.key == public_pem(taken)
    assert not kept.metadata


async def test_large_manifest_goes_through_the_process_pool(
    manager: DeviceManager, tmp_path: Path
) -> None:
    owner = Owner.create(tmp_path / "pki")
    reel = owner.reel(tmp_path / "reel", 300, when=datetime(2026, 1, 2, tzinfo=UTC))
    registry = await _registry(manager, ca_pems=(owner.root_pem,))
    entries = json.loads(reel.manifest.read_text())
    entries[150]["signature"] = entries[151]["signature"]
    report = await import_manifest(
        manager, registry, json.dumps(entries), trust_signers=[owner.manifest_signer_pem]
    )
    assert report.count("imported") == 299 and report.count("rejected") == 1
    assert "signature does not verify" in report.entries[150].reason
    assert len((await manager.list_devices(registry, page_size=500)).items) == 299


def _jwt(element: SoftwareElement, project: str) -> str:
    """A device JWT signed inside the element (the device SDK does the same)."""
    now = int(time.time())
    header = jose.b64url_encode(b'{"alg":"ES256","typ":"JWT"}')
    claims = jose.b64url_encode(json.dumps({"aud": project, "iat": now, "exp": now + 600}).encode())
    signing_input = f"{header}.{claims}"
    signature = element.sign(0, hashlib.sha256(signing_input.encode()).digest())
    return f"{signing_input}.{jose.b64url_encode(signature)}"
