"""Routes for key rotation (ironcore's own, beside the Cloud IoT Core surface)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ironcore.api.deps import CallerDep, Manager, ok, permitted_device
from ironcore.registry.rotation import DEFAULT_GRACE_SECONDS, Rotations
from ironcore.registry.wire import Message

router = APIRouter()
DEVICE = (
    "/ironcore/v1/projects/{project}/locations/{location}/registries/{registry}/devices/{device}"
)


class StartRotationRequest(Message):
    grace_seconds: int = DEFAULT_GRACE_SECONDS


def _rotations(request: Request) -> Rotations:
    rotations: Rotations = request.app.state.rotations
    return rotations


@router.post(DEVICE + ":rotateKey", name="StartKeyRotation")
async def start_rotation(
    project: str,
    location: str,
    registry: str,
    device: str,
    request: Request,
    manager: Manager,
    caller: CallerDep,
    body: StartRotationRequest,
) -> JSONResponse:
    record = await permitted_device(
        manager, caller, "ironcore.devices.rotateCredentials", project, location, registry, device
    )
    rotation = await _rotations(request).start(record.device.num_id, body.grace_seconds)
    if manager.links is not None:
        await manager.links.rotation_changed(record.device.num_id)
    return ok(rotation.to_wire())


@router.get(DEVICE + "/keyRotation", name="GetKeyRotation")
async def get_rotation(
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
    rotation = await _rotations(request).current(record.device.num_id)
    return ok(rotation.to_wire() if rotation else {})


@router.post(DEVICE + ":rollbackKeyRotation", name="RollbackKeyRotation")
async def rollback_rotation(
    project: str,
    location: str,
    registry: str,
    device: str,
    request: Request,
    manager: Manager,
    caller: CallerDep,
) -> JSONResponse:
    record = await permitted_device(
        manager, caller, "ironcore.devices.rotateCredentials", project, location, registry, device
    )
    num_id = record.device.num_id
    in_use = await manager.links.key_in_use(num_id) if manager.links is not None else None
    rotation = await _rotations(request).rollback(num_id, in_use)
    return ok(rotation.to_wire())
