"""Revocation that follows provenance, end to end: devices on software secure elements whose
slot 0 key a batch signer certified rotate their keys with the SDK over real MQTT; revoking
the signer cuts off every key that descends from it, before or after the rotation, on both
device bridges; an operator's re-attestation lets the device back in, and keys it rotates to
later descend from the attestation."""

from __future__ import annotations

import base64
import datetime as dt
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ironcore.device.rotation import KeyRotator
from ironcore.device.secure_element import SecureElement, public_key_from_raw
from ironcore.device.software_element import SoftwareElement
from ironcore.device.tokens import es256_jwt
from tests.bridge.devices import LOCATION, PROJECT, admin, connect, create_registry, last_error
from tests.conftest import (
    Database,
    Server,
    need_service,
    start_peer,
    start_server,
    stop_server,
    wait_for,
)
from tests.device.test_rotation_e2e import ROTATION, device, rotation_state, start_rotation
from tests.device.test_sdk_clients import element_pem, register
from tests.keys import es256_key
from tests.ops.cluster import BUS

REFUSED = 5  # CONNACK "not authorized"


class Signer:
    """A batch signer CA, as `ironcore ca signer create` makes one."""

    def __init__(self, name: str) -> None:
        self.key = es256_key()
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"batch signer {name}")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        self.key_id = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()).digest.hex()

    def certify(self, element: SecureElement) -> str:
        """A device certificate for the element's slot 0 key."""
        public = public_key_from_raw(element.get_pubkey(0))
        assert isinstance(public, ec.EllipticCurvePublicKey)
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode()

    def revoke(self, server: Server) -> None:
        r = httpx.post(
            f"{server.url}/ironcore/v1/revocations",
            json={"certificate": self.pem, "reason": "keyCompromise"},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert r.status_code == 200, r.text


def certified_device(server: Server, tmp_path: Path, device_id: str, signer: Signer) -> Path:
    path = tmp_path / f"{device_id}.se"
    element = SoftwareElement.provision(path)
    register(server, device_id, signer.certify(element), "ES256_X509_PEM")
    return path


def token(tmp_path: Path, device_id: str, slot: int) -> str:
    element = SoftwareElement.open(tmp_path / f"{device_id}.se")
    return es256_jwt(element, slot, PROJECT, time.time())


def connack(server: Server, device_id: str, jwt: str) -> int:
    client = connect(server, "reg-sdk", device_id, jwt, subscribe=False, wait=False)
    try:
        return client.wait_connack()
    finally:
        client.close()


def http_status(server: Server, device_id: str, jwt: str) -> int:
    r = httpx.post(
        f"{server.url}/v1/projects/{PROJECT}/locations/{LOCATION}"
        f"/registries/reg-sdk/devices/{device_id}:publishEvent",
        json={"binaryData": base64.b64encode(b"x").decode()},
        headers={"authorization": f"Bearer {jwt}"},
    )
    return r.status_code


def rotate(server: Server, tmp_path: Path, device_id: str) -> KeyRotator:
    """One key rotation driven by the device SDK, to completion; the client is stopped after."""
    _, rotator, client = device(server, tmp_path, device_id)
    client.start()
    try:
        wait_for(lambda: client.connected, 10, "the device to connect")
        start_rotation(server, device_id)
        wait_for(lambda: rotation_state(server, device_id) == "COMPLETED", 20, "completion")
        wait_for(lambda: rotator.state.pending_slot is None, 10, "the device to finish")
    finally:
        client.stop()
    return rotator


def provenance(server: Server, device_id: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{server.url}{ROTATION}/{device_id}/credentialProvenance",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["credentials"]
    return found


def reattest(server: Server, device_id: str, bearer: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}{ROTATION}/{device_id}:reattest",
        json={},
        headers={"Authorization": f"Bearer {bearer or server.token}"},
    )


@pytest.fixture
def server(module_server: Server) -> Server:
    with admin(module_server) as api:
        if api.get("/registries/reg-sdk").status_code == 404:
            create_registry(module_server, "reg-sdk")
    return module_server


@pytest.mark.parametrize("processes", [1, 2])
def test_rotation_then_revocation_then_reattestation(tmp_path: Path, processes: int) -> None:
    """With 2 processes (`--mqtt-workers 2`) the live session may sit on the worker, which
    must cut it off for a key that only descends from the revoked signer."""
    running = start_server(tmp_path / "data", None, ["--mqtt-workers", str(processes)])
    try:
        create_registry(running, "reg-sdk")
        signer = Signer("p1")
        certified_device(running, tmp_path, "prov-a", signer)
        rotated = rotate(running, tmp_path, "prov-a").state.active
        assert rotated != 0
        live = connect(running, "reg-sdk", "prov-a", token(tmp_path, "prov-a", rotated))
        assert http_status(running, "prov-a", token(tmp_path, "prov-a", rotated)) == 200
        first, second = provenance(running, "prov-a")
        assert first["origin"] == "certificate" and first["signers"] == [signer.key_id]
        assert second["origin"] == "rotation" and second["rotatedFrom"] == first["fingerprint"]
        assert second["signers"] == [signer.key_id] and "revokedSigner" not in second

        signer.revoke(running)
        live.wait_disconnect()
        live.close()
        for slot in (0, rotated):
            assert connack(running, "prov-a", token(tmp_path, "prov-a", slot)) == REFUSED
            assert http_status(running, "prov-a", token(tmp_path, "prov-a", slot)) == 401
        last_error(running, "reg-sdk", "prov-a", "batch signer p1 was revoked")
        assert all(
            c["revokedSigner"]["keyId"] == signer.key_id for c in provenance(running, "prov-a")
        )

        r = reattest(running, "prov-a")
        assert r.status_code == 200, r.text
        principal = f"adminToken:{running.token.split('_')[1]}"
        for credential in r.json()["credentials"]:
            assert credential["attestedBy"] == principal and credential["attestTime"]
            assert "revokedSigner" not in credential
        assert f"re-attested by {principal}" in running.log.read_text()
        assert connack(running, "prov-a", token(tmp_path, "prov-a", rotated)) == 0
        assert http_status(running, "prov-a", token(tmp_path, "prov-a", rotated)) == 200

        # A key rotated to after the attestation descends from it, not from the signer.
        again = rotate(running, tmp_path, "prov-a").state.active
        assert again not in (0, rotated)
        assert connack(running, "prov-a", token(tmp_path, "prov-a", again)) == 0
        newest = provenance(running, "prov-a")[-1]
        assert newest["origin"] == "rotation" and "signers" not in newest
        assert "attestedBy" not in newest and "revokedSigner" not in newest
    finally:
        stop_server(running)


@pytest.mark.databases("postgresql")
def test_two_servers_cut_off_a_rotated_key(tmp_path: Path, database: Database) -> None:
    """Two servers sharing the database and the bus: the device rotates on one, a session with
    the rotated key lives on the other, and the signer is revoked through the first."""
    need_service("NATS", "127.0.0.1", 4222)
    first = start_server(tmp_path / "one", database, ["--bus", BUS])
    second = start_peer(first, tmp_path / "two", database, ["--bus", BUS])
    try:
        create_registry(first, "reg-sdk")
        signer = Signer("p7")
        certified_device(first, tmp_path, "prov-h", signer)
        rotated = rotate(first, tmp_path, "prov-h").state.active
        live = connect(second, "reg-sdk", "prov-h", token(tmp_path, "prov-h", rotated))
        signer.revoke(first)
        live.wait_disconnect()
        live.close()
        for server in (first, second):
            for slot in (0, rotated):
                assert connack(server, "prov-h", token(tmp_path, "prov-h", slot)) == REFUSED
        assert reattest(first, "prov-h").status_code == 200
        assert connack(second, "prov-h", token(tmp_path, "prov-h", rotated)) == 0
    finally:
        stop_server(second)
        stop_server(first)


def test_revoked_first_the_device_cannot_rotate(server: Server, tmp_path: Path) -> None:
    signer = Signer("p2")
    certified_device(server, tmp_path, "prov-b", signer)
    assert connack(server, "prov-b", token(tmp_path, "prov-b", 0)) == 0
    signer.revoke(server)
    start_rotation(server, "prov-b")
    _, rotator, client = device(server, tmp_path, "prov-b")
    client.start(wait=None)
    try:
        # paho reports the refusal as an MQTT 5 reason code; any refusal will do.
        wait_for(lambda: client.last_connack > 0, 10, "the refusal")
        assert not client.connected
    finally:
        client.stop()
    assert rotation_state(server, "prov-b") == "REQUESTED"
    assert rotator.state.active == 0 and len(provenance(server, "prov-b")) == 1


def test_a_chain_of_two_rotations_is_cut_off(server: Server, tmp_path: Path) -> None:
    signer = Signer("p3")
    certified_device(server, tmp_path, "prov-c", signer)
    first = rotate(server, tmp_path, "prov-c").state.active
    second = rotate(server, tmp_path, "prov-c").state.active
    chain = provenance(server, "prov-c")
    assert [c["origin"] for c in chain] == ["certificate", "rotation", "rotation"]
    assert chain[2]["rotatedFrom"] == chain[1]["fingerprint"]
    assert chain[2]["signers"] == [signer.key_id]
    for slot in (0, first, second):
        assert connack(server, "prov-c", token(tmp_path, "prov-c", slot)) == 0
    signer.revoke(server)
    for slot in (0, first, second):
        assert connack(server, "prov-c", token(tmp_path, "prov-c", slot)) == REFUSED


def test_admin_devices_and_other_signers_devices_are_unaffected(
    server: Server, tmp_path: Path
) -> None:
    revoked, other = Signer("p4"), Signer("p5")
    certified_device(server, tmp_path, "prov-d", revoked)
    certified_device(server, tmp_path, "prov-e", other)
    element = SoftwareElement.provision(tmp_path / "prov-f.se")
    register(server, "prov-f", element_pem(element))
    other_rotated = rotate(server, tmp_path, "prov-e").state.active
    admin_rotated = rotate(server, tmp_path, "prov-f").state.active
    assert [c["origin"] for c in provenance(server, "prov-f")] == ["admin", "rotation"]
    revoked.revoke(server)
    assert connack(server, "prov-d", token(tmp_path, "prov-d", 0)) == REFUSED
    for device_id, slot in (("prov-e", 0), ("prov-e", other_rotated), ("prov-f", admin_rotated)):
        assert connack(server, device_id, token(tmp_path, device_id, slot)) == 0


def test_reattesting_takes_the_owner_role(server: Server, tmp_path: Path) -> None:
    signer = Signer("p6")
    certified_device(server, tmp_path, "prov-g", signer)
    signer.revoke(server)
    r = httpx.post(
        f"{server.url}/ironcore/v1/tokens",
        json={"role": "editor", "name": "contractor"},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert r.status_code == 200, r.text
    editor = r.json()["token"]
    r = reattest(server, "prov-g", editor)
    assert r.status_code == 403, r.text
    assert "ironcore.revocations.manage" in r.json()["error"]["message"]
    assert connack(server, "prov-g", token(tmp_path, "prov-g", 0)) == REFUSED
    assert reattest(server, "prov-none").status_code == 404
