"""The admin API's manifest import and signer revocation routes."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Api
from tests.factory.owner import VECTORS, Owner

REGISTRY = "/v1/projects/p/locations/us-central1/registries"
IMPORT = "/ironcore/v1/projects/p/locations/us-central1/registries/reg:importManifest"


async def test_import_through_the_api(api: Api, tmp_path: Path) -> None:
    owner = Owner.create(tmp_path / "pki")
    reel = owner.reel(tmp_path / "reel", 2)
    created = await api.client.post(
        REGISTRY + "?deviceRegistry.id=reg",
        json={
            "id": "reg",
            "credentials": [
                {
                    "publicKeyCertificate": {
                        "certificate": owner.root_pem,
                        "format": "X509_CERTIFICATE_PEM",
                    }
                }
            ],
        },
    )
    assert created.status_code == 200, created.text
    body = {"manifest": reel.manifest.read_text(), "trustSigners": [owner.manifest_signer_pem]}
    response = await api.client.post(IMPORT, json={**body, "dryRun": True})
    assert response.status_code == 200, response.text
    assert response.json()["dryRun"] and response.json()["imported"] == 2
    response = await api.client.post(IMPORT, json=body)
    report = response.json()
    assert (report["imported"], report["unchanged"], report["rejected"]) == (2, 0, 0)
    assert report["entries"][0]["deviceId"] == f"d{reel.serials[0].hex().upper()}"
    again = (await api.client.post(IMPORT, json=body)).json()
    assert again["unchanged"] == 2

    genuine = (VECTORS / "manifest_ATECC608A-MAH4I.json").read_text()
    rejected = (await api.client.post(IMPORT, json={"manifest": genuine})).json()
    assert rejected["rejected"] == 2
    assert "registry's CA certificates" in rejected["entries"][0]["reason"]

    broken = await api.client.post(IMPORT, json={"manifest": genuine[:100]})
    assert broken.status_code == 400
    assert "truncated" in broken.json()["error"]["message"]
    missing = await api.client.post(IMPORT.replace("reg:", "nope:"), json=body)
    assert missing.status_code == 404

    viewer = await api.as_role("viewer")
    assert (await viewer.post(IMPORT, json=body)).status_code == 403


async def test_revocations(api: Api, tmp_path: Path) -> None:
    owner = Owner.create(tmp_path / "pki")
    body = {"certificate": owner.signer_pem(), "reason": "keyCompromise"}
    editor = await api.as_role("editor")
    assert (await editor.post("/ironcore/v1/revocations", json=body)).status_code == 403
    response = await api.client.post("/ironcore/v1/revocations", json=body)
    assert response.status_code == 200, response.text
    revoked = response.json()
    assert revoked["alreadyRevoked"] is False and revoked["reason"] == "keyCompromise"
    assert revoked["subject"] == "CN=Acme Signer b1,O=Acme"
    again = (await api.client.post("/ironcore/v1/revocations", json=body)).json()
    assert again["alreadyRevoked"] is True
    listed = (await editor.get("/ironcore/v1/revocations")).json()["revokedSigners"]
    assert [r["keyId"] for r in listed] == [revoked["keyId"]]
    bad = await api.client.post("/ironcore/v1/revocations", json={"certificate": "nope"})
    assert bad.status_code == 400 and "certificate" in bad.json()["error"]["message"]
