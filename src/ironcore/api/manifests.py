"""Manifest import, signer revocation and re-attestation (ironcore's own routes, beside
Cloud IoT Core's).

Thin adapters: the rules are in `factory.importer`, `registry.revocation` and
`registry.provenance`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ironcore.api.deps import CallerDep, Manager, allowed, ok, permitted_device, registry_name
from ironcore.factory.importer import DEFAULT_TEMPLATE, import_manifest
from ironcore.registry.revocation import Revocations
from ironcore.registry.store.revocation import RevokedSignerRecord
from ironcore.registry.wire import Message, format_timestamp

router = APIRouter()
IMPORT = "/ironcore/v1/projects/{project}/locations/{location}/registries/{registry}:importManifest"
REVOCATIONS = "/ironcore/v1/revocations"
DEVICE = (
    "/ironcore/v1/projects/{project}/locations/{location}/registries/{registry}/devices/{device}"
)


class ImportManifestRequest(Message):
    # The manifest file's text, verified over exactly these bytes.
    manifest: str
    trust_signers: list[str] = Field(default_factory=list)
    trust_roots: list[str] = Field(default_factory=list)
    device_id_template: str = DEFAULT_TEMPLATE
    dry_run: bool = False


class RevokeSignerRequest(Message):
    certificate: str
    reason: str = ""


@router.post(IMPORT, name="ImportManifest")
async def import_manifest_route(
    project: str,
    location: str,
    registry: str,
    manager: Manager,
    caller: CallerDep,
    body: ImportManifestRequest,
) -> JSONResponse:
    allowed(
        caller,
        "ironcore.manifests.import",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    report = await import_manifest(
        manager,
        registry_name(project, location, registry),
        body.manifest,
        trust_signers=body.trust_signers,
        trust_roots=body.trust_roots,
        device_id_template=body.device_id_template,
        dry_run=body.dry_run,
    )
    return ok(report.to_wire())


@router.post(REVOCATIONS, name="RevokeSigner")
async def revoke_signer(
    request: Request, caller: CallerDep, body: RevokeSignerRequest
) -> JSONResponse:
    allowed(caller, "ironcore.revocations.manage", "revocations")
    # The process's own instance, shared with the bridges: its snapshot is fresh when the
    # connected devices are checked again.
    revocations: Revocations = request.app.state.revocations
    record, created = await revocations.revoke_signer(body.certificate, body.reason)
    return ok({**_wire(record), "alreadyRevoked": not created})


@router.get(REVOCATIONS, name="ListRevocations")
async def list_revocations(request: Request, caller: CallerDep) -> JSONResponse:
    allowed(caller, "ironcore.revocations.list", "revocations")
    revocations: Revocations = request.app.state.revocations
    records = await revocations.list()
    return ok({"revokedSigners": [_wire(record) for record in records]})


@router.get(DEVICE + "/credentialProvenance", name="GetCredentialProvenance")
async def get_provenance(
    project: str,
    location: str,
    registry: str,
    device: str,
    request: Request,
    manager: Manager,
    caller: CallerDep,
) -> JSONResponse:
    record = await permitted_device(
        manager, caller, "cloudiot.devices.get", project, location, registry, device
    )
    revocations: Revocations = request.app.state.revocations
    found = await revocations.provenance(record)
    return ok({"credentials": [c.to_wire() for c in found]})


@router.post(DEVICE + ":reattest", name="ReattestDevice")
async def reattest(
    project: str,
    location: str,
    registry: str,
    device: str,
    request: Request,
    manager: Manager,
    caller: CallerDep,
) -> JSONResponse:
    record = await permitted_device(
        manager, caller, "ironcore.revocations.manage", project, location, registry, device
    )
    revocations: Revocations = request.app.state.revocations
    found = await revocations.reattest(record.device.num_id, caller.principal)
    return ok({"credentials": [c.to_wire() for c in found]})


def _wire(record: RevokedSignerRecord) -> dict[str, str]:
    return {
        "keyId": record.key_id,
        "fingerprint": record.fingerprint,
        "subject": record.subject,
        "reason": record.reason,
        "revokeTime": format_timestamp(record.revoked_at),
    }
