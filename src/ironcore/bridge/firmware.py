"""The device side of rollouts: a device downloads a firmware image with its JWT.

`GET /ironcore/v1/projects/…/devices/{device}/firmware/{sha256}` answers the image of the
device's project, with `Range: bytes=a-b` support (206 and Content-Range; 416 past the end)
from Starlette's FileResponse, so a device whose connection was cut resumes where it stopped.
The device authenticates exactly as on the HTTP bridge (`DeviceBridge.authenticate`); the
image itself is no secret, the device's secure element decides whether it boots it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from ironcore.bridge.http import DeviceBridge
from ironcore.firmware.rollout import Firmware
from ironcore.registry.names import DeviceRef, RegistryName

IMAGE = (
    "/ironcore/v1/projects/{project}/locations/{location}/registries/{registry}"
    "/devices/{device}/firmware/{sha256}"
)


def router(bridge: DeviceBridge, firmware: Firmware) -> APIRouter:
    """The download route, answering with `firmware`'s images to devices `bridge` admits."""
    routes = APIRouter()

    @routes.get(IMAGE, name="DownloadFirmware")
    async def download(
        project: str, location: str, registry: str, device: str, sha256: str, request: Request
    ) -> FileResponse:
        ref = DeviceRef.parse(RegistryName.parse(project, location, registry), device)
        await bridge.authenticate(request, ref, None)
        path = await firmware.image_file(project, sha256)
        # The name is content-addressed, so a cache may keep it for good.
        return FileResponse(
            path,
            media_type="application/octet-stream",
            headers={"Cache-Control": "private, max-age=31536000, immutable"},
        )

    return routes
