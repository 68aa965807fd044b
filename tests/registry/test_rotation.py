"""Key rotation rules on both databases, with each failure injected between the steps."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ironcore.errors import FailedPrecondition
from ironcore.formats.rotation import proof_input
from ironcore.identity.credentials import parse_device_key
from ironcore.registry.names import DeviceRef, LocationName, RegistryName
from ironcore.registry.resources import Device, DeviceRegistry
from ironcore.registry.rotation import KeyRotation, Rotations
from ironcore.registry.service import DeviceManager
from ironcore.registry.store.rotation import RotationStore
from tests.conftest import Clock
from tests.keys import es256_key, public_pem

REGISTRY = RegistryName(LocationName("proj", "us-central1"), "reg-rot")


def fingerprint(pem: str) -> str:
    return parse_device_key("ES256_PEM", pem, "key").fingerprint


def proof(key: ec.EllipticCurvePrivateKey, rotation_id: str, nonce: str, pem: str) -> str:
    r, s = decode_dss_signature(
        key.sign(proof_input(rotation_id, nonce, pem), ec.ECDSA(hashes.SHA256()))
    )
    return base64.urlsafe_b64encode(r.to_bytes(32) + s.to_bytes(32)).decode().rstrip("=")


async def offer_new_key(
    rotations: Rotations, num_id: int, rotation: KeyRotation, used_pem: str
) -> tuple[str, KeyRotation]:
    """A new key offered with its proof, over a connection made with the key `used_pem`: the
    new key's PEM, and the rotation as the offer left it."""
    new = es256_key()
    new_pem = public_pem(new)
    offered = await rotations.offer(
        num_id,
        rotation.id,
        new_pem,
        proof(new, rotation.id, rotation.nonce, new_pem),
        fingerprint(used_pem),
    )
    return new_pem, offered


async def device_with_key(manager: DeviceManager, pem: str, device_id: str = "dev-rot") -> int:
    if await manager.store.registries.get_registry(REGISTRY) is None:
        await manager.create_registry(REGISTRY.location, DeviceRegistry(id=REGISTRY.registry))
    device = Device.model_validate(
        {"id": device_id, "credentials": [{"publicKey": {"format": "ES256_PEM", "key": pem}}]}
    )
    return (await manager.create_device(REGISTRY, device)).num_id


async def credentials(manager: DeviceManager, num_id: int) -> list[tuple[str, str]]:
    device = (await manager.device_record(DeviceRef(REGISTRY, None, num_id))).device
    return [
        (fingerprint(c.public_key.key), c.to_wire()["expirationTime"])
        for c in device.credentials
        if c.public_key
    ]


@pytest.fixture
def rotations(manager: DeviceManager, clock: Clock) -> Rotations:
    return Rotations(RotationStore(manager.store), clock)


async def test_happy_path_expires_the_old_key_only_after_the_new_one_connects(
    manager: DeviceManager, rotations: Rotations, clock: Clock
) -> None:
    old_pem = public_pem(old := es256_key())
    num_id = await device_with_key(manager, old_pem)
    rotation = await rotations.start(num_id, grace_seconds=3600)
    assert rotation.state == "requested"
    new_pem, added = await offer_new_key(rotations, num_id, rotation, old_pem)
    assert added.state == "key_added"
    # Both keys are valid and neither expires yet: a crash here leaves the device working.
    assert await credentials(manager, num_id) == [
        (fingerprint(old_pem), "1970-01-01T00:00:00Z"),
        (fingerprint(new_pem), "1970-01-01T00:00:00Z"),
    ]
    # Reconnecting with the old key (the device lost its state) completes nothing.
    again = await rotations.connected(num_id, fingerprint(old_pem))
    assert again is not None and again.state == "key_added"
    done = await rotations.connected(num_id, fingerprint(new_pem))
    assert done is not None and done.state == "completed"
    creds = dict(await credentials(manager, num_id))
    assert creds[fingerprint(new_pem)] == "1970-01-01T00:00:00Z"
    assert creds[fingerprint(old_pem)] == "2026-01-01T01:00:00Z"
    assert await rotations.connected(num_id, fingerprint(new_pem)) is None
    del old


