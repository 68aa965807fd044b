"""Credential provenance in the store, on both databases: what each write records, that an
operator's edit of the credential list cannot launder a rotated key, and migration 0011's
backfill of devices written before provenance was recorded."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from sqlalchemy import select, update

from ironcore.registry import provenance as prov
from ironcore.registry.names import DeviceRef
from ironcore.registry.resources import Device
from ironcore.registry.rotation import Rotations
from ironcore.registry.service import DeviceManager
from ironcore.registry.store import Store
from ironcore.registry.store.rotation import RotationStore
from ironcore.registry.store.schema import devices
from tests.bridge.test_http_cache import signer_and_device_certificate
from tests.conftest import Clock, Database
from tests.keys import es256_key, public_pem
from tests.migrations import downgrade, revision_before
from tests.registry.test_rotation import REGISTRY, device_with_key, fingerprint, offer_new_key


def plain(pem: str) -> dict[str, Any]:
    return {"publicKey": {"format": "ES256_PEM", "key": pem}}


def certified(pem: str) -> dict[str, Any]:
    return {"publicKey": {"format": "ES256_X509_PEM", "key": pem}}


def signer_id(signer_pem: str) -> str:
    certificate = x509.load_pem_x509_certificate(signer_pem.encode())
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return ski.value.digest.hex()


async def create(manager: DeviceManager, device_id: str, *credentials: dict[str, Any]) -> int:
    device = Device.model_validate({"id": device_id, "credentials": list(credentials)})
    return (await manager.create_device(REGISTRY, device)).num_id


async def recorded(manager: DeviceManager, num_id: int) -> dict[str, prov.Provenance]:
    return (await manager.device_record(DeviceRef(REGISTRY, None, num_id))).provenance


async def rotate(manager: DeviceManager, clock: Clock, num_id: int, used_pem: str) -> str:
    """A completed rotation from the credential `used_pem`; the new key's PEM."""
    rotations = Rotations(RotationStore(manager.store), clock)
    rotation = await rotations.start(num_id)
    new_pem, added = await offer_new_key(rotations, num_id, rotation, used_pem)
    assert added.state == "key_added", added.reason
    done = await rotations.connected(num_id, fingerprint(new_pem))
    assert done is not None and done.state == "completed"
    return new_pem


async def test_rotated_keys_inherit_signers_and_an_admin_edit_keeps_them(
    manager: DeviceManager, clock: Clock
) -> None:
    admin_pem = public_pem(es256_key())
    admin_id = await device_with_key(manager, admin_pem, "dev-admin")
    assert (await recorded(manager, admin_id))[fingerprint(admin_pem)] == prov.Provenance(
        prov.ADMIN
    )

    key = es256_key()
    signer_pem, device_pem = signer_and_device_certificate(key)
    num_id = await create(manager, "dev-cert", certified(device_pem))
    signer = signer_id(signer_pem)
    first = await rotate(manager, clock, num_id, public_pem(key))
    second = await rotate(manager, clock, num_id, first)
    found = await recorded(manager, num_id)
    assert found[fingerprint(public_pem(key))].signers == (signer,)
    assert found[fingerprint(second)] == prov.Provenance(
        prov.ROTATION, rotated_from=fingerprint(first), signers=(signer,)
    )

    # An operator sends the credential list back (as `gcloud ... credentials` does): the
    # rotated key stays a rotated key; one removed and added again is the operator's.
    ref = DeviceRef(REGISTRY, None, num_id)
    listed = (await manager.device_record(ref)).device.credentials
    await manager.update_device(ref, Device(credentials=listed), "credentials")
    assert (await recorded(manager, num_id))[fingerprint(second)].signers == (signer,)
    kept = Device.model_validate({"credentials": [plain(second)]})
    await manager.update_device(ref, kept, "credentials")
    assert list(await recorded(manager, num_id)) == [fingerprint(second)]
    fresh = public_pem(es256_key())
    removed = Device.model_validate({"credentials": [plain(fresh)]})
    await manager.update_device(ref, removed, "credentials")
    readded = Device.model_validate({"credentials": [plain(fresh), plain(second)]})
    await manager.update_device(ref, readded, "credentials")
    assert (await recorded(manager, num_id))[fingerprint(second)].origin == prov.ADMIN


async def test_migration_0011_backfills_devices_written_before_it(
    clock: Clock, database: Database
) -> None:
    manager = DeviceManager(await Store.open(database.url, database.schema), clock=clock)
    key = es256_key()
    signer_pem, device_pem = signer_and_device_certificate(key)
    signer = signer_id(signer_pem)
    admin_pem, extra_pem, manifest_pem, orphan_pem = (public_pem(es256_key()) for _ in range(4))
    admin_id = await device_with_key(manager, admin_pem, "dev-admin")
    num_id = await create(manager, "dev-cert", certified(device_pem), plain(extra_pem))
    rotated_pem = await rotate(manager, clock, num_id, public_pem(key))
    manifest = Device.model_validate(
        {"id": "dev-man", "credentials": [plain(manifest_pem)], "metadata": {"manifestSigner": "m"}}
    )
    manifest_id = (await manager.create_device(REGISTRY, manifest)).num_id
    # Imported with a certificate, which an operator replaced later by a plain key.
    orphan = Device.model_validate(
        {
            "id": "dev-orphan",
            "credentials": [plain(orphan_pem)],
            "metadata": {"manifestSigner": "m", "certificateSignerKeyId": signer},
        }
    )
    orphan_id = (await manager.create_device(REGISTRY, orphan)).num_id

    # Back to the revision before 0011: the bodies without provenance.
    async with manager.store.write() as conn:
        for row in (await conn.execute(select(devices.c.num_id, devices.c.body))).all():
            body = {k: v for k, v in row.body.items() if k != prov.BODY_KEY}
            await conn.execute(
                update(devices).where(devices.c.num_id == row.num_id).values(body=body)
            )
        await conn.run_sync(downgrade, revision_before("0011"))
    assert not await recorded(manager, num_id)
    await manager.store.close()
    reopened = await Store.open(database.url, database.schema)
    try:
        again = DeviceManager(reopened, clock=clock)

        async def found(device: int) -> dict[str, prov.Provenance]:
            return (await again.device_record(DeviceRef(REGISTRY, None, device))).provenance

        assert await found(admin_id) == {fingerprint(admin_pem): prov.Provenance(prov.ADMIN)}
        certified_device = await found(num_id)
        assert certified_device == {
            fingerprint(public_pem(key)): prov.Provenance(
                prov.CERTIFICATE, certified_by=signer, signers=(signer,)
            ),
            fingerprint(extra_pem): prov.Provenance(prov.UNKNOWN, signers=(signer,)),
            fingerprint(rotated_pem): prov.Provenance(
                prov.ROTATION, rotated_from=fingerprint(public_pem(key)), signers=(signer,)
            ),
        }
        assert await found(manifest_id) == {
            fingerprint(manifest_pem): prov.Provenance(prov.MANIFEST)
        }
        assert await found(orphan_id) == {
            fingerprint(orphan_pem): prov.Provenance(prov.UNKNOWN, signers=(signer,))
        }
    finally:
        await reopened.close()
