"""Routes for firmware images and rollouts (ironcore's own, beside the Cloud IoT Core surface).

Thin adapters over `ironcore.firmware.rollout.Firmware`; docs/firmware.md, Rollouts.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ironcore.api.deps import CallerDep, allowed, ok, registry_name
from ironcore.firmware.rollout import (
    DEFAULT_STAGES,
    DEFAULT_THRESHOLD,
    Firmware,
    RolloutSpec,
    image_wire,
)
from ironcore.registry.wire import Bytes, Message

router = APIRouter()
PROJECT = "/ironcore/v1/projects/{project}"
ROLLOUTS = PROJECT + "/locations/{location}/registries/{registry}/rollouts"


class UploadFirmwareRequest(Message):
    image: Bytes
    # The signed manifest as the JSON object `ironcore firmware sign` wrote, or its text.
    manifest: dict[str, Any] | str
    # PEM; when given, the manifest's signature is checked at upload too.
    public_key: str = ""


class StartRolloutRequest(Message):
    sha256: str = ""
    model: str = ""
    version: int | None = None
    # Absent: the whole registry.
    device_ids: list[str] | None = None
    stages: list[float] = Field(default_factory=lambda: list(DEFAULT_STAGES))
    failure_threshold: float = DEFAULT_THRESHOLD
    min_stage_size: int = 1


class HaltRolloutRequest(Message):
    reason: str = ""


def _firmware(request: Request) -> Firmware:
    firmware: Firmware = request.app.state.firmware
    return firmware


@router.post(PROJECT + "/firmware", name="UploadFirmware")
async def upload(
    project: str, request: Request, caller: CallerDep, body: UploadFirmwareRequest
) -> JSONResponse:
    allowed(caller, "ironcore.firmware.upload", f"projects/{project}")
    manifest = body.manifest
    # surrogatepass: a lone surrogate in the text reaches the manifest parser, which refuses
    # it as not UTF-8, instead of failing here.
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    image = await _firmware(request).upload(
        project, body.image, text.encode("utf-8", "surrogatepass"), body.public_key
    )
    return ok(image_wire(image))


@router.get(PROJECT + "/firmware", name="ListFirmware")
async def list_images(project: str, request: Request, caller: CallerDep) -> JSONResponse:
    allowed(caller, "ironcore.firmware.get", f"projects/{project}")
    images = await _firmware(request).list_images(project)
    return ok({"images": [image_wire(image) for image in images]})


@router.post(ROLLOUTS, name="StartRollout")
async def start_rollout(
    project: str,
    location: str,
    registry: str,
    request: Request,
    caller: CallerDep,
    body: StartRolloutRequest,
) -> JSONResponse:
    allowed(
        caller,
        "ironcore.firmware.rollout",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    spec = RolloutSpec(body.stages, body.failure_threshold, body.min_stage_size, body.device_ids)
    view = await _firmware(request).start(
        registry_name(project, location, registry), spec, body.sha256, body.model, body.version
    )
    return ok(view)


@router.get(ROLLOUTS, name="ListRollouts")
async def list_rollouts(
    project: str, location: str, registry: str, request: Request, caller: CallerDep
) -> JSONResponse:
    allowed(
        caller,
        "ironcore.firmware.get",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    return ok(await _firmware(request).list(registry_name(project, location, registry)))


@router.get(ROLLOUTS + "/{rollout}", name="GetRollout")
async def get_rollout(
    project: str, location: str, registry: str, rollout: str, request: Request, caller: CallerDep
) -> JSONResponse:
    allowed(
        caller,
        "ironcore.firmware.get",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    return ok(await _firmware(request).get(registry_name(project, location, registry), rollout))


@router.post(ROLLOUTS + "/{rollout}:halt", name="HaltRollout")
async def halt_rollout(
    project: str,
    location: str,
    registry: str,
    rollout: str,
    request: Request,
    caller: CallerDep,
    body: HaltRolloutRequest,
) -> JSONResponse:
    allowed(
        caller,
        "ironcore.firmware.rollout",
        f"projects/{project}/locations/{location}/registries/{registry}",
    )
    name = registry_name(project, location, registry)
    return ok(await _firmware(request).halt(name, rollout, body.reason))
