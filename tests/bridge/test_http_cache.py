"""The authenticator's device-context cache, over real HTTP: whatever the admin API changes
applies to the device's very next request, although the device was just served from the cache.

Every test first sends requests that succeed, so the device's context is cached when the change
is made."""

from __future__ import annotations

import base64
import datetime as dt

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tests.bridge.devices import (
    LOCATION,
    PROJECT,
    admin,
    create_device,
    create_registry,
    make_jwt,
    new_key,
)
from tests.conftest import Database, Server, events_in_log
from tests.keys import PrivateKey, es256_key, public_pem


def publish(
    server: Server, registry: str, device: str, key: PrivateKey, data: bytes = b"x"
) -> tuple[int, str]:
    url = (
        f"{server.url}/v1/projects/{PROJECT}/locations/{LOCATION}"
        f"/registries/{registry}/devices/{device}:publishEvent"
    )
    r = httpx.post(
        url,
        json={"binaryData": base64.b64encode(data).decode()},
        headers={"authorization": f"Bearer {make_jwt(key)}"},
    )
    return r.status_code, r.json().get("error", {}).get("message", "")


def warm(server: Server, registry: str, device: str, key: PrivateKey) -> None:
    for _ in range(3):
        assert publish(server, registry, device, key) == (200, "")


def patch_device(server: Server, registry: str, device: str, mask: str, body: object) -> None:
    with admin(server) as api:
        r = api.patch(
            f"/registries/{registry}/devices/{device}", params={"updateMask": mask}, json=body
        )
        assert r.status_code == 200, r.text


def credential(key: PrivateKey, expires: str | None = None) -> dict[str, object]:
    out: dict[str, object] = {"publicKey": {"format": "ES256_PEM", "key": public_pem(key)}}
    if expires is not None:
        out["expirationTime"] = expires
    return out


def test_blocking_removing_keys_and_disabling_http_apply_at_once(bridge: Server) -> None:
    create_registry(bridge, "reg-cache")
    key, other = new_key(), new_key()
    created = create_device(bridge, "reg-cache", "dev-cache", key)
    num_id = created["numId"]
    warm(bridge, "reg-cache", "dev-cache", key)
    warm(bridge, "reg-cache", num_id, key)

    patch_device(bridge, "reg-cache", "dev-cache", "blocked", {"blocked": True})
    assert publish(bridge, "reg-cache", "dev-cache", key) == (403, "the device is blocked")
    assert publish(bridge, "reg-cache", num_id, key) == (403, "the device is blocked")
    patch_device(bridge, "reg-cache", "dev-cache", "blocked", {"blocked": False})
    warm(bridge, "reg-cache", "dev-cache", key)

    # The key is replaced: the old one is refused, the new one accepted straight away.
    patch_device(
        bridge, "reg-cache", "dev-cache", "credentials", {"credentials": [credential(other)]}
    )
    status, message = publish(bridge, "reg-cache", "dev-cache", key)
    assert status == 401 and "signature matches none" in message
    warm(bridge, "reg-cache", "dev-cache", other)

    patch_device(
        bridge,
        "reg-cache",
        "dev-cache",
        "credentials",
        {"credentials": [credential(other, "2020-01-01T00:00:00Z")]},
    )
    assert publish(bridge, "reg-cache", "dev-cache", other) == (
        401,
        "the device has no unexpired credentials",
    )
    patch_device(
        bridge, "reg-cache", "dev-cache", "credentials", {"credentials": [credential(other)]}
    )
    warm(bridge, "reg-cache", "dev-cache", other)

    def http_state(state: str) -> None:
        with admin(bridge) as api:
            r = api.patch(
                "/registries/reg-cache",
                params={"updateMask": "httpConfig"},
                json={"httpConfig": {"httpEnabledState": state}},
            )
            assert r.status_code == 200, r.text

    http_state("HTTP_DISABLED")
    assert publish(bridge, "reg-cache", "dev-cache", other) == (
        403,
        "HTTP is disabled on the registry",
    )
    assert publish(bridge, "reg-cache", num_id, other)[0] == 403
    http_state("HTTP_ENABLED")
    warm(bridge, "reg-cache", "dev-cache", other)


def test_a_device_deleted_and_created_again_is_the_new_one(
    bridge: Server, database: Database
) -> None:
    create_registry(bridge, "reg-again")
    key, other = new_key(), new_key()
    first = create_device(bridge, "reg-again", "dev-again", key)
    warm(bridge, "reg-again", "dev-again", key)

    def delete() -> None:
        with admin(bridge) as api:
            assert api.delete("/registries/reg-again/devices/dev-again").status_code == 200

    delete()
    assert publish(bridge, "reg-again", "dev-again", key)[0] == 404
    assert publish(bridge, "reg-again", first["numId"], key)[0] == 404

    # Same id, same key: authentication alone would pass with the old context; the events must
    # carry the new device's numeric id.
    second = create_device(bridge, "reg-again", "dev-again", key)
    assert second["numId"] != first["numId"]
    assert publish(bridge, "reg-again", "dev-again", key, b"second") == (200, "")
    warm(bridge, "reg-again", "dev-again", key)

    delete()
    create_device(bridge, "reg-again", "dev-again", other)
    assert publish(bridge, "reg-again", "dev-again", key)[0] == 401
    assert publish(bridge, "reg-again", "dev-again", other, b"third") == (200, "")

    logged = {data: attrs for _, data, attrs in events_in_log(bridge, database)}
    assert logged[b"second"]["deviceNumId"] == second["numId"]
    assert logged[b"third"]["deviceNumId"] not in (first["numId"], second["numId"])


def signer_and_device_certificate(device_key: PrivateKey) -> tuple[str, str]:
    """A batch signer CA and a device certificate it issued (naming it by key id)."""
    signer_key = es256_key()
    now = dt.datetime.now(dt.UTC)
    signer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batch signer b1")])
    signer = (
        x509.CertificateBuilder()
        .subject_name(signer_name)
        .issuer_name(signer_name)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False
        )
        .sign(signer_key, hashes.SHA256())
    )
    device = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-x509")]))
        .issuer_name(signer_name)
        .public_key(device_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
        .sign(signer_key, hashes.SHA256())
    )
    return (
        signer.public_bytes(serialization.Encoding.PEM).decode(),
        device.public_bytes(serialization.Encoding.PEM).decode(),
    )


def test_revoking_the_batch_signer_refuses_its_devices(bridge: Server) -> None:
    create_registry(bridge, "reg-signed")
    key = new_key()
    signer_pem, device_pem = signer_and_device_certificate(key)
    with admin(bridge) as api:
        r = api.post(
            "/registries/reg-signed/devices",
            json={
                "id": "dev-x509",
                "credentials": [{"publicKey": {"format": "ES256_X509_PEM", "key": device_pem}}],
            },
        )
        assert r.status_code == 200, r.text
    warm(bridge, "reg-signed", "dev-x509", key)

    r = httpx.post(
        f"{bridge.url}/ironcore/v1/revocations",
        json={"certificate": signer_pem, "reason": "keyCompromise"},
        headers={"Authorization": f"Bearer {bridge.token}"},
    )
    assert r.status_code == 200, r.text
    status, message = publish(bridge, "reg-signed", "dev-x509", key)
    assert status == 401
    assert "batch signer b1 was revoked: keyCompromise" in message