async def test_offer_is_idempotent_and_survives_a_restart(
    manager: DeviceManager, clock: Clock
) -> None:
    old_pem = public_pem(es256_key())
    num_id = await device_with_key(manager, old_pem)
    rotation = await Rotations(RotationStore(manager.store), clock).start(num_id)
    new = es256_key()
    new_pem = public_pem(new)
    signed = proof(new, rotation.id, rotation.nonce, new_pem)
    first = await Rotations(RotationStore(manager.store), clock).offer(
        num_id, rotation.id, new_pem, signed, fingerprint(old_pem)
    )
    # A server restart (a new service on the same store) and a retransmitted offer.
    second = await Rotations(RotationStore(manager.store), clock).offer(
        num_id, rotation.id, new_pem, signed, fingerprint(old_pem)
    )
    assert first == second and second.state == "key_added"
    assert len(await credentials(manager, num_id)) == 2


async def test_bad_proof_fails_the_rotation_and_keeps_the_old_key(
    manager: DeviceManager, rotations: Rotations
) -> None:
    old_pem = public_pem(es256_key())
    num_id = await device_with_key(manager, old_pem)
    rotation = await rotations.start(num_id)
    new_pem = public_pem(es256_key())
    forged = proof(es256_key(), rotation.id, rotation.nonce, new_pem)
    failed = await rotations.offer(num_id, rotation.id, new_pem, forged, fingerprint(old_pem))
    assert failed.state == "failed" and "does not verify" in failed.reason
    assert await credentials(manager, num_id) == [(fingerprint(old_pem), "1970-01-01T00:00:00Z")]
    # A failed rotation is over: a new one may start.
    assert (await rotations.start(num_id)).state == "requested"


async def test_all_credential_slots_busy(manager: DeviceManager, rotations: Rotations) -> None:
    pems = [public_pem(es256_key()) for _ in range(3)]
    num_id = await device_with_key(manager, pems[0])
    await manager.update_device(
        DeviceRef(REGISTRY, None, num_id),
        Device.model_validate(
            {"credentials": [{"publicKey": {"format": "ES256_PEM", "key": p}} for p in pems]}
        ),
        "credentials",
    )
    rotation = await rotations.start(num_id)
    _, failed = await offer_new_key(rotations, num_id, rotation, pems[0])
    assert failed.state == "failed" and "3 live credentials" in failed.reason
    assert len(await credentials(manager, num_id)) == 3


async def test_rollback(manager: DeviceManager, rotations: Rotations) -> None:
    old_pem = public_pem(es256_key())
    num_id = await device_with_key(manager, old_pem)
    rotation = await rotations.start(num_id)
    with pytest.raises(FailedPrecondition):
        await rotations.start(num_id)
    new_pem, _ = await offer_new_key(rotations, num_id, rotation, old_pem)
    with pytest.raises(FailedPrecondition):
        await rotations.rollback(num_id, in_use=fingerprint(new_pem))
    rolled = await rotations.rollback(num_id, in_use=fingerprint(old_pem))
    assert rolled.state == "rolled_back"
    assert await credentials(manager, num_id) == [(fingerprint(old_pem), "1970-01-01T00:00:00Z")]
    with pytest.raises(FailedPrecondition):
        await rotations.rollback(num_id, in_use=None)


async def test_admin_updates_keep_the_rotation(
    manager: DeviceManager, rotations: Rotations
) -> None:
    num_id = await device_with_key(manager, public_pem(es256_key()))
    rotation = await rotations.start(num_id)
    await manager.update_device(DeviceRef(REGISTRY, None, num_id), Device(blocked=True), "blocked")
    current = await rotations.current(num_id)
    assert current is not None and current.id == rotation.id and current.state == "requested"


async def test_registry_with_ca_certificates_refuses_a_self_made_key(
    manager: DeviceManager, rotations: Rotations
) -> None:
    from tests.keys import make_ca

    old_pem = public_pem(es256_key())
    num_id = await device_with_key(manager, old_pem)
    ca = make_ca()
    await manager.update_registry(
        REGISTRY,
        DeviceRegistry.model_validate(
            {
                "credentials": [
                    {
                        "publicKeyCertificate": {
                            "format": "X509_CERTIFICATE_PEM",
                            "certificate": ca.pem,
                        }
                    }
                ]
            }
        ),
        "credentials",
    )
    rotation = await rotations.start(num_id)
    _, failed = await offer_new_key(rotations, num_id, rotation, old_pem)
    assert failed.state == "failed" and "X.509" in failed.reason
    assert await credentials(manager, num_id) == [(fingerprint(old_pem), "1970-01-01T00:00:00Z")]
